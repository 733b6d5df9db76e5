package server

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/tetherrpc/tether/internal/tetheropts"
	"github.com/tetherrpc/tether/internal/ttest"
	"github.com/tetherrpc/tether/partition"
	"github.com/tetherrpc/tether/peer"
	"github.com/tetherrpc/tether/rpc"
)

// rig is a Server on host "node" of an in-memory network, with a registry.
type rig struct {
	net  *partition.Network
	addr string
	reg  *peer.Registry
	srv  *Server
	logs *observer.ObservedLogs
}

func newRig(t *testing.T, handshake time.Duration) *rig {
	t.Helper()
	core, logs := observer.New(zapcore.InfoLevel)
	r := &rig{net: partition.NewNetwork(), logs: logs}
	reg, err := peer.New(peer.Config{LocalID: "node"})
	if err != nil {
		t.Fatal(err)
	}
	r.reg = reg
	rc := &rpc.Config{ID: "node", Mux: rpc.NewMux(), HandshakeTimeout: handshake}
	tetheropts.SetPaused(&rc.Internal, true)
	r.srv = New(Config{RPC: rc, Registry: reg, Logger: zap.New(core), PenaltyBase: time.Minute, PenaltyMax: time.Minute})
	ln, err := r.net.Host("node").Listen(":7000")
	if err != nil {
		t.Fatal(err)
	}
	r.addr = ln.Addr().String()
	r.srv.Go(ln)
	t.Cleanup(func() {
		r.srv.Close()
		r.reg.Close()
		r.net.Close()
	})
	return r
}

// join dials the node from host and handshakes as peer id.
func (r *rig) join(ctx context.Context, host, id string) (*rpc.Conn, error) {
	nc, err := r.net.Host(host).Dial(ctx, r.addr)
	if err != nil {
		return nil, err
	}
	return rpc.Client(ctx, nc, &rpc.Config{ID: id})
}

// A storm of dialers that never handshake takes every slot: a good peer
// behind them is still admitted, long before the handshake timeout, as
// the stalled handshakes are cut off in turn; the node logs it.
func TestHandshakeStormAdmitsGoodPeer(t *testing.T) {
	const timeout = 30 * time.Second // stale after 2 s (8 x the first guess)
	r := newRig(t, timeout)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	const silent = maxPending + 88
	var cut sync.WaitGroup
	for i := range silent {
		nc, err := r.net.Host("silent").Dial(ctx, r.addr)
		if err != nil {
			t.Fatal(i, err)
		}
		defer nc.Close()
		cut.Add(1)
		go func() {
			defer cut.Done()
			io.Copy(io.Discard, nc) // returns when the node cuts it off
		}()
	}
	t0 := time.Now()
	c, err := r.join(ctx, "good", "good")
	if err != nil {
		t.Fatalf("the good peer behind the storm: %v", err)
	}
	defer c.Close()
	took := time.Since(t0)
	t.Logf("good peer admitted %v after %d silent dialers", took, silent)
	if took > timeout/2 {
		t.Errorf("admitted after %v: only the handshake timeout (%v) made room", took, timeout)
	}
	ttest.WaitFor(t, 10*time.Second, func() bool { _, ok := r.reg.Get("good"); return ok }, "the good peer registered")
	if n := r.logs.FilterMessage("handshake slots full: the oldest, stalled handshake cut off").Len(); n < silent-maxPending {
		t.Errorf("%d stalled handshakes cut off, want at least %d", n, silent-maxPending)
	}
	r.srv.Close() // ends the rest of the handshakes
	done := make(chan struct{})
	go func() { cut.Wait(); close(done) }()
	if _, ok := ttest.Within(done, ttest.Scaled(5*time.Second)); !ok {
		t.Fatal("a silent dialer outlived the server")
	}
}

// A host in the penalty box is closed at accept, unheard; other hosts are
// served, and the count says how many were refused.
func TestPenaltyRefusesAtAccept(t *testing.T) {
	r := newRig(t, 5*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), ttest.Scaled(5*time.Second))
	defer cancel()
	r.srv.penalties.strike(partition.Addr{Host: "bad", Port: 1}, time.Now())
	if _, err := r.join(ctx, "bad", "bad"); err == nil || !errors.Is(err, rpc.ErrHandshake) {
		t.Fatalf("a penalized host's handshake: %v; want it closed unheard", err)
	}
	if n := r.srv.Penalized(); n != 1 {
		t.Fatalf("Penalized %d, want 1", n)
	}
	c, err := r.join(ctx, "good", "good")
	if err != nil {
		t.Fatalf("another host: %v", err)
	}
	c.Close()
}

// An unnamed Unix socket's peer tells no host: it is never penalized (that
// would shut out every local client for one's fault).
func TestPenaltySparesUnnamedHosts(t *testing.T) {
	b := newPenaltyBox(time.Minute, time.Minute)
	anon := &net.UnixAddr{Name: "@", Net: "unix"}
	if d, _ := b.strike(anon, time.Now()); d != 0 || b.refused(anon, time.Now()) {
		t.Fatalf("an unnamed Unix peer penalized for %v", d)
	}
}
