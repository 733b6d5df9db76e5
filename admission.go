package tether

import (
	"crypto/x509"
	"fmt"
	"sync/atomic"

	"github.com/tetherrpc/tether/peer"
)

// WithAdmission makes the node talk only to the peers admit admits: it is
// asked in every handshake, on both sides (a node refuses a dialer it does
// not admit, and refuses a node it dialed that it does not admit), with
// the peer's ID and, with WithTLS, the certificate that ID was derived
// from (nil without TLS: the ID is then only a claim). An error refuses the
// peer; it learns only that it was not admitted (its error matches
// rpc.ErrNotAdmitted), and this node logs the error at Info and counts it
// (tether_handshakes_refused_total{reason="not_admitted"}). A refused peer
// costs the node what any failed handshake costs: no session, no
// reference, no eviction. admit must be quick and safe for concurrent use.
//
// See AdmitIDs for a fixed list, and package cluster for the members of a
// cluster.
func WithAdmission(admit func(id peer.ID, cert *x509.Certificate) error) Option {
	return func(o *options) {
		a := &admission{admit: admit}
		o.admission = a
		o.rpc.Admit = a.check
	}
}

// AdmitIDs returns an admission policy (see WithAdmission) that admits the
// peers with the given IDs and no one else. With WithTLS the IDs are
// authenticated: rpc.IDFromCertificate of each member's certificate.
func AdmitIDs(ids ...peer.ID) func(id peer.ID, cert *x509.Certificate) error {
	set := make(map[peer.ID]struct{}, len(ids))
	for _, id := range ids {
		set[id] = struct{}{}
	}
	return func(id peer.ID, _ *x509.Certificate) error {
		if _, ok := set[id]; !ok {
			return fmt.Errorf("%q is not on the list of %d admitted IDs", id, len(set))
		}
		return nil
	}
}

// admission is a node's policy and its count of refusals.
type admission struct {
	admit   func(peer.ID, *x509.Certificate) error
	refused atomic.Uint64
}

func (a *admission) check(id string, cert *x509.Certificate) error {
	err := a.admit(peer.ID(id), cert)
	if err != nil {
		a.refused.Add(1)
	}
	return err
}

// refusals is how many handshakes the policy refused; 0 without one.
func (a *admission) refusals() uint64 {
	if a == nil {
		return 0
	}
	return a.refused.Load()
}
