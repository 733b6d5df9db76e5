package hostile

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/internal/ttest/ttnode"
	"github.com/tetherrpc/tether/peer"
	"github.com/tetherrpc/tether/rpc"
)

// ---- the victim and its good peer ----

type rig struct {
	v, g    *tether.Node
	gp      *peer.Peer // G's reference to V
	logs    *observer.ObservedLogs
	vev     *ttnode.Events // V's registry events
	holding atomic.Int64

	hmu        sync.Mutex
	perConn    map[*rpc.Conn]int64 // hold handlers running, by connection
	maxPerConn int64
}

// held counts a hold handler in for its connection; the func counts it out.
func (r *rig) held(ctx context.Context) func() {
	r.holding.Add(1)
	c := rpc.FromContext(ctx)
	r.hmu.Lock()
	r.perConn[c]++
	r.maxPerConn = max(r.maxPerConn, r.perConn[c])
	r.hmu.Unlock()
	return func() {
		r.holding.Add(-1)
		r.hmu.Lock()
		if r.perConn[c]--; r.perConn[c] == 0 {
			delete(r.perConn, c)
		}
		r.hmu.Unlock()
	}
}

func (r *rig) maxHeld() int64 {
	r.hmu.Lock()
	defer r.hmu.Unlock()
	return r.maxPerConn
}

// newRig starts V (logging to an observer; serving echo, hold, big and
// the stream hold) with the given rpc limits, and G connected to it.
func newRig(t *testing.T, rc rpc.Config, opts ...tether.Option) *rig {
	t.Helper()
	zl, logs := ttnode.Observed()
	r := &rig{logs: logs, perConn: map[*rpc.Conn]int64{}}
	r.v = ttnode.Start(t, append([]tether.Option{tether.WithLogger(zl), tether.WithRPCConfig(rc)}, opts...)...)
	r.v.Handle("echo", rpc.Func(ttnode.Echo))
	r.v.Handle("hold", rpc.Func(func(ctx context.Context, _ []byte) ([]byte, error) {
		defer r.held(ctx)()
		<-ctx.Done()
		return nil, ctx.Err()
	}))
	r.v.Handle("big", rpc.Func(func(ctx context.Context, _ []byte) ([]byte, error) {
		return make([]byte, 1<<20), nil // a fresh MiB, as a share read from disk would be
	}))
	r.v.HandleStream("hold", rpc.StreamFunc(func(ctx context.Context, s *rpc.Stream) error {
		defer r.held(ctx)()
		<-ctx.Done()
		return ctx.Err()
	}))
	r.vev = ttnode.Subscribe(t, r.v.Peers())
	r.g = ttnode.Start(t)
	r.gp = ttnode.Dial(t, r.g, r.v)
	r.vev.Next(t, peer.Connected, 5*time.Second)
	return r
}

// gWorks fails the test unless G's calls to V still work.
func (r *rig) gWorks(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var out []byte
	if err := r.gp.Call(ctx, "echo", []byte("fine"), &out); err != nil || string(out) != "fine" {
		t.Fatalf("the well-behaved peer was hurt: %q %v", out, err)
	}
	if p, ok := r.v.Peers().Get(r.g.ID()); !ok || p.Err() != nil {
		t.Fatalf("V lost its reference to the well-behaved peer")
	}
}

// samples is how many calls a latency measurement makes.
const samples = 8000

// latencies makes n sequential 64-byte echo calls from G to V.
func (r *rig) latencies(t *testing.T, n int) []time.Duration {
	t.Helper()
	payload := make([]byte, 64)
	out := make([]time.Duration, 0, n)
	for range n {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		t0 := time.Now()
		err := r.gp.Call(ctx, "echo", payload, nil)
		out = append(out, time.Since(t0))
		cancel()
		if err != nil {
			t.Fatalf("a call from the well-behaved peer failed under hostile load: %v", err)
		}
	}
	slices.Sort(out)
	return out
}

func quantile(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	return ds[min(len(ds)-1, int(float64(len(ds))*q))]
}

