package tether_test

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/internal/ttest"
	"github.com/tetherrpc/tether/liveness"
	"github.com/tetherrpc/tether/peer"
	"github.com/tetherrpc/tether/rpc"
)

// A node serves any net.Listener and dials through any dialer: a Unix
// socket, a TLS listener, a socket handed over as a file (as systemd's
// socket activation does). A call goes each way.
func TestServeAnyListener(t *testing.T) {
	cert, err := rpc.NewCertificate()
	if err != nil {
		t.Fatal(err)
	}
	for _, tr := range []struct {
		name   string
		listen func(t *testing.T) net.Listener
		dial   func(ln net.Listener) func(context.Context, string) (net.Conn, error)
	}{
		{"unix", func(t *testing.T) net.Listener {
			if runtime.GOOS == "windows" {
				t.Skip("no Unix sockets here")
			}
			ln, err := net.Listen("unix", filepath.Join(t.TempDir(), "node.sock"))
			if err != nil {
				t.Skipf("no Unix sockets: %v", err)
			}
			return ln
		}, func(ln net.Listener) func(context.Context, string) (net.Conn, error) {
			return func(ctx context.Context, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "unix", ln.Addr().String())
			}
		}},
		{"tls-listener", func(t *testing.T) net.Listener {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			return tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{cert}})
		}, func(ln net.Listener) func(context.Context, string) (net.Conn, error) {
			d := tls.Dialer{Config: &tls.Config{InsecureSkipVerify: true}}
			return func(ctx context.Context, addr string) (net.Conn, error) { return d.DialContext(ctx, "tcp", addr) }
		}},
		{"file", func(t *testing.T) net.Listener {
			if runtime.GOOS == "windows" {
				t.Skip("no listener files here")
			}
			tl, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			f, err := tl.(*net.TCPListener).File() // what systemd would pass as fd 3
			tl.Close()
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			ln, err := net.FileListener(f)
			if err != nil {
				t.Fatal(err)
			}
			return ln
		}, func(net.Listener) func(context.Context, string) (net.Conn, error) { return nil }},
	} {
		t.Run(tr.name, func(t *testing.T) {
			ln := tr.listen(t)
			b, err := tether.New()
			if err != nil {
				ln.Close()
				t.Fatal(err)
			}
			serve(t, b, ln)
			b.Handle("echo", rpc.Func(echo))
			var opts []tether.Option
			if d := tr.dial(ln); d != nil {
				opts = append(opts, tether.WithDialer(d))
			}
			a, err := tether.New(opts...)
			if err != nil {
				t.Fatal(err)
			}
			defer a.Close()
			a.Handle("echo", rpc.Func(echo))
			ctx, cancel := context.WithTimeout(context.Background(), ttest.Scaled(5*time.Second))
			defer cancel()
			p, err := a.Dial(ctx, b.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			var got []byte
			if err := p.Call(ctx, "echo", []byte("hi"), &got); err != nil || string(got) != "hi" {
				t.Fatalf("a to b: %q, %v", got, err)
			}
			back := waitPeer(t, b, a.ID())
			if err := back.Call(ctx, "echo", []byte("ho"), &got); err != nil || string(got) != "ho" {
				t.Fatalf("b to a: %q, %v", got, err)
			}
		})
	}
}

// Serve returns nil once the node closes, and at once (closing the
// listener) on a node closed already; a listener closed by someone else
// ends it with that error.
func TestServeReturns(t *testing.T) {
	n, err := tether.New()
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	ln, err := mem.Host("serve-returns").Listen(":0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- n.Serve(ln) }()
	other, err := mem.Host("serve-returns").Listen(":0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- n.Serve(other) }()
	other.Close()
	if err, ok := ttest.Within(served, ttest.Scaled(5*time.Second)); !ok || !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Serve of a listener closed under it: %v (returned: %v); want net.ErrClosed", err, ok)
	}
	n.Close()
	if err, ok := ttest.Within(done, ttest.Scaled(5*time.Second)); !ok || err != nil {
		t.Fatalf("Serve after Close: %v (returned: %v); want nil", err, ok)
	}
	late, err := mem.Host("serve-returns").Listen(":0")
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Serve(late); err != nil {
		t.Fatalf("Serve on a closed node: %v, want nil", err)
	}
	if _, err := late.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("a closed node left its listener open: %v", err)
	}
}

// Without TCP there is no kernel evidence: liveness judges by answers
// alone. A silent partition on the in-memory network is found within the
// same bound as over TCP.
func TestSilentPartitionInMemory(t *testing.T) {
	a := node(t, tether.WithLiveness(liveness.LAN()))
	b := node(t)
	p := dial(t, a, b)
	ev := make(chan peer.Event, 4)
	cancel := a.Peers().Subscribe(func(e peer.Event) {
		if e.Kind == peer.Disconnected {
			ev <- e
		}
	})
	defer cancel()
	hostOf := func(n *tether.Node) string { h, _, _ := net.SplitHostPort(n.Addr().String()); return h }
	mem.Cut(hostOf(a), hostOf(b))
	defer mem.Heal(hostOf(a), hostOf(b))
	t0 := time.Now()
	select {
	case e := <-ev:
		took := time.Since(t0)
		if !errors.Is(e.Cause, liveness.ErrMissedHeartbeats) || e.ID != b.ID() {
			t.Fatalf("evicted %s for %v; want missed heartbeats", e.ID, e.Cause)
		}
		t.Logf("silent in-memory peer evicted after %v", took)
		// Measured: 2.26 s, every run (idle, LAN preset; over TCP with the
		// kernel's evidence p50 1.28 s).
		if bound := ttest.Scaled(4 * time.Second); took > bound {
			t.Errorf("eviction after %v, bound %v", took, bound)
		}
	case <-time.After(ttest.Scaled(10 * time.Second)):
		t.Fatal("a silent peer was never evicted")
	}
	if !errors.Is(p.Err(), rpc.ErrDeadReference) {
		t.Fatalf("the reference: %v", p.Err())
	}
}
