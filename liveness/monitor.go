package liveness

import (
	"container/heap"
	"sync"
	"sync/atomic"
	"time"
)

// Target is a connection the Monitor watches. *rpc.Conn is one.
type Target interface {
	// LastReceived is when bytes last arrived: any inbound traffic is
	// evidence of life.
	LastReceived() time.Time
	// Probe sends a probe that the peer's process answers (not its
	// kernel); fn gets the round trip when the answer arrives, and must not
	// block.
	Probe(fn func(rtt time.Duration)) error
}

// Events are what a Monitor tells about a watched peer.
type Events struct {
	// Suspect, if set, is called with true when the peer becomes suspect (no
	// answer to probes within the adaptive timeout: route new work elsewhere
	// where there is a choice) and with false when it answers again. It runs on the monitor's goroutine: no blocking.
	Suspect func(suspect bool)
	// Dead is called once when the peer is declared dead, in a goroutine
	// of its own; the watch is then stopped.
	Dead func(v *Verdict)
}

// Monitor watches any number of peers with one goroutine and one timer: a
// heap orders the peers by their next check, so 10,000 idle peers cost no
// goroutine each, and a peer that carried traffic within the interval costs
// no probe.
type Monitor struct {
	cfg    Config
	clock  Clock
	budget *probeBudget // used by the monitor's goroutine only

	mu   sync.Mutex
	h    watchHeap
	kick chan struct{}
	done chan struct{}
	wg   sync.WaitGroup

	probes, late, verdicts, kernelChecks, deferred atomic.Uint64
	onRTT                                          atomic.Pointer[func(time.Duration)]
}

// OnRTT sets a function told of every probe's round trip (for metrics). It
// runs on the connection's reader and must be quick.
func (m *Monitor) OnRTT(fn func(time.Duration)) { m.onRTT.Store(&fn) }

// NewMonitor starts a monitor. A nil clock means the real one.
func NewMonitor(cfg Config, clock Clock) (*Monitor, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if clock == nil {
		clock = realClock{}
	}
	m := &Monitor{cfg: cfg, clock: clock, budget: newProbeBudget(cfg.IdleProbeBudget), kick: make(chan struct{}, 1), done: make(chan struct{})}
	m.wg.Add(1)
	go m.run()
	return m, nil
}

// Config returns the monitor's bounds.
func (m *Monitor) Config() Config { return m.cfg }

// Close stops the monitor. Watches stop with it; no verdict follows.
func (m *Monitor) Close() {
	select {
	case <-m.done:
	default:
		close(m.done)
	}
	m.wg.Wait()
}

// MonitorStats counts what a Monitor did. Watched is a current value; the
// others are cumulative.
type MonitorStats struct {
	Watched      int    // peers watched now
	Probes       uint64 // probes sent
	KernelChecks uint64 // idle peers found alive by their kernel's acknowledgements, without a probe
	LateChecks   uint64 // checks that ran late, so re-probed instead of judged
	Verdicts     uint64 // peers declared dead
	// Deferred counts checks of idle peers without kernel evidence that
	// put off their probe to their slot in Config.IdleProbeBudget.
	Deferred uint64
}

// Stats returns the monitor's counters.
func (m *Monitor) Stats() MonitorStats {
	m.mu.Lock()
	n := len(m.h)
	m.mu.Unlock()
	return MonitorStats{Watched: n, Probes: m.probes.Load(), KernelChecks: m.kernelChecks.Load(),
		LateChecks: m.late.Load(), Verdicts: m.verdicts.Load(), Deferred: m.deferred.Load()}
}

// Watch is one watched peer.
type Watch struct {
	m      *Monitor
	t      Target
	busy   func() int // the target's outstanding calls, if it tells
	kernel func() (KernelInfo, bool)
	ev     Events
	onRTT  func(time.Duration)

	mu      sync.Mutex // guards det: checks run on the monitor, samples on the conn's reader
	det     detector
	stopped bool

	next, due time.Time // guarded by m.mu
	index     int       // in the heap, or -1
}

// Watch starts watching t. kernel, if not nil, reads the kernel's evidence
// for t's connection (see KernelSource). If t has a method Outstanding() int
// (as *rpc.Conn has), a peer with calls outstanding is probed while quiet,
// whatever its kernel says. The first check runs at once: it probes to
// learn the round trip.
func (m *Monitor) Watch(t Target, kernel func() (KernelInfo, bool), ev Events) *Watch {
	w := &Watch{m: m, t: t, kernel: kernel, ev: ev, index: -1}
	if o, ok := t.(interface{ Outstanding() int }); ok {
		w.busy = o.Outstanding
	}
	w.onRTT = w.observe
	m.mu.Lock()
	w.next = m.clock.Now()
	heap.Push(&m.h, w)
	m.mu.Unlock()
	m.wake()
	return w
}