// underLoad measures G's call latency to V before and during attack
// (which runs until stop is closed), and returns how many times the p99
// under the hostile load is the p99 before it (the floor: at most 2). For
// diagnosis it also measures a bystander pair, two nodes in the same
// process that have nothing to do with V: if their latency rises as much,
// the cost is the process's (scheduler, garbage collector), not V's
// per-peer isolation.
func (r *rig) underLoad(t *testing.T, what string, attack func(stop <-chan struct{}, ready func())) (rise float64) {
	t.Helper()
	b1, b2 := ttnode.Start(t), ttnode.Start(t)
	b2.Handle("echo", rpc.Func(ttnode.Echo))
	by := &rig{gp: ttnode.Dial(t, b1, b2)}
	r.latencies(t, 300) // warm up
	by.latencies(t, 300)
	base := r.latencies(t, samples)
	byBase := by.latencies(t, samples/3)
	stop := make(chan struct{})
	done := make(chan struct{})
	inStride := make(chan struct{})
	var once sync.Once
	go func() { defer close(done); attack(stop, func() { once.Do(func() { close(inStride) }) }) }()
	select {
	case <-inStride:
	case <-done:
		return 0 // the attack ended before it reached its stride: nothing to measure
	}
	time.Sleep(100 * time.Millisecond) // let the attack reach its stride
	load := r.latencies(t, samples)
	byLoad := by.latencies(t, samples/3)
	var gc runtime.MemStats
	runtime.ReadMemStats(&gc)
	close(stop)
	<-done
	t.Logf("%s: G->V call latency p50 %v -> %v, p99 %v -> %v, max %v -> %v (%d calls each); bystander pair p99 %v -> %v; %d GC cycles so far",
		what, quantile(base, .5), quantile(load, .5), quantile(base, .99), quantile(load, .99),
		base[len(base)-1], load[len(load)-1], samples, quantile(byBase, .99), quantile(byLoad, .99), gc.NumGC)
	return float64(quantile(load, .99)) / float64(quantile(base, .99))
}

// floor is the promised floor: under a hostile peer, the p99 latency of
// calls between two other peers rises at most this many times.
const floor = 2

// floorHolds checks the floor over up to three attempts, each on fresh
// nodes, until one holds it: the floor is a p99 over a fraction of a
// second, on a machine others share, whose noise alone can double it once.
// What each attempt checks besides holds in every one.
func floorHolds(t *testing.T, what string, attempt func() (rise float64)) {
	t.Helper()
	var rises []float64
	for range 3 {
		rise := attempt()
		rises = append(rises, rise)
		if rise <= floor || t.Failed() {
			return
		}
		t.Logf("%s: p99 latency between two other peers rose %.1fx, floor %dx: again, on fresh nodes", what, rise, floor)
	}
	t.Errorf("%s: p99 latency between two other peers rose %.1fx at best (attempts: %.1f), floor %dx", what, slices.Min(rises), rises, floor)
}

// countLogs counts V's log entries at level whose message is msg and whose
// error field contains substr.
func countLogs(logs *observer.ObservedLogs, level zapcore.Level, msg, substr string) int {
	n := 0
	for _, e := range logs.FilterLevelExact(level).FilterMessage(msg).All() {
		if substr == "" || strings.Contains(fmt.Sprint(e.ContextMap()), substr) {
			n++
		}
	}
	return n
}

// readEOF waits for the victim to close nc, and returns how long it took.
func readEOF(t *testing.T, nc net.Conn, within time.Duration) time.Duration {
	t.Helper()
	t0 := time.Now()
	nc.SetReadDeadline(t0.Add(within))
	_, err := io.Copy(io.Discard, nc)
	took := time.Since(t0)
	if err != nil && !errors.Is(err, net.ErrClosed) && !isReset(err) {
		t.Fatalf("the victim did not close the connection within %v: %v", within, err)
	}
	return took
}

func isReset(err error) bool {
	return err != nil && (strings.Contains(err.Error(), "connection reset") || strings.Contains(err.Error(), "broken pipe"))
}
