package peer

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/cenkalti/backoff/v4"

	"github.com/tetherrpc/tether/internal/tetheropts"
	"github.com/tetherrpc/tether/internal/ttest"
	"github.com/tetherrpc/tether/liveness"
	"github.com/tetherrpc/tether/partition"
	"github.com/tetherrpc/tether/rpc"
)

// The chaos soak's in-memory sibling, which runs anywhere (no root, no
// network namespace): six registries on a partition.Network, each keeping
// the ones after it connected (Keep), while links are cut both ways, cut
// one way, delayed and healed at random, and every node calls random peers
// with deadlines. There is no kernel evidence in memory, so a cut link is
// convicted as Unanswered, after liveness.Local's DeadAfter. Checked as it
// happens:
//
//   - no call outlives its deadline by more than 100 ms;
//   - a call on a reference already dead fails with rpc.ErrDeadReference
//     at once; a call that fails for any other reason than its deadline
//     fails with rpc.ErrDeadReference;
//   - no eviction without a fault: each is of a link cut (or delayed) at
//     the time, or within a grace period after;
//   - every cut that lasts 1.5 s is noticed on each side it silences
//     within 1.5 s;
//   - after the last heal, every kept pair is connected again within the
//     backoff bound, on both sides; nothing leaks (goleak, TestMain).
//
// TETHER_CHAOS sets its length (default 5 s).
func TestChaosInMemory(t *testing.T) {
	dur := 5 * time.Second
	if d, err := time.ParseDuration(os.Getenv("TETHER_CHAOS")); err == nil && d > 0 {
		dur = d
	}
	const (
		nodes   = 6
		overrun = 100 * time.Millisecond
		grace   = time.Second
		detect  = 1500 * time.Millisecond
		timeout = 200 * time.Millisecond
	)
	nw := partition.NewNetwork()
	defer nw.Close()
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 11))
	var mu sync.Mutex // guards what follows, and rng
	var violations []string
	violate := func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		if len(violations) < 20 {
			violations = append(violations, fmt.Sprintf(format, args...))
		}
	}
	// A timing bound broken while this process was held off the CPU (a
	// busy machine) is the machine's doing: such bounds are judged at the
	// end, against the stalls seen.
	// (Go's timers fire within a millisecond or two on a machine with CPU
	// to spare: 25 ms late is a stall.)
	stalls := ttest.WatchStalls(25 * time.Millisecond)
	defer stalls.Stop()
	type late struct {
		from, to time.Time
		excess   time.Duration // by how much the bound was broken
		msg      string
	}
	var lates []late
	lateBy := func(from, to time.Time, excess time.Duration, format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		lates = append(lates, late{from, to, excess, fmt.Sprintf(format, args...)})
	}
	// faults[pair] lists the windows in which the pair's link was faulted.
	type window struct {
		kind       string
		from       string // one way: the side whose sends are dropped
		start, end time.Time
	}
	faults := map[[2]string][]*window{}
	key := func(a, b string) [2]string {
		if a > b {
			a, b = b, a
		}
		return [2]string{a, b}
	}
	// noticed[pair side] is when a side evicted its reference to the other.
	type side struct{ at, of string }
	noticed := map[side][]time.Time{}
	var calls, deadCalls, evictions, deadline int

	type node struct {
		name string
		reg  *Registry
		ln   net.Listener
	}
	ns := make([]*node, nodes)
	mux := rpc.NewMux()
	mux.Handle("echo", rpc.Func(func(ctx context.Context, b []byte) ([]byte, error) { return b, nil }))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	for i := range ns {
		name := fmt.Sprintf("n%d", i)
		host := nw.Host(name)
		ln, err := host.Listen(":7000")
		if err != nil {
			t.Fatal(err)
		}
		rcfg := &rpc.Config{ID: name, Mux: mux}
		tetheropts.SetPaused(&rcfg.Internal, true)
		reg, err := New(Config{
			LocalID:  ID(name),
			Liveness: liveness.Local(),
			Dial: func(ctx context.Context, addr string) (*rpc.Conn, error) {
				nc, err := host.Dial(ctx, addr)
				if err != nil {
					return nil, err
				}
				c, err := rpc.Client(ctx, nc, rcfg)
				if err != nil {
					nc.Close()
				}
				return c, err
			},
			NewBackOff: func() backoff.BackOff {
				b := backoff.NewExponentialBackOff()
				b.InitialInterval, b.MaxInterval, b.MaxElapsedTime = 10*time.Millisecond, 200*time.Millisecond, 0
				b.Reset()
				return b
			},
		})
		if err != nil {
			t.Fatal(err)
		}
		n := &node{name: name, reg: reg, ln: ln}
		ns[i] = n
		reg.Subscribe(func(ev Event) {
			if ev.Kind != Disconnected || ctx.Err() != nil {
				return
			}
			var v *liveness.Verdict
			if !errors.As(ev.Cause, &v) {
				return // the other side's eviction, told by its reset or goodbye
			}
			now := time.Now()
			mu.Lock()
			evictions++
			noticed[side{name, string(ev.ID)}] = append(noticed[side{name, string(ev.ID)}], now)
			explained := false
			for _, w := range faults[key(name, string(ev.ID))] {
				if !now.Before(w.start) && (w.end.IsZero() || now.Before(w.end.Add(grace))) {
					explained = true
				}
			}
			mu.Unlock()
			if !explained {
				violate("false eviction: %s evicted %s with no fault on their link: %v", name, ev.ID, ev.Cause)
			}
		})
		wg.Add(1)
		go func() { // accept loop
			defer wg.Done()
			for {
				nc, err := ln.Accept()
				if err != nil {
					return
				}
				c, err := rpc.Server(ctx, nc, rcfg)
				if err != nil {
					nc.Close()
					continue
				}
				if _, err := reg.add(c, nc.RemoteAddr().String(), false); err != nil {
					c.Close()
				}
			}
		}()
	}
	for i, n := range ns {
		for _, m := range ns[i+1:] {
			n.reg.Keep(m.name + ":7000")
		}
	}
	connected := func(a, b *node) bool {
		pa, okA := a.reg.Get(ID(b.name))
		pb, okB := b.reg.Get(ID(a.name))
		return okA && okB && pa.Err() == nil && pb.Err() == nil
	}
	allConnected := func() bool {
		for i, a := range ns {
			for _, b := range ns[i+1:] {
				if !connected(a, b) {
					return false
				}
			}
		}
		return true
	}
	waitUntil := func(d time.Duration, cond func() bool) bool {
		for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(5 * time.Millisecond) {
			if cond() {
				return true
			}
		}
		return cond()
	}
	if !waitUntil(5*time.Second, allConnected) {
		t.Fatal("the grid did not connect")
	}

	// Callers: each node calls random peers, one call at a time.
	runCtx, stopRun := context.WithTimeout(ctx, dur)
	defer stopRun()
	for _, n := range ns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(len(n.name)), uint64(time.Now().UnixNano())))
			for runCtx.Err() == nil {
				m := ns[r.IntN(nodes)]
				if m == n {
					continue
				}
				p, ok := n.reg.Get(ID(m.name))
				if !ok {
					time.Sleep(time.Millisecond)
					continue
				}
				deadBefore := p.Err() != nil
				cctx, ccancel := context.WithTimeout(context.Background(), timeout)
				t0 := time.Now()
				err := p.Call(cctx, "echo", []byte("x"), nil)
				took := time.Since(t0)
				ccancel()
				mu.Lock()
				calls++
				switch {
				case err == nil:
				case errors.Is(err, rpc.ErrDeadReference):
					deadCalls++
				case errors.Is(err, context.DeadlineExceeded):
					deadline++
				}
				mu.Unlock()
				switch {
				case took > timeout+overrun:
					lateBy(t0.Add(timeout), t0.Add(took), took-timeout-overrun, "%s's call to %s took %v, deadline %v: %v", n.name, m.name, took, timeout, err)
				case deadBefore && !errors.Is(err, rpc.ErrDeadReference):
					violate("%s's call on a dead reference to %s: %v after %v, want rpc.ErrDeadReference", n.name, m.name, err, took)
				case deadBefore && took > 10*time.Millisecond:
					lateBy(t0, t0.Add(took), took-10*time.Millisecond, "%s's call on a dead reference to %s: %v after %v, want it at once", n.name, m.name, err, took)
				case err != nil && !errors.Is(err, rpc.ErrDeadReference) && !errors.Is(err, context.DeadlineExceeded):
					violate("%s's call to %s failed with %v, want rpc.ErrDeadReference or its deadline", n.name, m.name, err)
				}
			}
		}()
	}

	// Faults, one pair at a time faulted at most, several pairs at once.
	kinds := map[string]int{}
	for runCtx.Err() == nil {
		mu.Lock()
		i, j := rng.IntN(nodes), rng.IntN(nodes)
		hold := time.Duration(300+rng.IntN(1700)) * time.Millisecond
		pause := time.Duration(50+rng.IntN(250)) * time.Millisecond
		kind := []string{"cut", "cut", "one-way", "delay"}[rng.IntN(4)]
		mu.Unlock()
		if i == j {
			continue
		}
		a, b := ns[i].name, ns[j].name
		k := key(a, b)
		mu.Lock()
		busy := false
		for _, w := range faults[k] {
			busy = busy || w.end.IsZero()
		}
		if busy {
			mu.Unlock()
			continue
		}
		w := &window{kind: kind, start: time.Now()}
		switch kind {
		case "cut":
			nw.Cut(a, b)
		case "one-way":
			w.from = a
			nw.CutOneWay(a, b)
		case "delay":
			nw.Delay(a, b, time.Duration(5+rng.IntN(25))*time.Millisecond)
		}
		faults[k] = append(faults[k], w)
		kinds[kind]++
		mu.Unlock()
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case <-time.After(hold):
			case <-runCtx.Done():
			}
			nw.Heal(a, b)
			mu.Lock()
			w.end = time.Now()
			mu.Unlock()
		}()
		select {
		case <-time.After(pause):
		case <-runCtx.Done():
		}
	}
	<-runCtx.Done()
	nw.HealAll()
	healed := time.Now()
	// The backoff is capped at 200 ms (with jitter up to 300 ms); a dial
	// and handshake take milliseconds; a reference left over from before
	// the heal may need DeadAfter to go.
	if !waitUntil(3*time.Second, allConnected) {
		for i, a := range ns {
			for _, b := range ns[i+1:] {
				if !connected(a, b) {
					lateBy(healed, time.Now(), time.Since(healed)-3*time.Second, "%s and %s not connected again 3s after the last heal", a.name, b.name)
				}
			}
		}
	}
	reconnected := time.Since(healed)
	cancel()
	for _, n := range ns {
		n.ln.Close()
		n.reg.Close()
	}
	wg.Wait()

	// Detection: each cut that lasted past the bound was noticed, on each
	// side it silenced, within the bound.
	var took []time.Duration
	mu.Lock()
	defer mu.Unlock()
	for k, ws := range faults {
		for _, w := range ws {
			if w.kind == "delay" || w.end.Sub(w.start) < detect {
				continue
			}
			sides := []side{{k[0], k[1]}, {k[1], k[0]}}
			if w.kind == "one-way" {
				// The side that no longer hears is the one that must
				// notice; the other learns from its eviction (or its own
				// probes, unanswered).
				deaf := k[0]
				if deaf == w.from {
					deaf = k[1]
				}
				sides = []side{{deaf, w.from}}
			}
			for _, s := range sides {
				i := slices.IndexFunc(noticed[s], func(at time.Time) bool { return !at.Before(w.start) })
				if i >= 0 && noticed[s][i].Sub(w.start) > detect {
					lates = append(lates, late{w.start, noticed[s][i], noticed[s][i].Sub(w.start) - detect, fmt.Sprintf("%s of %s-%s (%v) noticed by %s after %v, bound %v",
						w.kind, k[0], k[1], w.end.Sub(w.start).Round(time.Millisecond), s.at, noticed[s][i].Sub(w.start).Round(time.Millisecond), detect)})
					continue
				}
				if i < 0 {
					violations = append(violations, fmt.Sprintf("%s of %s-%s (%v) not noticed by %s", w.kind, k[0], k[1], w.end.Sub(w.start).Round(time.Millisecond), s.at))
					continue
				}
				took = append(took, noticed[s][i].Sub(w.start))
			}
		}
	}
	slices.Sort(took)
	p99 := time.Duration(0)
	if len(took) > 0 {
		p99 = took[min(len(took)-1, len(took)*99/100)]
	}
	stalls.Stop()
	excused := 0
	for _, l := range lates {
		if stalled := stalls.Overlap(l.from, l.to); stalled >= l.excess {
			excused++
			t.Logf("broken by %v while this process stalled %v: %s", l.excess.Round(time.Millisecond), stalled.Round(time.Millisecond), l.msg)
			continue
		}
		violations = append(violations, l.msg)
	}
	t.Logf("in-memory chaos: %v, %d nodes; faults %v; %d calls (%d ErrDeadReference, %d deadline); %d liveness evictions; %d long cuts noticed, p99 %v; all reconnected %v after the last heal; %d timing bounds broken while this process stalled (%d stalls, up to %v), excused",
		dur, nodes, kinds, calls, deadCalls, deadline, evictions, len(took), p99.Round(time.Millisecond), reconnected.Round(time.Millisecond),
		excused, stalls.Count(), stalls.Longest().Round(time.Millisecond))
	for _, v := range violations {
		t.Error(v)
	}
}
