package tether_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/internal/ttest"
	"github.com/tetherrpc/tether/internal/ttest/ttnode"
	"github.com/tetherrpc/tether/liveness"
	"github.com/tetherrpc/tether/peer"
	"github.com/tetherrpc/tether/rpc"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// The helpers the tests of this package share, as the system tests have
// them (ttnode); node and nodeAt are in mem_test.go.

func dial(t testing.TB, from, to *tether.Node) *peer.Peer {
	t.Helper()
	return ttnode.Dial(t, from, to)
}

func echo(ctx context.Context, req []byte) ([]byte, error) { return ttnode.Echo(ctx, req) }

func observed() (*zap.Logger, *observer.ObservedLogs) { return ttnode.Observed() }

// Two nodes call each other over one connection.
func TestTwoNodesCallEachOther(t *testing.T) {
	a, b := node(t), node(t)
	a.Handle("whoami", rpc.Func(func(context.Context, []byte) ([]byte, error) { return []byte("a"), nil }))
	b.Handle("whoami", rpc.Func(func(context.Context, []byte) ([]byte, error) { return []byte("b"), nil }))
	type sum struct{ A, B int }
	b.Handle("add", rpc.Typed(func(_ context.Context, s sum) (int, error) { return s.A + s.B, nil }))

	p := dial(t, a, b)
	if p.ID() != b.ID() {
		t.Fatalf("dialed %s, got %s", b.ID(), p.ID())
	}
	ctx := context.Background()
	var reply []byte
	if err := p.Call(ctx, "whoami", nil, &reply); err != nil || string(reply) != "b" {
		t.Fatalf("a->b: %q %v", reply, err)
	}
	var n int
	if err := p.Call(ctx, "add", sum{2, 40}, &n); err != nil || n != 42 {
		t.Fatalf("typed: %d %v", n, err)
	}
	// b has a reference to a too, over the same connection.
	waitFor(t, func() bool { _, ok := b.Peers().Get(a.ID()); return ok }, "b to register a")
	q, _ := b.Peers().Get(a.ID())
	if err := q.Call(ctx, "whoami", nil, &reply); err != nil || string(reply) != "a" {
		t.Fatalf("b->a: %q %v", reply, err)
	}
	if len(a.Peers().List()) != 1 || len(b.Peers().List()) != 1 {
		t.Fatalf("peers: a has %d, b has %d", len(a.Peers().List()), len(b.Peers().List()))
	}
}

func TestStreamsCarryBulkData(t *testing.T) {
	a, b := node(t), node(t)
	b.HandleStream("share.upload", rpc.StreamFunc(func(ctx context.Context, s *rpc.Stream) error {
		h := sha256.New()
		if _, err := io.Copy(h, s); err != nil {
			return err
		}
		_, err := s.Write(h.Sum(nil))
		return err
	}))
	p := dial(t, a, b)
	s, err := p.Stream(context.Background(), "share.upload")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	data := make([]byte, 16<<20)
	rand.NewChaCha8([32]byte{7}).Read(data)
	if _, err := s.Write(data); err != nil {
		t.Fatal(err)
	}
	s.CloseWrite()
	got, err := io.ReadAll(s)
	want := sha256.Sum256(data)
	if err != nil || !bytes.Equal(got, want[:]) {
		t.Fatalf("digest %x, %v", got, err)
	}
}

// holdMux makes b serve "hold": it blocks until its context ends, and
// reports cancellations.
func hold(n *tether.Node) (running *atomic.Int64, cancelled chan struct{}) {
	running = new(atomic.Int64)
	cancelled = make(chan struct{}, 100_000)
	n.Handle("hold", rpc.Func(func(ctx context.Context, _ []byte) ([]byte, error) {
		running.Add(1)
		<-ctx.Done()
		select {
		case cancelled <- struct{}{}:
		default: // nobody counts past 100,000 (benchmarks run many rounds)
		}
		return nil, ctx.Err()
	}))
	return running, cancelled
}

// Evicting a peer fails every outstanding call at once, cancels nothing on
// our side that it should not, tells subscribers once, and logs one line.
func TestEvictionFailsOutstandingCallsAtOnce(t *testing.T) {
	zl, logs := observed()
	a := node(t, tether.WithLogger(zl))
	b := node(t, tether.WithRPCConfig(rpc.Config{MaxConcurrentCalls: 20_000}))
	running, cancelled := hold(b)
	p := dial(t, a, b)
	ev := ttnode.Subscribe(t, a.Peers())

	const n = 10_000
	errs := make(chan error, n)
	for range n {
		go func() { errs <- p.Call(context.Background(), "hold", nil, nil) }()
	}
	waitFor(t, func() bool { return running.Load() == n }, "calls to reach b")

	cause := errors.New("operator said so")
	t0 := time.Now()
	if !a.Peers().Evict(p.ID(), cause) {
		t.Fatal("Evict found no live reference")
	}
	var last time.Duration
	for range n {
		select {
		case err := <-errs:
			if !errors.Is(err, rpc.ErrDeadReference) || !errors.Is(err, cause) {
				t.Fatalf("call error %v", err)
			}
			last = time.Since(t0)
		case <-time.After(5 * time.Second):
			t.Fatal("a call did not fail")
		}
	}
	t.Logf("%d outstanding calls failed within %v of the eviction", n, last)
	// The floor is 50 ms (BenchmarkEvict10000 measures it); here a bound
	// generous enough for a loaded 2-core CI machine.
	if bound := ttest.Scaled(250 * time.Millisecond); last > bound {
		t.Errorf("last call failed %v after the eviction, bound %v", last, bound)
	}
	select {
	case <-p.Done():
	default:
		t.Fatal("Done not closed")
	}
	if !errors.Is(p.Err(), cause) {
		t.Fatalf("Err %v", p.Err())
	}

	// New calls fail at once, without I/O.
	t1 := time.Now()
	for range 1000 {
		if err := p.Call(context.Background(), "hold", nil, nil); !errors.Is(err, rpc.ErrDeadReference) {
			t.Fatal(err)
		}
	}
	if per := time.Since(t1) / 1000; per > ttest.Scaled(10*time.Microsecond) {
		t.Errorf("a call on an evicted reference took %v, floor 10µs", per)
	}

	d := ev.Next(t, peer.Disconnected, 5*time.Second)
	if d.ID != b.ID() || d.Calls != n || !errors.Is(d.Cause, cause) {
		t.Fatalf("disconnect event %+v", d)
	}
	// b notices the connection close and cancels its handlers.
	for range n {
		select {
		case <-cancelled:
		case <-time.After(5 * time.Second):
			t.Fatal("b's handlers were not all cancelled")
		}
	}
	time.Sleep(50 * time.Millisecond) // let any stray second event or log line arrive
	a.Logger().Sync()
	if c := ev.Count(peer.Disconnected); c != 1 {
		t.Fatalf("%d disconnect events, want 1", c)
	}
	warns := logs.FilterLevelExact(zapcore.WarnLevel).All()
	if len(warns) != 1 || warns[0].Message != "peer evicted" || warns[0].ContextMap()["calls_cancelled"] != int64(n) {
		t.Fatalf("want one Warn line for the eviction, got %+v", warns)
	}
	if logs.FilterLevelExact(zapcore.ErrorLevel).Len() != 0 {
		t.Fatalf("error lines: %+v", logs.FilterLevelExact(zapcore.ErrorLevel).All())
	}
}

