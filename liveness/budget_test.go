package liveness

import (
	"container/heap"
	"sync"
	"testing"
	"time"
)

// fleetSim drives n detectors that share one probe budget on fake time, as
// a Monitor does, for peers without kernel evidence that answer each probe
// after a millisecond unless silenced.
type fleetSim struct {
	cfg    Config
	budget *probeBudget
	now    time.Time
	peers  []*simPeer
	h      simHeap
	probes []time.Time // every probe sent, in order
}

type simPeer struct {
	i        int
	d        detector
	next     time.Time
	lastRecv time.Time
	silent   bool
	busy     bool
	dead     *Verdict
	deadAt   time.Time
	probedAt []time.Time
}

func newFleetSim(cfg Config, n int) *fleetSim {
	f := &fleetSim{cfg: cfg, budget: newProbeBudget(cfg.IdleProbeBudget), now: t0}
	for i := range n {
		// Peers come in over a second, as a node's do after it starts.
		p := &simPeer{i: i, next: t0.Add(time.Duration(i) * time.Second / time.Duration(n)), lastRecv: t0}
		f.peers = append(f.peers, p)
		heap.Push(&f.h, p)
	}
	return f
}

// run checks every peer when due until until. Checks run batchWindow late
// at most, as the Monitor's do.
func (f *fleetSim) run(until time.Time) {
	for f.h.Len() > 0 {
		p := f.h[0]
		if p.next.After(until) {
			break
		}
		heap.Pop(&f.h)
		f.now = p.next
		if !p.silent && p.lastRecv.Before(p.d.lastProbe) && f.now.Sub(p.d.lastProbe) >= time.Millisecond {
			p.lastRecv = p.d.lastProbe.Add(time.Millisecond) // the answer to its last probe
		}
		st := p.d.check(&f.cfg, f.now, p.next, p.lastRecv, p.busy, nil, f.budget)
		if st.probe {
			f.probes = append(f.probes, f.now)
			p.probedAt = append(p.probedAt, f.now)
			if !p.silent {
				p.d.est.Observe(time.Millisecond)
			}
		}
		if st.dead != nil {
			p.dead, p.deadAt = st.dead, f.now
			continue
		}
		p.next = st.next
		if !p.silent && p.lastRecv.Before(p.d.lastProbe) && p.d.lastProbe.Add(time.Millisecond).Before(p.next) {
			// The answer arrives before the next check; the real Monitor
			// would see it then.
			p.lastRecv = p.d.lastProbe.Add(time.Millisecond)
		}
		heap.Push(&f.h, p)
	}
	f.now = until
}

type simHeap []*simPeer

func (h simHeap) Len() int           { return len(h) }
func (h simHeap) Less(i, j int) bool { return h[i].next.Before(h[j].next) }
func (h simHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *simHeap) Push(x any)        { *h = append(*h, x.(*simPeer)) }
func (h *simHeap) Pop() any {
	old := *h
	p := old[len(old)-1]
	*h = old[:len(old)-1]
	return p
}

// maxRate is the most probes sent in any window of length w, per second.
func maxRate(probes []time.Time, w time.Duration) float64 {
	most, j := 0, 0
	for i := range probes {
		for probes[i].Sub(probes[j]) >= w {
			j++
		}
		most = max(most, i-j+1)
	}
	return float64(most) / w.Seconds()
}

