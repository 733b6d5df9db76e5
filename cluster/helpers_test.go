package cluster_test

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/cluster"
	"github.com/tetherrpc/tether/internal/ttest"
	"github.com/tetherrpc/tether/internal/ttest/ttgossip"
	"github.com/tetherrpc/tether/internal/ttest/ttnode"
	"github.com/tetherrpc/tether/peer"
	"github.com/tetherrpc/tether/rpc"
)

// secret is the test clusters' key.
var secret = []byte("0123456789abcdef")

// member is one node of a test cluster.
type member struct {
	n    *tether.Node
	c    *cluster.Cluster
	gate *cluster.Gate
	tls  *tls.Config
}

// start starts a node with TLS and a Gate, and joins it through seeds.
func start(t *testing.T, seeds []string, opts ...tether.Option) *member {
	t.Helper()
	return startWith(t, cluster.Config{Seeds: seeds}, opts...)
}

func startWith(t *testing.T, cfg cluster.Config, opts ...tether.Option) *member {
	t.Helper()
	cert, err := rpc.NewCertificate()
	if err != nil {
		t.Fatal(err)
	}
	return startAs(t, cert, cfg, opts...)
}

// startAs is startWith with the node's certificate.
func startAs(t *testing.T, cert tls.Certificate, cfg cluster.Config, opts ...tether.Option) *member {
	t.Helper()
	return startAsAt(t, "127.0.0.1:0", cert, cfg, opts...)
}

// startAsAt is startAs with the node listening on addr.
func startAsAt(t *testing.T, addr string, cert tls.Certificate, cfg cluster.Config, opts ...tether.Option) *member {
	t.Helper()
	m := &member{gate: new(cluster.Gate), tls: rpc.TLSConfig(cert)}
	n, err := tether.Listen(addr, append([]tether.Option{tether.WithTLS(m.tls), tether.WithAdmission(m.gate.Admit)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	m.n = n
	m.n.Handle("echo", rpc.Func(ttnode.Echo))
	cfg.BindAddr, cfg.Secret, cfg.Gate = "127.0.0.1:0", secret, m.gate
	if cfg.Memberlist == nil {
		cfg.Memberlist = ttgossip.Config()
	}
	ctx, cancel := context.WithTimeout(context.Background(), ttest.Scaled(10*time.Second))
	defer cancel()
	m.c, err = cluster.Join(ctx, m.n, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.c.Close() })
	return m
}

// startCluster starts k members, each joining through the first.
func startCluster(t *testing.T, k int, opts ...tether.Option) []*member {
	t.Helper()
	ms := []*member{start(t, nil, opts...)}
	for range k - 1 {
		ms = append(ms, start(t, []string{ms[0].c.GossipAddr()}, opts...))
	}
	return ms
}

// connected reports whether m holds a live reference to every other of ms.
func connected(m *member, ms []*member) bool {
	for _, o := range ms {
		if o == m {
			continue
		}
		if p, ok := m.n.Peers().Get(o.n.ID()); !ok || p.Err() != nil {
			return false
		}
	}
	return true
}

// allConnected waits until every member holds a live reference to every
// other, and knows each as a member.
func allConnected(t *testing.T, ms []*member, within time.Duration) time.Duration {
	t.Helper()
	t0 := time.Now()
	ttest.WaitFor(t, within, func() bool {
		for _, m := range ms {
			if !connected(m, ms) || len(m.c.Members()) != len(ms)-1 {
				return false
			}
		}
		return true
	}, fmt.Sprintf("%d members, each connected to every other", len(ms)))
	return time.Since(t0)
}

func ids(ms []*member) []peer.ID {
	out := make([]peer.ID, len(ms))
	for i, m := range ms {
		out[i] = m.n.ID()
	}
	return out
}

// members reports whether m knows exactly the others of ms as members.
func knowsAll(m *member, ms []*member) bool {
	want := map[peer.ID]bool{}
	for _, o := range ms {
		if o != m {
			want[o.n.ID()] = true
		}
	}
	got := m.c.Members()
	if len(got) != len(want) {
		return false
	}
	for _, o := range got {
		if !want[o.ID] {
			return false
		}
	}
	return true
}

// without returns ms without x.
func without(ms []*member, x *member) []*member {
	var out []*member
	for _, m := range ms {
		if m != x {
			out = append(out, m)
		}
	}
	return out
}

// dialsCount is how many members m keeps (dials).
func dialsCount(m *member) int {
	n := 0
	for _, o := range m.c.Members() {
		if o.Kept {
			n++
		}
	}
	return n
}

// waitSettled waits for cond, which reads the cluster's state as a whole.
func waitSettled(t *testing.T, cond func() bool) {
	t.Helper()
	ttest.WaitFor(t, 15*time.Second, cond, "the cluster to settle")
}

// retired reports whether ev ends one of two connections that a pair
// dialed at once, the one the registry retired (on the side that retired
// it, ErrReplaced; on the other, the goodbye that says so).
func retired(ev peer.Event) bool {
	return errors.Is(ev.Cause, peer.ErrReplaced) ||
		errors.Is(ev.Cause, rpc.ErrPeerLeft) && strings.Contains(ev.Cause.Error(), peer.ErrReplaced.Error())
}
