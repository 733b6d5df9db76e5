package tether_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zapcore"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/peer"
	"github.com/tetherrpc/tether/rpc"
)

// A call to a draining node is refused with an error that matches
// tether.ErrDraining and rpc.ErrUnavailable, and still carries
// CodeUnavailable for errors.As.
func TestDrainingRefusalMatchesErrDraining(t *testing.T) {
	a, b := node(t), node(t)
	held, release := make(chan struct{}), make(chan struct{})
	b.Handle("hold", rpc.Func(func(ctx context.Context, _ []byte) ([]byte, error) {
		close(held)
		<-release
		return nil, nil
	}))
	b.Handle("work", rpc.Func(echo))
	p := dial(t, a, b)
	first := make(chan error, 1)
	go func() { first <- p.Call(context.Background(), "hold", nil, nil) }()
	<-held
	drained := make(chan error, 1)
	go func() { drained <- b.Drain(context.Background()) }() // waits for "hold"

	var err error
	waitFor(t, func() bool {
		err = p.Call(context.Background(), "work", nil, nil)
		return err != nil
	}, "a call to be refused by the draining node")
	var re *rpc.RemoteError
	if !errors.Is(err, tether.ErrDraining) || !errors.Is(err, rpc.ErrUnavailable) ||
		!errors.As(err, &re) || re.Code != rpc.CodeUnavailable || re.Method != "work" {
		t.Fatalf("a call to a draining node: %v; want ErrDraining, rpc.ErrUnavailable, CodeUnavailable", err)
	}
	if errors.Is(err, rpc.ErrDeadReference) {
		t.Fatalf("a refusal is not a dead reference: %v", err)
	}
	close(release)
	if err := <-first; err != nil {
		t.Fatalf("the call in flight: %v", err)
	}
	select {
	case err := <-drained:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the drain did not end")
	}
}

// Keep of a closed port says so at Warn, and a caller waiting for the
// connection is told why it is not there; a malformed address is an error
// at the call.
func TestKeepClosedPortAndMalformedAddress(t *testing.T) {
	zl, logs := observed()
	a := node(t, tether.WithLogger(zl))
	ln, err := mem.Host("closed").Listen(":0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().String()
	ln.Close()

	if _, err := a.Peers().KeepAddr("no-port-here"); !errors.Is(err, peer.ErrBadAddress) {
		t.Fatalf("KeepAddr of a malformed address: %v", err)
	}
	k, err := a.Peers().KeepAddr(closed)
	if err != nil {
		t.Fatal(err)
	}
	defer k.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if p, err := k.Wait(ctx); p != nil || !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "refused") {
		t.Fatalf("Wait for a closed port: %v, %v", p, err)
	}
	waitFor(t, func() bool {
		for _, e := range logs.FilterMessage("kept address unreachable").All() {
			if e.Level == zapcore.WarnLevel && e.ContextMap()["addr"] == closed {
				return true
			}
		}
		return false
	}, "a Warn line for the closed port")
}

// A plain node dialing a TLS node is told that the peer requires TLS; a
// dial refused for the wrong ID is logged on the listening side as the
// dialer's refusal.
func TestHandshakeErrorsSayWhoRefused(t *testing.T) {
	cert, err := rpc.NewCertificate()
	if err != nil {
		t.Fatal(err)
	}
	zl, logs := observed()
	secure := node(t, tether.WithTLS(rpc.TLSConfig(cert)), tether.WithLogger(zl))
	plain := node(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err = plain.Dial(ctx, secure.Addr().String())
	if !errors.Is(err, rpc.ErrTLSMismatch) || !strings.Contains(err.Error(), "requires TLS") {
		t.Fatalf("a plain node dialing a TLS node: %v; want it to say the peer requires TLS", err)
	}

	zl2, logs2 := observed()
	b := node(t, tether.WithLogger(zl2))
	a := node(t)
	if _, err := a.Dial(ctx, "someone-else@"+b.Addr().String()); err == nil || !strings.Contains(err.Error(), "someone-else") {
		t.Fatalf("a dial for the wrong ID: %v", err)
	}
	waitFor(t, func() bool { return logs2.FilterMessage("handshake refused").Len() > 0 }, "the listener's log line")
	e := logs2.FilterMessage("handshake refused").All()[0]
	if msg, _ := e.ContextMap()["error"].(string); !strings.Contains(msg, "refused by the dialer") || strings.Contains(msg, "control stream") {
		t.Fatalf("the listener logged %q; want the dialer's refusal", msg)
	}
	waitFor(t, func() bool { return logs.FilterMessage("handshake refused").Len() > 0 }, "the TLS node's log line")
	if msg, _ := logs.FilterMessage("handshake refused").All()[0].ContextMap()["error"].(string); !strings.Contains(msg, "without TLS") {
		t.Fatalf("the TLS node logged %q", msg)
	}
}
