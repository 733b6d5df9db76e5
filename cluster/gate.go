package cluster

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/tetherrpc/tether/peer"
)

// ErrNotMember is the error of Gate.Admit for a peer that is not a member
// of the cluster (the refused peer itself sees rpc.ErrNotAdmitted).
var ErrNotMember = errors.New("cluster: not a member")

// Gate admits the members of a cluster to a node's handshakes. The node
// is started with it, before it joins:
//
//	gate := new(cluster.Gate)
//	n, _ := tether.Listen(addr, tether.WithTLS(tc), tether.WithAdmission(gate.Admit))
//	c, _ := cluster.Join(ctx, n, cluster.Config{Seeds: seeds, Secret: key, Gate: gate})
//
// Until Join it admits no one; from then on, exactly the members of the
// cluster (alive or suspect, as the gossip knows them), until Close or
// Leave. The zero Gate is ready to use.
type Gate struct {
	c atomic.Pointer[Cluster]
}

// admitWait is how long Admit waits for an unknown peer to appear among
// the members before it refuses it. A member that just joined learns of
// every other member at once (from the member it joined through) and may
// dial one before the gossip has told that one of it; the wait saves both
// a refusal and a logged failed dial. A stranger's handshake is held as
// long, as a dialer that says nothing is held until the handshake timeout.
const admitWait = time.Second

// Admit is the admission policy for tether.WithAdmission: it admits the
// cluster's members, and refuses anyone else with an error matching
// ErrNotMember.
func (g *Gate) Admit(id peer.ID, _ *x509.Certificate) error {
	c := g.c.Load()
	if c == nil {
		return fmt.Errorf("%w: this node is in no cluster", ErrNotMember)
	}
	ctx, cancel := context.WithTimeout(context.Background(), admitWait)
	defer cancel()
	for {
		known, changed := c.isMember(id)
		if known {
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return fmt.Errorf("%w: %q", ErrNotMember, id)
		}
	}
}
