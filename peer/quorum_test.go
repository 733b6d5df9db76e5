package peer

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tetherrpc/tether/internal/ttest"
	"github.com/tetherrpc/tether/liveness"
	"github.com/tetherrpc/tether/rpc"
)

// grid makes n peers whose "get" answers after delay(i), or fails when
// fail(i).
var servers []*rpc.Conn

func grid(t *testing.T, r *Registry, n int, delay func(i int) time.Duration, fail func(i int) bool, cancelled *atomic.Int64) []*Peer {
	var refs []*Peer
	for i := range n {
		mux := rpc.NewMux()
		mux.Handle("get", rpc.Func(func(ctx context.Context, _ []byte) ([]byte, error) {
			select {
			case <-time.After(delay(i)):
			case <-ctx.Done():
				if cancelled != nil {
					cancelled.Add(1)
				}
				return nil, ctx.Err()
			}
			if fail(i) {
				return nil, errors.New("no share")
			}
			return []byte{byte(i)}, nil
		}))
		ours, theirs := conns(t, fmt.Sprintf("s%d", i), mux)
		servers = append(servers, theirs)
		p, err := r.add(ours, "x", true)
		if err != nil {
			t.Fatal(err)
		}
		refs = append(refs, p)
	}
	return refs
}

func get(ctx context.Context, p *Peer) (byte, error) {
	var b []byte
	if err := p.Call(ctx, "get", nil, &b); err != nil {
		return 0, err
	}
	return b[0], nil
}

func TestFirstKFast(t *testing.T) {
	r := registry(t, Config{})
	refs := grid(t, r, 5, func(int) time.Duration { return 0 }, func(int) bool { return false }, nil)
	res, err := FirstK(context.Background(), refs, 3, get)
	if err != nil || len(res) != 3 {
		t.Fatalf("%v %v", res, err)
	}
	seen := map[byte]bool{}
	for _, x := range res {
		if seen[x.Value] {
			t.Fatal("a peer answered twice")
		}
		seen[x.Value] = true
	}
}

// A slow peer among the first k is hedged at the learnt delay: the read
// finishes long before the slow peer would, the slow call is cancelled on
// the far side, and the slow peer is marked overdue for the next reads.
func TestFirstKHedgesSlowPeer(t *testing.T) {
	r := registry(t, Config{Liveness: liveness.LAN().WithInterval(time.Second)}) // few probes: they would clear "overdue"
	var cancelled atomic.Int64
	refs := grid(t, r, 5, func(i int) time.Duration {
		if i == 0 {
			return 5 * time.Second
		}
		return time.Millisecond
	}, func(int) bool { return false }, &cancelled)
	for range 20 { // teach the hedge how fast the others are
		FirstK(context.Background(), refs[1:], 3, get)
	}
	delay := r.Hedge().Delay()
	t0 := time.Now()
	res, err := FirstK(context.Background(), refs, 3, get)
	took := time.Since(t0)
	if err != nil || len(res) != 3 {
		t.Fatalf("%v %v", res, err)
	}
	for _, x := range res {
		if x.Value == 0 {
			t.Fatal("the slow peer answered")
		}
	}
	if took > delay+500*time.Millisecond {
		t.Fatalf("read took %v with a hedge delay of %v", took, delay)
	}
	// Until it shows life, the next reads avoid the slow peer from the start.
	if !refs[0].Overdue() {
		t.Fatal("the slow peer is not marked overdue")
	}
	healthy := 0
	for _, p := range refs {
		if !p.Overdue() && !p.Suspect() {
			healthy++
		}
	}
	if c := candidates(refs); slices.Index(c, refs[0]) < healthy {
		t.Fatalf("the overdue peer is tried before a healthy one: %v", c)
	}
	// The slow call is cancelled on the far side, long before its 5 s.
	slow := servers[len(servers)-5]
	waitFor(t, func() bool { return cancelled.Load() >= 1 && slow.Stats().Serving == 0 }, "the slow call to be cancelled")
}

func TestFirstKReplacesFailures(t *testing.T) {
	r := registry(t, Config{})
	refs := grid(t, r, 5, func(int) time.Duration { return 0 }, func(i int) bool { return i < 2 }, nil)
	res, err := FirstK(context.Background(), refs, 3, get)
	if err != nil || len(res) != 3 {
		t.Fatalf("%v %v", res, err)
	}
	// Three failing of five: k=3 cannot be had.
	refs2 := grid(t, r, 5, func(int) time.Duration { return 0 }, func(i int) bool { return i < 3 }, nil)
	res, err = FirstK(context.Background(), refs2, 3, get)
	var qe *QuorumError
	if !errors.As(err, &qe) || qe.OK != len(res) || len(qe.Errors) != 3 {
		t.Fatalf("%v %+v", res, err)
	}
	var re *rpc.RemoteError
	if !errors.As(err, &re) {
		t.Fatalf("the calls' errors are not reachable: %v", err)
	}
}

func TestFirstKSkipsDeadAndHonoursContext(t *testing.T) {
	r := registry(t, Config{})
	refs := grid(t, r, 3, func(int) time.Duration { return time.Hour }, func(int) bool { return false }, nil)
	refs[0].Evict(nil)
	if _, err := FirstK(context.Background(), refs, 3, get); err == nil {
		t.Fatal("a quorum of 3 from 2 live peers")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := FirstK(ctx, refs[1:], 1, get); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("%v", err)
	}
}

func waitFor(t *testing.T, cond func() bool, what string) {
	t.Helper()
	ttest.WaitFor(t, 5*time.Second, cond, what)
}
