package longpath

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/internal/ttest"
	"github.com/tetherrpc/tether/internal/ttest/ttnode"
	"github.com/tetherrpc/tether/liveness"
	"github.com/tetherrpc/tether/partition"
	"github.com/tetherrpc/tether/peer"
)

// A long path must not look like a dead peer: bulk streams both ways keep
// the windows full and the queue on the path busy, small calls wait behind
// them, and through it all neither node evicts the other, and each keeps
// the reference it began with.

// The preset made for such paths.
func TestNoFalseEvictionWAN(t *testing.T) {
	soak(t, "WAN", tether.WithLiveness(liveness.WAN()))
}

// A user who did not choose: the default preset (LAN) on a 300 ms path.
func TestNoFalseEvictionDefault(t *testing.T) {
	soak(t, "default")
}

func soak(t *testing.T, what string, opts ...tether.Option) {
	r := newRig(t, longPath, opts...)
	window := soakWindow()
	start := time.Now()
	l := r.start()
	// Wait out the window, or the first eviction on either side.
	ev := make(chan peer.Event, 2)
	for _, n := range []*tether.Node{r.a, r.b} {
		cancel := n.Peers().Subscribe(func(e peer.Event) {
			if e.Kind == peer.Disconnected {
				select {
				case ev <- e:
				default:
				}
			}
		})
		defer cancel()
	}
	select {
	case <-time.After(window):
	case <-ev:
	}
	took := time.Since(start)
	l.end()
	r.report(t, what, took, l)
	var bad []string
	bad = append(bad, causes(r.evA, start)...)
	bad = append(bad, causes(r.evB, start)...)
	if len(bad) > 0 {
		t.Fatalf("%s: false evictions on a long path: %s", what, strings.Join(bad, "; "))
	}
	if p, _ := r.a.Peers().Get(r.b.ID()); p != r.pa {
		t.Fatalf("%s: a's reference to b changed: %v, was %v", what, p, r.pa)
	}
	if p, _ := r.b.Peers().Get(r.a.ID()); p != r.pb {
		t.Fatalf("%s: b's reference to a changed: %v, was %v", what, p, r.pb)
	}
	if n := l.failures.Load(); n != 0 {
		t.Fatalf("%s: %d calls or stream writes failed, first: %v", what, n, l.firstErr.Load())
	}
	if r.recvA.Load() == 0 || r.recvB.Load() == 0 {
		t.Fatalf("%s: a bulk stream carried nothing (a read %d bytes, b %d)", what, r.recvA.Load(), r.recvB.Load())
	}
}

// A real silent partition on the long path (both legs through the proxy
// dropped in the kernel, as a cut cable would) is noticed by both nodes
// within the preset's bound, Interval + StallBound (a link that needed
// retries lately has its stalls waited out), while bulk streams run.
func TestSilentPartitionWAN(t *testing.T) {
	if !partition.Isolated(t) {
		return
	}
	silentPartition(t, "WAN", liveness.WAN(), tether.WithLiveness(liveness.WAN()))
}

func TestSilentPartitionDefault(t *testing.T) {
	if !partition.Isolated(t) {
		return
	}
	silentPartition(t, "default", liveness.LAN())
}

func silentPartition(t *testing.T, what string, cfg liveness.Config, opts ...tether.Option) {
	stalls := ttest.WatchStalls(50 * time.Millisecond)
	defer stalls.Stop()
	r := newRig(t, longPath, opts...)
	l := r.start()
	defer l.end()
	warm := 5 * time.Second // windows grown, round trips measured
	if testing.Short() {
		warm = 2 * time.Second
	}
	time.Sleep(warm)
	if n := r.evA.Count(peer.Disconnected) + r.evB.Count(peer.Disconnected); n != 0 {
		t.Fatalf("%s: evicted before the partition: %s", what, strings.Join(append(causes(r.evA, time.Now()), causes(r.evB, time.Now())...), "; "))
	}
	l.cut.Store(true)
	t0 := time.Now()
	for _, port := range []int{ttest.Port(t, r.b.Addr()), portOf(t, r.proxy.Addr())} {
		heal, err := partition.DropPort(port)
		if err != nil {
			t.Fatal(err)
		}
		defer heal()
	}
	bound := cfg.Interval + cfg.StallBound
	limit := bound + ttest.Scaled(time.Second)
	for _, side := range []struct {
		name string
		ev   *ttnode.Events
	}{{"a", r.evA}, {"b", r.evB}} {
		d := side.ev.Next(t, peer.Disconnected, limit+ttest.Scaled(30*time.Second))
		took := d.Time.Sub(t0)
		var v *liveness.Verdict
		kind := "no verdict"
		if errors.As(d.Cause, &v) {
			kind = fmt.Sprintf("verdict kind %d", v.Kind)
		}
		t.Logf("%s: %s noticed the partition after %v (%s): %v", what, side.name, took.Round(time.Millisecond), kind, d.Cause)
		if !errors.Is(d.Cause, liveness.ErrMissedHeartbeats) {
			t.Errorf("%s: %s evicted its peer for %v, not missed heartbeats", what, side.name, d.Cause)
		}
		if took > limit {
			if stall := stalls.Overlap(t0, d.Time); took-stall <= limit {
				t.Logf("%s: %s over the bound by %v, this process stalled %v meanwhile: excused", what, side.name, took-limit, stall)
			} else {
				t.Errorf("%s: %s noticed the partition after %v; bound %v (%v + %v slack)", what, side.name, took, limit, bound, limit-bound)
			}
		}
	}
}

func portOf(t *testing.T, addr string) int {
	t.Helper()
	_, p, _ := strings.Cut(addr, ":")
	var n int
	if _, err := fmt.Sscan(p, &n); err != nil {
		t.Fatal(err)
	}
	return n
}
