package longpath

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/internal/ttest"
	"github.com/tetherrpc/tether/internal/ttest/ttnode"
	"github.com/tetherrpc/tether/liveness"
	"github.com/tetherrpc/tether/partition"
	"github.com/tetherrpc/tether/peer"
	"github.com/tetherrpc/tether/rpc"
)

// longPath is the path between the two nodes: 150 ms one way plus up to
// 30 ms of jitter, a round trip of 300-360 ms (a continent and an ocean),
// at 25 MiB/s (200 Mbit/s) each way, with the queue the Link gives such a
// rate by default (two round trips' worth of data, 9 MiB), as a router's
// buffer on a real path: a window larger than the path holds waits there,
// and every call and probe behind it waits too.
var longPath = partition.Link{Delay: 150 * time.Millisecond, Jitter: 30 * time.Millisecond, Rate: 25 << 20}

// soakWindow is how long the soaks run: TETHER_LONGPATH, or 30 s (5 s with
// -short).
func soakWindow() time.Duration {
	if d, err := time.ParseDuration(os.Getenv("TETHER_LONGPATH")); err == nil && d > 0 {
		return d
	}
	if testing.Short() {
		return 5 * time.Second
	}
	return 30 * time.Second
}

// rig is two nodes, a and b, with a's connection to b through a proxy
// that carries it over a link.
type rig struct {
	a, b     *tether.Node
	proxy    *partition.Proxy
	pa, pb   *peer.Peer // a's reference to b, and b's to a
	evA, evB *ttnode.Events
	recvA    atomic.Int64 // bulk bytes a's sink read
	recvB    atomic.Int64
}

// newRig starts b, a proxy to it over link each way, and a, which dials b
// through the proxy; both nodes take opts.
func newRig(t *testing.T, link partition.Link, opts ...tether.Option) *rig {
	t.Helper()
	r := &rig{}
	r.b = ttnode.Start(t, opts...)
	p, err := partition.NewProxy(r.b.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	p.SetLink(link, link)
	r.proxy = p
	r.a = ttnode.Start(t, opts...)
	serve(r.a, &r.recvA)
	serve(r.b, &r.recvB)
	r.evA = ttnode.Subscribe(t, r.a.Peers())
	r.evB = ttnode.Subscribe(t, r.b.Peers())
	ctx, cancel := context.WithTimeout(context.Background(), ttest.Scaled(10*time.Second))
	defer cancel()
	if r.pa, err = r.a.Dial(ctx, p.Addr()); err != nil {
		t.Fatal(err)
	}
	ttest.WaitFor(t, 10*time.Second, func() bool {
		r.pb, _ = r.b.Peers().Get(r.a.ID())
		return r.pb != nil
	}, "b to register a")
	return r
}

// serve registers "echo" and "sink" (read to the end, counting into n).
func serve(n *tether.Node, recv *atomic.Int64) {
	n.Handle("echo", rpc.Func(ttnode.Echo))
	n.HandleStream("sink", rpc.StreamFunc(func(ctx context.Context, s *rpc.Stream) error {
		buf := make([]byte, 64<<10)
		for {
			k, err := s.Read(buf)
			recv.Add(int64(k))
			if err != nil {
				if errors.Is(err, io.EOF) {
					return nil
				}
				return err
			}
		}
	}))
}

// load is the traffic run on a rig: one bulk stream each way and a 64 B
// call every 50 ms from each side.
type load struct {
	stop      context.CancelFunc
	wg        sync.WaitGroup
	cut       atomic.Bool // the path was cut on purpose: failures from now on are expected
	failures  atomic.Int64
	firstErr  atomic.Value
	mu        sync.Mutex
	latencies []time.Duration
}

// start runs the load on r until stop.
func (r *rig) start() *load {
	ctx, cancel := context.WithCancel(context.Background())
	l := &load{stop: cancel}
	for _, p := range []*peer.Peer{r.pa, r.pb} {
		l.wg.Go(func() { l.bulk(ctx, p) })
		l.wg.Go(func() { l.calls(ctx, p) })
	}
	return l
}

// fail counts err unless the load is stopping or the path was cut.
func (l *load) fail(ctx context.Context, what string, err error) {
	if ctx.Err() != nil || l.cut.Load() {
		return
	}
	l.failures.Add(1)
	l.firstErr.CompareAndSwap(nil, fmt.Errorf("%s: %w", what, err))
}

func (l *load) bulk(ctx context.Context, p *peer.Peer) {
	s, err := p.Stream(ctx, "sink")
	if err != nil {
		l.fail(ctx, "opening a bulk stream", err)
		return
	}
	defer s.Close()
	stop := context.AfterFunc(ctx, func() { s.Close() }) // unblocks a write the window holds
	defer stop()
	buf := make([]byte, 64<<10)
	for ctx.Err() == nil {
		if _, err := s.Write(buf); err != nil {
			l.fail(ctx, "a bulk write", err)
			return
		}
	}
}

func (l *load) calls(ctx context.Context, p *peer.Peer) {
	req := make([]byte, 64)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		start := time.Now()
		var out []byte
		err := p.Call(ctx, "echo", req, &out)
		if err != nil {
			l.fail(ctx, "a call", err)
			if l.cut.Load() {
				return
			}
			continue
		}
		l.mu.Lock()
		l.latencies = append(l.latencies, time.Since(start))
		l.mu.Unlock()
	}
}

