package rpc

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/yamux"
)

// serve starts Server over sn and returns a channel with its result.
func serve(sn net.Conn, cfg *Config) <-chan serverResult {
	ch := make(chan serverResult, 1)
	go func() {
		c, err := Server(context.Background(), sn, cfg)
		ch <- serverResult{c, err}
	}()
	return ch
}

type serverResult struct {
	c   *Conn
	err error
}

func TestHandshakeTimeout(t *testing.T) {
	cn, sn := netPair(t, "tcp")
	defer cn.Close()
	t0 := time.Now()
	r := within(t, 5*time.Second, serve(sn, &Config{HandshakeTimeout: 200 * time.Millisecond}), "server")
	if !errors.Is(r.err, ErrHandshake) || !strings.Contains(r.err.Error(), "no handshake within 200ms") {
		t.Fatalf("silent dialer: %v", r.err)
	}
	if d := time.Since(t0); d > 2*time.Second {
		t.Fatalf("cut off after %v", d)
	}
	// The server closed the connection.
	cn.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := cn.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("dialer's read after the cut: %v", err)
	}
}

// A peer that trickles its hello one byte at a time is cut off at the
// handshake timeout too: the bound is on the whole handshake, not per read.
func TestHandshakeTrickle(t *testing.T) {
	cn, sn := netPair(t, "tcp")
	defer cn.Close()
	res := serve(sn, &Config{HandshakeTimeout: 300 * time.Millisecond})
	h := (&hello{version: ProtocolVersion, maxMessage: 1, maxCalls: 1, id: "slow"}).marshal()
	go func() {
		for _, b := range h {
			if _, err := cn.Write([]byte{b}); err != nil {
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
	}()
	r := within(t, 5*time.Second, res, "server")
	if !errors.Is(r.err, ErrHandshake) {
		t.Fatalf("trickling dialer: %v", r.err)
	}
}

func TestGarbageBeforeHandshake(t *testing.T) {
	forEachTransport(t, func(t *testing.T, tr string) {
		if tr == "tls" {
			t.Skip("garbage before TLS is TLS's to refuse; see TestTLSRefusesPlainPeer")
		}
		cn, sn := netPair(t, tr)
		defer cn.Close()
		res := serve(sn, nil)
		go cn.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
		go io.Copy(io.Discard, cn) // a pipe blocks the refusal until it is read
		r := within(t, 5*time.Second, res, "server")
		if !errors.Is(r.err, ErrHandshake) || !errors.Is(r.err, ErrProtocolViolation) || !strings.Contains(r.err.Error(), "not a tether peer") {
			t.Fatalf("garbage: %v", r.err)
		}
	})
}

func TestWrongProtocolVersion(t *testing.T) {
	// A dialer from the future.
	cn, sn := netPair(t, "tcp")
	defer cn.Close()
	res := serve(sn, nil)
	cn.Write((&hello{version: 99, maxMessage: 1, maxCalls: 1, id: "future"}).marshal())
	refusal, err := readHello(cn)
	if err != nil || refusal.status != statusRefuse || !strings.Contains(refusal.id, "version 99") {
		t.Fatalf("refusal %+v, %v", refusal, err)
	}
	if r := within(t, 5*time.Second, res, "server"); !errors.Is(r.err, ErrIncompatible) {
		t.Fatalf("server: %v", r.err)
	}

	// An acceptor from the future.
	cn, sn = netPair(t, "tcp")
	defer sn.Close()
	go func() {
		readHello(sn)
		sn.Write((&hello{version: ProtocolVersion + 1, maxMessage: 1, maxCalls: 1, id: "future"}).marshal())
	}()
	_, err = Client(context.Background(), cn, nil)
	if !errors.Is(err, ErrIncompatible) || !errors.Is(err, ErrHandshake) {
		t.Fatalf("client: %v", err)
	}
}

// rawClient does the dialer's handshake by hand and returns the control
// stream, so a test can write anything on it.
func rawClient(t *testing.T, cfg *Config) (ctrl *yamux.Stream, server *Conn, good *Conn) {
	t.Helper()
	cn, sn := netPair(t, "tcp")
	res := serve(sn, cfg)
	cn.Write((&hello{version: ProtocolVersion, maxMessage: 1 << 20, maxCalls: 10, id: "raw"}).marshal())
	if _, err := readHello(cn); err != nil {
		t.Fatal(err)
	}
	ycfg := yamux.DefaultConfig()
	ycfg.LogOutput = io.Discard
	sess, err := yamux.Client(cn, ycfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sess.Close() })
	ctrl, err = sess.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	r := within(t, 5*time.Second, res, "server")
	if r.err != nil {
		t.Fatal(r.err)
	}
	t.Cleanup(func() { r.c.Close() })
	// A well-behaved peer of the same server config, to show it is unharmed.
	good, _ = pair(t, "tcp", nil, cfg)
	return ctrl, r.c, good
}

func TestBadFramesCloseThatConnectionOnly(t *testing.T) {
	oversize := appendHeader(nil, kindRequest, 9+255+1<<20+1, 1)
	cases := []struct {
		name      string
		bytes     []byte
		violation bool
		want      string
	}{
		{"unknown kind", []byte{42, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}, true, "unknown frame kind 42"},
		{"reserved bits", []byte{1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}, true, "reserved bits"},
		{"oversize", oversize, true, "exceeds the limit"},
		{"empty method", append(appendHeader(nil, kindRequest, 9, 1), make([]byte, 9)...), true, "method length 0"},
		{"short request", append(appendHeader(nil, kindRequest, 3, 1), 1, 2, 3), true, "shorter than"},
		{"cancel with payload", appendHeader(nil, kindCancel, 1, 1), true, "exceeds the limit of 0"},
		{"answer to no call", appendHeader(nil, kindResponse, 0, 7), true, "never made"},
		{"version 1's pong", appendHeader(nil, 6, 0, 7), true, "unknown frame kind 6"},
		{"stream-open on control", appendRequest(nil, kindStreamOpen, 1, 0, "x", nil), true, "stream-open frame on the control stream"},
		{"truncated", append(appendHeader(nil, kindResponse, 100, 1), 1, 2, 3, 4), false, "closed by the peer"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctrl, server, good := rawClient(t, &Config{Mux: echoMux(), MaxMessageSize: 1 << 20})
			ctrl.Write(tc.bytes)
			if !tc.violation {
				ctrl.Close() // the frame never completes
			}
			within(t, 5*time.Second, server.Done(), "server connection to die")
			err := server.Err()
			if tc.violation != errors.Is(err, ErrProtocolViolation) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("cause %v; want violation=%v containing %q", err, tc.violation, tc.want)
			}
			var out []byte
			if err := good.Call(context.Background(), "echo", []byte("fine"), &out); err != nil || string(out) != "fine" {
				t.Fatalf("the other peer was hurt: %q %v", out, err)
			}
		})
	}
}