// Stop stops watching. No event follows it.
func (w *Watch) Stop() {
	w.mu.Lock()
	w.stopped = true
	w.mu.Unlock()
	w.m.mu.Lock()
	if w.index >= 0 {
		heap.Remove(&w.m.h, w.index)
	}
	w.m.mu.Unlock()
}

// Kick asks for a check now: for instance when a call goes out on a
// connection that has been quiet, so that a probe goes with it.
func (w *Watch) Kick() {
	m := w.m
	m.mu.Lock()
	if w.index < 0 {
		m.mu.Unlock()
		return
	}
	now := m.clock.Now()
	w.mu.Lock()
	w.det.urgent = true
	w.mu.Unlock()
	if w.next.After(now) {
		w.next, w.due = now, time.Time{}
		heap.Fix(&m.h, w.index)
	}
	m.mu.Unlock()
	m.wake()
}

// Suspect reports whether the peer is suspect now: it has not answered
// probes within the adaptive timeout.
func (w *Watch) Suspect() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.det.suspect
}

// Timeout is the peer's current adaptive probe timeout, and SRTT its
// smoothed round trip (zero before the first sample).
func (w *Watch) Timeout() (timeout, srtt time.Duration) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.det.est.Timeout(w.m.cfg.MinTimeout, w.m.cfg.MaxTimeout), w.det.est.SRTT()
}

func (w *Watch) observe(rtt time.Duration) {
	w.mu.Lock()
	w.det.est.Observe(rtt)
	w.mu.Unlock()
	if fn := w.m.onRTT.Load(); fn != nil {
		(*fn)(rtt)
	}
}

func (m *Monitor) wake() {
	select {
	case m.kick <- struct{}{}:
	default:
	}
}

func (m *Monitor) run() {
	defer m.wg.Done()
	timer := m.clock.NewTimer(time.Hour)
	defer timer.Stop()
	var ready []*Watch
	for {
		m.mu.Lock()
		now := m.clock.Now()
		for len(m.h) > 0 && !m.h[0].next.After(now) {
			ready = append(ready, heap.Pop(&m.h).(*Watch))
		}
		m.mu.Unlock()
		for i, w := range ready {
			m.check(w, now)
			ready[i] = nil
		}
		ready = ready[:0]

		wait := time.Hour
		m.mu.Lock()
		if len(m.h) > 0 {
			wait = m.h[0].next.Sub(m.clock.Now())
		}
		m.mu.Unlock()
		if wait <= 0 {
			continue
		}
		// Checks due within batchWindow of each other run on one wake-up:
		// 10,000 idle peers checked once a second cost 100 wake-ups a
		// second, not 10,000.
		timer.Reset(max(wait, batchWindow))
		select {
		case <-timer.C():
		case <-m.kick:
		case <-m.done:
			return
		}
	}
}

func (m *Monitor) check(w *Watch, now time.Time) {
	w.mu.Lock()
	if w.stopped {
		w.mu.Unlock()
		return
	}
	busy := w.busy != nil && w.busy() > 0
	st := w.det.check(&m.cfg, now, w.due, w.t.LastReceived(), busy, w.kernel, m.budget)
	if st.dead != nil {
		w.stopped = true
	}
	w.mu.Unlock()
	if st.late {
		m.late.Add(1)
	}
	if st.kernelCheck {
		m.kernelChecks.Add(1)
	}
	if st.deferred {
		m.deferred.Add(1)
	}
	if st.probe {
		m.probes.Add(1)
		w.t.Probe(w.onRTT)
	}
	if st.suspect != 0 && w.ev.Suspect != nil {
		w.ev.Suspect(st.suspect > 0)
	}
	if st.dead != nil {
		m.verdicts.Add(1)
		if w.ev.Dead != nil {
			go w.ev.Dead(st.dead)
		}
		return
	}
	m.mu.Lock()
	w.mu.Lock()
	if !w.stopped { // Stop may have run since the check
		w.next, w.due = st.next, st.next
		heap.Push(&m.h, w)
	}
	w.mu.Unlock()
	m.mu.Unlock()
}

// batchWindow is how late a check may run so that checks due close
// together share one wake-up of the monitor. It is well under LateSlack.
const batchWindow = 10 * time.Millisecond

// watchHeap orders watches by their next check.
type watchHeap []*Watch

func (h watchHeap) Len() int           { return len(h) }
func (h watchHeap) Less(i, j int) bool { return h[i].next.Before(h[j].next) }
func (h watchHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index, h[j].index = i, j
}
func (h *watchHeap) Push(x any) {
	w := x.(*Watch)
	w.index = len(*h)
	*h = append(*h, w)
}
func (h *watchHeap) Pop() any {
	old := *h
	w := old[len(old)-1]
	old[len(old)-1] = nil
	w.index = -1
	*h = old[:len(old)-1]
	return w
}