// 10,000 idle peers without kernel evidence under the default budget of
// 2,000 probes a second: the node sends no more than that (it would send
// 40,000 without it), every idle peer is still probed at least every
// N/budget plus an Interval, a silenced idle peer is noticed within
// N/budget + Interval + DeadAfter, and a silenced peer with a call
// outstanding within Interval + DeadAfter, as without the budget.
func TestProbeBudgetBoundsIdleProbes(t *testing.T) {
	cfg := LAN()
	const n = 10_000
	cycle := time.Duration(n) * time.Second / time.Duration(cfg.IdleProbeBudget) // 5 s
	f := newFleetSim(cfg, n)
	f.run(t0.Add(20 * time.Second))

	// The rate, from the end of the learning probes (one each at connect).
	var steady []time.Time
	for _, at := range f.probes {
		if at.After(t0.Add(2 * time.Second)) {
			steady = append(steady, at)
		}
	}
	rate := maxRate(steady, time.Second)
	if rate > float64(cfg.IdleProbeBudget)*1.05 {
		t.Fatalf("%.0f idle probes a second at most, over the budget of %d", rate, cfg.IdleProbeBudget)
	}
	if rate < float64(cfg.IdleProbeBudget)*0.5 {
		t.Fatalf("%.0f idle probes a second at most: the budget of %d is not used", rate, cfg.IdleProbeBudget)
	}
	var worstGap time.Duration
	for _, p := range f.peers {
		if p.dead != nil {
			t.Fatalf("peer %d convicted while answering: %v", p.i, p.dead)
		}
		last := t0
		for _, at := range p.probedAt {
			worstGap = max(worstGap, at.Sub(last))
			last = at
		}
		worstGap = max(worstGap, f.now.Sub(last))
	}
	if worstGap > cycle+cfg.Interval+batchWindow {
		t.Fatalf("an idle peer went %v without a probe; the bound is %v", worstGap, cycle+cfg.Interval)
	}
	t.Logf("%d peers: %.0f probes/s at most (budget %d), each probed at least every %v", n, rate, cfg.IdleProbeBudget, worstGap)

	// Silence an idle peer and a busy one at once.
	idle, busy := f.peers[1234], f.peers[5678]
	idle.silent, busy.silent = true, true
	busy.busy = true
	silencedAt := f.now
	// The call goes out: a check at once (Watch.Kick).
	busy.d.urgent = true
	f.h = slicesDelete(f.h, busy)
	busy.next = f.now
	heap.Push(&f.h, busy)
	f.run(f.now.Add(2 * cycle))
	if idle.dead == nil || busy.dead == nil {
		t.Fatalf("not convicted: idle %v, busy %v", idle.dead, busy.dead)
	}
	idleTook, busyTook := idle.deadAt.Sub(silencedAt), busy.deadAt.Sub(silencedAt)
	t.Logf("silent idle peer noticed after %v, silent peer with a call outstanding after %v", idleTook, busyTook)
	if bound := cycle + cfg.Interval + cfg.DeadAfter + 2*batchWindow; idleTook > bound {
		t.Fatalf("a silent idle peer noticed after %v; the bound is %v", idleTook, bound)
	}
	if bound := cfg.DeadAfter + cfg.RetryInterval; busyTook > bound {
		t.Fatalf("a silent peer with a call outstanding noticed after %v; the bound is %v", busyTook, bound)
	}
	for _, p := range f.peers {
		if p.dead != nil && p != idle && p != busy {
			t.Fatalf("peer %d convicted: %v", p.i, p.dead)
		}
	}
}

// A call that goes out to an idle peer waiting for its slot, with no Kick
// (the peer sent something lately), is not kept waiting for the slot: the
// waiting peer is looked at every waitingLook, and probed at once when
// busy.
func TestProbeBudgetLetsBusyPeersThrough(t *testing.T) {
	cfg := LAN()
	f := newFleetSim(cfg, 10_000)
	f.run(t0.Add(10 * time.Second))
	// A peer whose slot is furthest off.
	var p *simPeer
	for _, q := range f.peers {
		if q.dead == nil && !q.d.slot.IsZero() && (p == nil || q.d.slot.After(p.d.slot)) {
			p = q
		}
	}
	if p == nil || p.d.slot.Sub(f.now) < time.Second {
		t.Fatal("no peer waits long for its slot")
	}
	p.busy, p.silent = true, true
	from := f.now
	f.run(from.Add(time.Minute))
	if p.dead == nil {
		t.Fatal("never convicted")
	}
	if took, bound := p.deadAt.Sub(from), waitingLook+cfg.DeadAfter+cfg.RetryInterval+batchWindow; took > bound {
		t.Fatalf("a busy silent peer waiting for its slot noticed after %v; the bound is %v", took, bound)
	}
}