// end stops the load and waits for it.
func (l *load) end() {
	l.stop()
	l.wg.Wait()
}

// quantiles returns the calls' latency at p50, p99 and the maximum, and
// their count.
func (l *load) quantiles() (p50, p99, most time.Duration, n int) {
	l.mu.Lock()
	lat := slices.Clone(l.latencies)
	l.mu.Unlock()
	if len(lat) == 0 {
		return 0, 0, 0, 0
	}
	slices.Sort(lat)
	return lat[len(lat)/2], lat[len(lat)*99/100], lat[len(lat)-1], len(lat)
}

// report logs what the rig carried over window.
func (r *rig) report(t *testing.T, what string, window time.Duration, l *load) {
	t.Helper()
	p50, p99, most, n := l.quantiles()
	sa, sb := r.pa.Conn().Stats(), r.pb.Conn().Stats()
	t.Logf("%s: %v: a->b %.1f MiB/s, b->a %.1f MiB/s; %d calls, p50 %v p99 %v max %v, %d failed",
		what, window.Round(time.Second), mibps(r.recvB.Load(), window), mibps(r.recvA.Load(), window),
		n, p50.Round(time.Millisecond), p99.Round(time.Millisecond), most.Round(time.Millisecond), l.failures.Load())
	t.Logf("%s: a: RTT %v, window %d KiB, %d doublings; b: RTT %v, window %d KiB, %d doublings",
		what, sa.RTT.Round(time.Millisecond), sa.RecvWindow>>10, sa.WindowGrowths,
		sb.RTT.Round(time.Millisecond), sb.RecvWindow>>10, sb.WindowGrowths)
	t.Logf("%s: events: a %s; b %s", what, summary(r.evA), summary(r.evB))
	for _, n := range []*tether.Node{r.a, r.b} {
		st := n.Peers().Monitor().Stats()
		t.Logf("%s: %v monitor: %+v", what, n.ID(), st)
	}
}

func mibps(n int64, d time.Duration) float64 { return float64(n) / (1 << 20) / d.Seconds() }

// summary counts a registry's events by kind.
func summary(e *ttnode.Events) string {
	return fmt.Sprintf("%d suspected, %d recovered, %d disconnected",
		e.Count(peer.Suspected), e.Count(peer.Recovered), e.Count(peer.Disconnected))
}

// causes lists the Disconnected events' causes, with when they came.
func causes(e *ttnode.Events, since time.Time) []string {
	var out []string
	for _, ev := range e.All() {
		if ev.Kind == peer.Disconnected {
			var v *liveness.Verdict
			kind := ""
			if errors.As(ev.Cause, &v) {
				kind = fmt.Sprintf(" (verdict kind %d, silence %v)", v.Kind, v.Silence)
			}
			out = append(out, fmt.Sprintf("after %v: %v%s", ev.Time.Sub(since).Round(time.Millisecond), ev.Cause, kind))
		}
	}
	return out
}