func TestGarbageUnderYamux(t *testing.T) {
	cn, sn := netPair(t, "tcp")
	res := serve(sn, &Config{Mux: echoMux()})
	cn.Write((&hello{version: ProtocolVersion, maxMessage: 1 << 20, maxCalls: 10, id: "raw"}).marshal())
	readHello(cn)
	cn.Write([]byte("this is not yamux at all"))
	defer cn.Close()
	r := within(t, 5*time.Second, res, "server")
	if r.err == nil {
		within(t, 5*time.Second, r.c.Done(), "death")
		r.c.Close()
	} else if !errors.Is(r.err, ErrHandshake) {
		t.Fatalf("server: %v", r.err)
	}
}

func TestBadStreamOpen(t *testing.T) {
	good, _ := pair(t, "tcp", nil, &Config{Mux: streamMux(nil)})
	// A yamux stream that starts with a request, not a stream-open.
	c2, s2 := pair(t, "tcp", nil, &Config{Mux: streamMux(nil)})
	ys2, err := c2.sess.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	ys2.Write(appendRequest(nil, kindRequest, 1, 0, "sum", nil))
	within(t, 5*time.Second, s2.Done(), "server death")
	if err := s2.Err(); !errors.Is(err, ErrProtocolViolation) || !strings.Contains(err.Error(), "must start with a stream-open") {
		t.Fatalf("cause %v", err)
	}
	if err := good.Call(context.Background(), "nope", nil, nil); !errors.Is(err, ErrUnknownMethod) {
		t.Fatalf("other peer: %v", err)
	}
}

// A frame must arrive at minFrameRate or faster, after a grace of the
// handshake timeout: one trickled slower is a protocol violation (its yamux
// answers probes, so liveness would not catch it), and one that arrives
// slowly but at that rate is served.
func TestTrickledFrame(t *testing.T) {
	const grace = 300 * time.Millisecond
	cfg := &Config{Mux: echoMux(), HandshakeTimeout: grace}

	ctrl, server, _ := rawClient(t, cfg)
	frame := appendRequest(nil, kindRequest, 1, 0, "echo", make([]byte, 64))
	ctrl.Write(frame[:headerSize+1])
	stop := make(chan struct{})
	defer close(stop)
	go func() { // a byte every 100 ms: 10 B/s
		for _, b := range frame[headerSize+1:] {
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
			if _, err := ctrl.Write([]byte{b}); err != nil {
				return
			}
		}
	}()
	t0 := time.Now()
	within(t, 5*time.Second, server.Done(), "the trickler's connection to die")
	if err := server.Err(); !errors.Is(err, ErrProtocolViolation) || !strings.Contains(err.Error(), "trickles") {
		t.Fatalf("cause %v; want a violation saying the peer trickles", err)
	}
	if took := time.Since(t0); took < grace {
		t.Fatalf("cut off after %v, before the grace of %v", took, grace)
	}

	// 12 KiB in 1 KiB pieces every 100 ms: 10 KiB/s, over 1.1 s, where its
	// deadline is 0.3 s + 3 s. The first piece is part of the header: the
	// frame's deadline, set then, grows with the length the header tells.
	slowCtrl, slowServer, _ := rawClient(t, cfg)
	slow := appendRequest(nil, kindRequest, 1, 0, "echo", make([]byte, 12<<10))
	for first := true; len(slow) > 0; first = false {
		k := min(len(slow), 1<<10)
		if first {
			k = headerSize / 2
		}
		if _, err := slowCtrl.Write(slow[:k]); err != nil {
			t.Fatal(err)
		}
		slow = slow[k:]
		time.Sleep(100 * time.Millisecond) // the pace of the sender, not synchronisation
	}
	var h [headerSize]byte
	slowCtrl.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(slowCtrl, h[:]); err != nil || kind(h[0]) != kindResponse {
		t.Fatalf("no answer to a slow frame: % x, %v (connection: %v)", h, err, slowServer.Err())
	}
}
