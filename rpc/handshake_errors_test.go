package rpc

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

// A dialer without TLS that reaches a node requiring TLS is told so, and
// so is the node's log; the reverse says that the peer does not use TLS.
func TestHandshakeSaysWhoRequiresTLS(t *testing.T) {
	a, b := testCerts(t)

	cn, sn := netPair(t, "tcp")
	res := serve(sn, &Config{TLS: TLSConfig(b)})
	_, err := Client(context.Background(), cn, &Config{ID: "plain"})
	if !errors.Is(err, ErrHandshake) || !errors.Is(err, ErrTLSMismatch) || !strings.Contains(err.Error(), "requires TLS") {
		t.Fatalf("plain dialer to a TLS node: %v; want it to say the peer requires TLS", err)
	}
	r := within(t, 5*time.Second, res, "server")
	if !errors.Is(r.err, ErrTLSMismatch) || !strings.Contains(r.err.Error(), "without TLS") {
		t.Fatalf("TLS node, plain dialer: %v", r.err)
	}

	cn, sn = netPair(t, "tcp")
	res = serve(sn, &Config{ID: "plain"})
	_, err = Client(context.Background(), cn, &Config{TLS: TLSConfig(a)})
	if !errors.Is(err, ErrHandshake) || !errors.Is(err, ErrTLSMismatch) || !strings.Contains(err.Error(), "does not use TLS") {
		t.Fatalf("TLS dialer to a plain node: %v; want it to say the peer does not use TLS", err)
	}
	r = within(t, 5*time.Second, res, "server")
	if !errors.Is(r.err, ErrTLSMismatch) || !strings.Contains(r.err.Error(), "speaks TLS") {
		t.Fatalf("plain node, TLS dialer: %v", r.err)
	}
}

// A dialer that refuses the acceptor (it expected another ID) tells it:
// the acceptor's error says the dialer refused, and why; and the dialer's
// says what it expected.
func TestDialerRefusalReachesTheAcceptor(t *testing.T) {
	forEachTransport(t, func(t *testing.T, tr string) {
		cn, sn := netPair(t, tr)
		ccfg, scfg := &Config{ID: "dialer", ExpectID: "someone-else"}, &Config{ID: "acceptor"}
		if tr == "tls" {
			a, b := testCerts(t)
			ccfg = &Config{TLS: TLSConfig(a), ExpectID: "someone-else"}
			scfg = &Config{TLS: TLSConfig(b)}
		}
		res := serve(sn, scfg)
		_, err := Client(context.Background(), cn, ccfg)
		if !errors.Is(err, ErrHandshake) || !strings.Contains(err.Error(), `not "someone-else" as expected`) {
			t.Fatalf("dialer: %v", err)
		}
		r := within(t, 5*time.Second, res, "acceptor")
		if r.err == nil || !strings.Contains(r.err.Error(), "refused by the dialer") ||
			!strings.Contains(r.err.Error(), `not "someone-else" as expected`) || strings.Contains(r.err.Error(), "control stream") {
			t.Fatalf("acceptor: %v; want it to say the dialer refused it, and why", r.err)
		}
	})
}

// A connection whose acceptor peeked at the dialer's first bytes works as
// any other, and NetConn is still the transport itself.
func TestAcceptorTransportAfterPeek(t *testing.T) {
	c, s := pair(t, "tcp", nil, &Config{Mux: echoMux()})
	var reply []byte
	if err := c.Call(context.Background(), "echo", []byte("hi"), &reply); err != nil || string(reply) != "hi" {
		t.Fatalf("call: %q %v", reply, err)
	}
	if tcpConn(s.NetConn()) == nil || s.NetConn() != tcpConn(s.NetConn()) {
		t.Fatalf("the acceptor's NetConn is %T, want the *net.TCPConn", s.NetConn())
	}
}
