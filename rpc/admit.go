package rpc

import (
	"crypto/x509"
	"errors"
	"fmt"
)

// ErrNotAdmitted means a side's admission policy (Config.Admit) refused the
// peer in the handshake: it is not a member this node talks to. The refused
// side learns it from the refusal on the wire; the refusing side's error
// wraps the policy's own.
var ErrNotAdmitted = errors.New("not admitted")

// notAdmitted is the reason a refusal gives: the policy's own error stays
// on the refusing side, so that a stranger learns nothing of the policy.
const notAdmitted = "not admitted: this node does not talk to the peer"

// admit asks cfg.Admit about the peer that said it is id (authenticated by
// cert with TLS; cert is nil without). Without a policy, everyone is
// admitted.
func admit(cfg *Config, id string, cert *x509.Certificate) error {
	if cfg.Admit == nil {
		return nil
	}
	if err := cfg.Admit(id, cert); err != nil {
		return fmt.Errorf("%w: peer %q: %w", ErrNotAdmitted, id, err)
	}
	return nil
}