// A node that closes says goodbye: its peers evict it at once (cause
// rpc.ErrPeerLeft), log it at Info, and a kept address reconnects when it
// comes back.
func TestGoodbyeAndReconnect(t *testing.T) {
	zl, logs := observed()
	a := node(t, tether.WithLogger(zl), tether.WithLiveness(liveness.Local()))
	b := node(t)
	addr := b.Addr().String()
	ev := ttnode.Subscribe(t, a.Peers())
	stop := a.Peers().Keep(addr)
	defer stop()
	first := ev.Next(t, peer.Connected, 5*time.Second)
	if first.Reconnect || first.ID != b.ID() {
		t.Fatalf("first connect %+v", first)
	}
	// (b's side of the handshake may finish a moment after a's.)
	waitFor(t, func() bool { _, ok := b.Peers().Get(a.ID()); return ok }, "b to register a")

	b.Close()
	d := ev.Next(t, peer.Disconnected, time.Second)
	if !errors.Is(d.Cause, rpc.ErrPeerLeft) {
		t.Fatalf("cause %v, want ErrPeerLeft", d.Cause)
	}
	a.Logger().Sync()
	if logs.FilterLevelExact(zapcore.WarnLevel).Len() != 0 {
		t.Fatalf("a goodbye logged at Warn: %+v", logs.FilterLevelExact(zapcore.WarnLevel).All())
	}

	// b comes back on the same address, as a new process would (new ID).
	b2 := nodeAt(t, addr)
	c := ev.Next(t, peer.Connected, 15*time.Second)
	if !c.Reconnect || c.ID != b2.ID() {
		t.Fatalf("reconnect event %+v", c)
	}
	if err := c.Peer.Call(context.Background(), "nope", nil, nil); !errors.Is(err, rpc.ErrUnknownMethod) {
		t.Fatalf("call on the new reference: %v", err)
	}
}

// waitFor is ttest.WaitFor with the timeout this package's tests use.
func waitFor(t testing.TB, cond func() bool, what string) {
	t.Helper()
	ttest.WaitFor(t, 10*time.Second, cond, what)
}

// A storm of failures makes no incident when it is a dead peer (logged at
// Warn), and exactly one when the node logs a burst of errors.
func TestIncidentStorm(t *testing.T) {
	dir := t.TempDir()
	zl, logs := observed()
	a := node(t, tether.WithLogger(zl), tether.WithIncidentDir(dir))
	b := node(t)
	running, _ := hold(b)
	p := dial(t, a, b)
	const n = 100
	errs := make(chan error, n)
	for range n {
		go func() { errs <- p.Call(context.Background(), "hold", nil, nil) }()
	}
	waitFor(t, func() bool { return running.Load() == n }, "calls to reach b")
	a.Peers().Evict(p.ID(), errors.New("gone"))
	for range n {
		<-errs
	}
	// A burst of errors from many goroutines: one incident.
	var wg sync.WaitGroup
	for g := range 100 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 10 {
				a.Logger().Error("share corrupt", zap.Int("g", g), zap.Int("i", i))
			}
		}()
	}
	wg.Wait()
	a.Close() // writes the open incident
	files, _ := filepath.Glob(filepath.Join(dir, "incident-*.json"))
	if len(files) != 1 {
		t.Fatalf("%d incident files, want 1: %v", len(files), files)
	}
	data, _ := os.ReadFile(files[0])
	if !bytes.Contains(data, []byte(`"triggers":1000`)) {
		t.Fatalf("the incident does not count 1000 triggers:\n%s", lastLine(data))
	}
	if got := logs.FilterMessage("share corrupt").Len(); got != 1000 {
		t.Fatalf("%d error lines reached the sink, want 1000", got)
	}
}

func lastLine(b []byte) []byte {
	b = bytes.TrimRight(b, "\n")
	if i := bytes.LastIndexByte(b, '\n'); i >= 0 {
		return b[i+1:]
	}
	return b
}

func zapNop() *zap.Logger { return zap.NewNop() }
