package rpc

import (
	"context"
	"crypto/tls"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestTLSIDFromKey(t *testing.T) {
	a, b := testCerts(t)
	c, s := pair(t, "tls", nil, nil)
	if c.RemoteID() != IDFromCertificate(b.Leaf) || s.RemoteID() != IDFromCertificate(a.Leaf) {
		t.Fatalf("IDs %q/%q, certificates %q/%q", c.RemoteID(), s.RemoteID(), IDFromCertificate(b.Leaf), IDFromCertificate(a.Leaf))
	}
	if len(c.RemoteID()) != 32 {
		t.Fatalf("ID %q", c.RemoteID())
	}
	// Dialing a pinned ID: the right one passes, a wrong one is refused.
	pair(t, "tls", &Config{ExpectID: IDFromCertificate(b.Leaf)}, nil)
	cn, sn := netPair(t, "tcp")
	res := serve(sn, &Config{TLS: TLSConfig(b)})
	_, err := Client(context.Background(), cn, &Config{TLS: TLSConfig(a), ExpectID: "someone-else"})
	if !errors.Is(err, ErrHandshake) || !strings.Contains(err.Error(), "not \"someone-else\"") {
		t.Fatalf("pinned to the wrong ID: %v", err)
	}
	within(t, 5*time.Second, res, "server")
}

// A peer cannot claim an ID that is not its key's.
func TestTLSSpoofedID(t *testing.T) {
	a, b := testCerts(t)
	cn, sn := netPair(t, "tcp")
	res := serve(sn, &Config{TLS: TLSConfig(b)})
	ccfg, err := (&Config{TLS: TLSConfig(a)}).resolved()
	if err != nil {
		t.Fatal(err)
	}
	victim, err := NewCertificate() // a third node whose ID the client claims
	if err != nil {
		t.Fatal(err)
	}
	ccfg.ID = IDFromCertificate(victim.Leaf)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err = handshake(ctx, cn, ccfg, false)
	cn.Close()
	if err == nil || !strings.Contains(err.Error(), "refused by the peer") {
		t.Fatalf("spoofing client: %v", err)
	}
	r := within(t, 5*time.Second, res, "server")
	if !errors.Is(r.err, ErrHandshake) || !strings.Contains(r.err.Error(), "certificate is that of") {
		t.Fatalf("server: %v", r.err)
	}
	// Config refuses an ID that is not the certificate's.
	if _, err := (&Config{TLS: TLSConfig(a), ID: "me"}).resolved(); err == nil {
		t.Fatal("Config accepted an ID that is not its certificate's")
	}
}

func TestTLSRefusesPeerWithoutCertificate(t *testing.T) {
	_, b := testCerts(t)
	cn, sn := netPair(t, "tcp")
	res := serve(sn, &Config{TLS: TLSConfig(b)})
	// A client with no certificate at all: a bare tls.Client.
	tc := tls.Client(cn, &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13})
	tc.Handshake()
	tc.Write((&hello{version: ProtocolVersion, maxMessage: 1, maxCalls: 1, id: "x"}).marshal())
	tc.Close()
	r := within(t, 5*time.Second, res, "server")
	if !errors.Is(r.err, ErrHandshake) || !strings.Contains(r.err.Error(), "TLS") {
		t.Fatalf("server: %v", r.err)
	}
}

func TestTLSRefusesPlainPeer(t *testing.T) {
	_, b := testCerts(t)
	cn, sn := netPair(t, "tcp")
	res := serve(sn, &Config{TLS: TLSConfig(b)})
	_, err := Client(context.Background(), cn, nil)
	if !errors.Is(err, ErrHandshake) {
		t.Fatalf("plain client against TLS: %v", err)
	}
	if r := within(t, 5*time.Second, res, "server"); !errors.Is(r.err, ErrHandshake) {
		t.Fatalf("server: %v", r.err)
	}
}

// A node that dials itself is refused: each side sees its own ID.
func TestDialSelfRefused(t *testing.T) {
	cn, sn := netPair(t, "tcp")
	res := serve(sn, &Config{ID: "me"})
	_, err := Client(context.Background(), cn, &Config{ID: "me"})
	if !errors.Is(err, ErrSelf) || !errors.Is(err, ErrHandshake) {
		t.Fatalf("client: %v", err)
	}
	if r := within(t, 5*time.Second, res, "server"); !errors.Is(r.err, ErrSelf) {
		t.Fatalf("server: %v", r.err)
	}
}

// Typed handlers pass []byte raw, as Call does.
func TestTypedRawBytes(t *testing.T) {
	m := NewMux()
	m.Handle("raw", Typed(func(_ context.Context, b []byte) ([]byte, error) { return append(b, '!'), nil }))
	m.Handle("missing", Typed(func(context.Context, string) (int, error) { return 0, Errorf(CodeNotFound, "no share") }))
	c, _ := pair(t, "pipe", nil, &Config{Mux: m})
	var out []byte
	if err := c.Call(context.Background(), "raw", []byte("hi"), &out); err != nil || string(out) != "hi!" {
		t.Fatalf("%q %v", out, err)
	}
	if err := c.Call(context.Background(), "missing", "k", nil); !errors.Is(err, ErrNotFound) {
		t.Fatalf("%v", err)
	}
	if s := (CodeApp + 7).String(); s != "app(7)" {
		t.Fatal(s)
	}
}
