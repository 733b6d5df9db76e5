package rpc

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

// configs returns a dialer's and an acceptor's config over tr, with
// certificates for "tls", and the IDs they will present.
func admitConfigs(t *testing.T, tr string) (ccfg, scfg *Config, cid, sid string) {
	if tr != "tls" {
		return &Config{ID: "dialer"}, &Config{ID: "acceptor"}, "dialer", "acceptor"
	}
	a, b := testCerts(t)
	ccfg, scfg = &Config{TLS: TLSConfig(a)}, &Config{TLS: TLSConfig(b)}
	ida, _ := TLSID(ccfg.TLS)
	idb, _ := TLSID(scfg.TLS)
	return ccfg, scfg, ida, idb
}

// An acceptor that does not admit the dialer refuses it in the handshake:
// the dialer's error matches ErrNotAdmitted and ErrHandshake and does not
// tell the policy's reason; the acceptor's wraps it. The policy sees the
// dialer's ID and, with TLS, the certificate it was derived from.
func TestAdmitRefusesTheDialer(t *testing.T) {
	forEachTransport(t, func(t *testing.T, tr string) {
		ccfg, scfg, cid, _ := admitConfigs(t, tr)
		var sawID string
		var sawCert *x509.Certificate
		policy := errors.New("secret policy: not on the list")
		scfg.Admit = func(id string, cert *x509.Certificate) error {
			sawID, sawCert = id, cert
			return policy
		}
		cn, sn := netPair(t, tr)
		res := serve(sn, scfg)
		c, err := Client(context.Background(), cn, ccfg)
		if c != nil {
			c.Close()
		}
		if !errors.Is(err, ErrNotAdmitted) || !errors.Is(err, ErrHandshake) || !strings.Contains(err.Error(), "refused by the peer") {
			t.Fatalf("refused dialer: %v; want ErrNotAdmitted from the peer", err)
		}
		if strings.Contains(err.Error(), "secret policy") {
			t.Fatalf("the refusal tells the stranger the policy: %v", err)
		}
		r := within(t, 5*time.Second, res, "acceptor")
		if !errors.Is(r.err, ErrNotAdmitted) || !errors.Is(r.err, policy) || r.c != nil {
			t.Fatalf("acceptor: %v", r.err)
		}
		if sawID != cid {
			t.Fatalf("policy saw ID %q, want %q", sawID, cid)
		}
		if (tr == "tls") != (sawCert != nil) {
			t.Fatalf("over %s the policy saw certificate %v", tr, sawCert)
		}
		if tr == "tls" && IDFromCertificate(sawCert) != cid {
			t.Fatalf("the certificate is not the dialer's")
		}
	})
}

// A dialer refuses an acceptor it does not admit: it learns ErrNotAdmitted
// (its own policy) and the acceptor learns that the dialer refused it.
func TestAdmitRefusesTheAcceptor(t *testing.T) {
	forEachTransport(t, func(t *testing.T, tr string) {
		ccfg, scfg, _, sid := admitConfigs(t, tr)
		var asked []string
		ccfg.Admit = func(id string, _ *x509.Certificate) error {
			asked = append(asked, id)
			return fmt.Errorf("%q is no member", id)
		}
		cn, sn := netPair(t, tr)
		res := serve(sn, scfg)
		c, err := Client(context.Background(), cn, ccfg)
		if c != nil {
			c.Close()
		}
		if !errors.Is(err, ErrNotAdmitted) || !strings.Contains(err.Error(), "is no member") {
			t.Fatalf("dialer: %v", err)
		}
		r := within(t, 5*time.Second, res, "acceptor")
		if !errors.Is(r.err, ErrNotAdmitted) || !strings.Contains(r.err.Error(), "refused by the dialer") {
			t.Fatalf("acceptor: %v; want ErrNotAdmitted, refused by the dialer", r.err)
		}
		if len(asked) != 1 || asked[0] != sid {
			t.Fatalf("the dialer's policy was asked about %q, want [%q]", asked, sid)
		}
	})
}

// Admitted peers talk as before, with a policy on both sides.
func TestAdmitLetsMembersIn(t *testing.T) {
	forEachTransport(t, func(t *testing.T, tr string) {
		ccfg, scfg, cid, sid := admitConfigs(t, tr)
		only := func(want string) func(string, *x509.Certificate) error {
			return func(id string, _ *x509.Certificate) error {
				if id != want {
					return errors.New("stranger")
				}
				return nil
			}
		}
		ccfg.Admit, scfg.Admit, scfg.Mux = only(sid), only(cid), echoMux()
		c, _ := pair(t, tr, ccfg, scfg)
		var out []byte
		if err := c.Call(context.Background(), "echo", []byte("hi"), &out); err != nil || string(out) != "hi" {
			t.Fatalf("call between members: %q, %v", out, err)
		}
	})
}