// Without a budget (zero) idle peers without kernel evidence are probed
// every Interval, whatever their number.
func TestProbeBudgetZeroIsUnbounded(t *testing.T) {
	cfg := LAN()
	cfg.IdleProbeBudget = 0
	f := newFleetSim(cfg, 2_000)
	f.run(t0.Add(5 * time.Second))
	var steady []time.Time
	for _, at := range f.probes {
		if at.After(t0.Add(2 * time.Second)) {
			steady = append(steady, at)
		}
	}
	// 2,000 peers every Interval plus a round trip: about 7,970 a second.
	if rate := maxRate(steady, time.Second); rate < 7000 {
		t.Fatalf("%.0f probes a second: bounded without a budget", rate)
	}
}

func TestProbeBudgetSlots(t *testing.T) {
	if newProbeBudget(0) != nil || newProbeBudget(-1) != nil {
		t.Fatal("a budget from a non-positive rate")
	}
	var nilBudget *probeBudget
	if got := nilBudget.take(t0); !got.Equal(t0) {
		t.Fatalf("nil budget: %v", got)
	}
	b := newProbeBudget(100) // 10 ms apart
	if got := b.take(t0); !got.Equal(t0) {
		t.Fatalf("first slot %v", got)
	}
	if got := b.take(t0); !got.Equal(t0) { // 10 ms off: within the batch window
		t.Fatalf("second slot %v", got)
	}
	if got := b.take(t0); !got.Equal(t0.Add(20 * time.Millisecond)) {
		t.Fatalf("third slot %v", got)
	}
	// Slots unused in the past are not saved up.
	if got := b.take(t0.Add(time.Hour)); !got.Equal(t0.Add(time.Hour)) {
		t.Fatalf("after a quiet hour: %v", got)
	}
	if got := b.take(t0.Add(time.Hour)); !got.Equal(t0.Add(time.Hour)) {
		t.Fatalf("second after a quiet hour: %v", got)
	}
	if got := b.take(t0.Add(time.Hour)); !got.After(t0.Add(time.Hour)) {
		t.Fatalf("third after a quiet hour: %v (a burst)", got)
	}
}

func slicesDelete(h simHeap, p *simPeer) simHeap {
	for i, q := range h {
		if q == p {
			heap.Remove(&h, i)
			return h
		}
	}
	return h
}

// autoTarget answers every probe at once.
type autoTarget struct {
	mu       sync.Mutex
	lastRecv time.Time
	probes   int
}

func (a *autoTarget) LastReceived() time.Time {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.lastRecv
}

func (a *autoTarget) Probe(fn func(time.Duration)) error {
	a.mu.Lock()
	a.lastRecv = time.Now()
	a.probes++
	a.mu.Unlock()
	fn(time.Microsecond)
	return nil
}

// The Monitor holds idle peers without kernel evidence to its budget, on
// the real clock: 40 peers probed every 50 ms would take 800 probes a
// second; with a budget of 40 a second they get about that many.
func TestMonitorProbeBudget(t *testing.T) {
	cfg := Local()
	cfg.IdleProbeBudget = 40
	m, err := NewMonitor(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	targets := make([]*autoTarget, 40)
	for i := range targets {
		targets[i] = &autoTarget{lastRecv: time.Now()}
		w := m.Watch(targets[i], nil, Events{Dead: func(v *Verdict) { t.Errorf("peer %d convicted: %v", i, v) }})
		defer w.Stop()
	}
	time.Sleep(200 * time.Millisecond) // the learning probes, and the first slots
	p0 := m.Stats().Probes
	time.Sleep(time.Second)
	st := m.Stats()
	probes := st.Probes - p0
	t.Logf("%d probes in 1 s (budget 40/s, unbounded 800/s); %+v", probes, st)
	if probes > 40*2 {
		t.Errorf("%d probes in a second, over a budget of 40", probes)
	}
	if probes < 10 || st.Deferred == 0 {
		t.Errorf("%d probes, %d deferred: the budget is not used", probes, st.Deferred)
	}
}
