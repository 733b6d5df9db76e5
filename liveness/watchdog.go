package liveness

import (
	"fmt"
	"runtime/metrics"
	"sync"
	"sync/atomic"
	"time"
)

// WatchdogConfig sets the bounds of the process watchdog. The zero value is
// valid: every zero field takes its default, and a zero limit is no limit.
//
// Memory: debug.SetMemoryLimit is Go's soft limit. Near it the runtime
// collects harder, which is the right first answer to memory pressure, and
// the watchdog does nothing about it. MaxHeap and MaxRSS are hard bounds
// past which the process is unhealthy (a supervisor should restart it):
// set them above the soft limit, so that the runtime gets its chance first.
type WatchdogConfig struct {
	// HangAfter: a handler call running longer is stuck, and so is the
	// dispatcher when calls are in flight and none has finished for this
	// long. Default 30 s (the Node's WithHangAfter).
	HangAfter time.Duration
	// SampleEvery is how often the sampler looks. Call durations are
	// measured to within it (Begin reads no clock: see Watchdog). At most
	// HangAfter. Default 1 s (or HangAfter, if shorter).
	SampleEvery time.Duration
	// MaxGoroutines is a hard bound on the goroutine count; 0: none.
	MaxGoroutines int
	// MaxHeap is a hard bound on the live heap in bytes (what the last GC
	// found reachable, runtime/metrics "/gc/heap/live:bytes"); 0: none.
	MaxHeap uint64
	// MaxRSS is a hard bound on the resident set in bytes, read from
	// /proc/self/statm (Linux only: elsewhere setting it is an error); 0: none.
	MaxRSS uint64
	// LeakWindow turns on the trend rule for goroutines and the live heap;
	// 0: off. The samples of the last LeakWindow are split into four equal
	// parts in time order, and the smallest value of each part is its
	// floor. The value is growing when every part's floor is above the
	// floor of the part before, and the last floor exceeds the first by at
	// least a tenth of the first and by at least 64 goroutines or 16 MiB.
	// Floors, not peaks: a burst of work raises the peaks and falls back,
	// a leak raises the floor and keeps it up. At least 4·SampleEvery.
	LeakWindow time.Duration
	// Sustain: once the watchdog has found problems at every sample for
	// this long, OnUnhealthy is called, once per episode (an episode ends
	// at the first sample that finds nothing). 0: at the first finding.
	Sustain time.Duration
	// OnUnhealthy, if set, gets the findings of a sustained episode. It
	// runs in a goroutine of its own, so it may block (drain, then exit for
	// a supervisor to restart) and may call Close; Close does not wait for it.
	OnUnhealthy func([]Finding)
	// Clock is the time source; nil means the real one.
	Clock Clock
}

// Default watchdog bounds.
const (
	DefaultHangAfter   = 30 * time.Second // a request/response handler has no business running this long
	DefaultSampleEvery = time.Second      // one sample costs tens of µs; once a second is noise
)

// Trend thresholds (see WatchdogConfig.LeakWindow): below these the floors
// of a healthy process wander (connections come and go, each with a few
// goroutines; the live heap moves with every collection).
const (
	leakMinGoroutines = 64
	leakMinHeap       = 16 << 20
	leakMinFraction   = 0.1
)

func (c WatchdogConfig) withDefaults() WatchdogConfig {
	if c.HangAfter == 0 {
		c.HangAfter = DefaultHangAfter
	}
	if c.SampleEvery == 0 {
		c.SampleEvery = min(DefaultSampleEvery, c.HangAfter)
	}
	return c
}

// Validate reports a WatchdogConfig whose bounds are negative or contradict
// each other. Zero fields are valid: they take their defaults.
func (c WatchdogConfig) Validate() error {
	c = c.withDefaults()
	switch {
	case c.HangAfter < 0 || c.SampleEvery < 0 || c.MaxGoroutines < 0 || c.LeakWindow < 0 || c.Sustain < 0:
		return fmt.Errorf("liveness: watchdog bounds must not be negative: %+v", c)
	case c.SampleEvery > c.HangAfter:
		return fmt.Errorf("liveness: watchdog SampleEvery %v above HangAfter %v: calls could not be timed", c.SampleEvery, c.HangAfter)
	case c.LeakWindow > 0 && c.LeakWindow < 4*c.SampleEvery:
		return fmt.Errorf("liveness: watchdog LeakWindow %v shorter than 4 samples (SampleEvery %v)", c.LeakWindow, c.SampleEvery)
	}
	return nil
}

// FindingKind is what a Finding is about.
type FindingKind uint8

const (
	// StuckCall: a handler call has run longer than HangAfter. Method,
	// Peer and For (its running time) say which; a handler that ignores
	// its context is found all the same. Beyond the oldest few, the rest
	// are summed up in one StuckCall with no Method and Value = their number.
	StuckCall FindingKind = iota + 1
	// DispatchStall: calls are in flight (Value) and none has finished for
	// For, at least HangAfter.
	DispatchStall
	// TooManyGoroutines: Value goroutines, over the bound Limit.
	TooManyGoroutines
	// GoroutineGrowth: the goroutine count's floor rose steadily by Value
	// over For (the LeakWindow rule).
	GoroutineGrowth
	// HeapOverLimit: Value bytes of live heap, over the bound Limit.
	HeapOverLimit
	// HeapGrowth: the live heap's floor rose steadily by Value bytes over For.
	HeapGrowth
	// RSSOverLimit: Value bytes resident, over the bound Limit.
	RSSOverLimit

	numKinds = iota + 1
)

var kindNames = [numKinds]string{"", "stuck-call", "dispatch-stall", "too-many-goroutines", "goroutine-growth", "heap-over-limit", "heap-growth", "rss-over-limit"}

func (k FindingKind) String() string {
	if int(k) < len(kindNames) && k > 0 {
		return kindNames[k]
	}
	return fmt.Sprintf("FindingKind(%d)", k)
}

// MarshalText writes the kind's name, for JSON health reports.
func (k FindingKind) MarshalText() ([]byte, error) { return []byte(k.String()), nil }

// Finding is one problem the watchdog sees, with its cause spelt out in
// Text (for instance `handler "storage.get" for peer abc running 31s (bound
// 30s)`). Which other fields are set depends on Kind (see FindingKind).
type Finding struct {
	Kind         FindingKind
	Method, Peer string        // StuckCall
	For          time.Duration // a call's running time, a stall's length, a trend's window
	Value, Limit uint64        // the measure and the bound it broke (0 for trends)
	Text         string

	call Call // StuckCall: the call, so that its End clears the finding at once
}

func (f Finding) String() string { return f.Text }

// WatchdogStats counts what a Watchdog saw.
type WatchdogStats struct {
	Begun, Ended uint64 // handler calls since the start, counted now
	InFlight     int    // Begun - Ended
	Slots        int    // capacity of the call table: 64 bytes each, never shrinks
	Samples      uint64
	// Of the last sample:
	Goroutines  uint64
	Heap        uint64 // live heap bytes, as of the last GC
	RSS         uint64 // resident bytes; 0 where /proc/self/statm is unavailable
	MemoryLimit uint64 // Go's soft limit (debug.SetMemoryLimit), for comparison; 0 if none
	// Found counts findings by kind since the start: each stuck call once,
	// each stall, limit breach and trend once per episode.
	Found map[FindingKind]uint64
	// Unhealthy counts episodes sustained past Sustain (OnUnhealthy calls).
	Unhealthy uint64
}

// Watchdog watches this process: handler calls stuck past a bound, a
// dispatcher that makes no progress, goroutine and memory growth. One
// goroutine samples every SampleEvery; the call path costs only Begin and
// End.
//
// Begin and End take no lock and read no clock (a clock read costs 30 to
// 50 ns on common virtual machines, more than the rest of both together):
// a call takes a free slot in a table of 64-byte slots, one cache line
// each, and stamps it with the time of the latest sample; the sampler
// scans the table without locking, so a call that never returns is found
// all the same. A call's running time is thus known to within SampleEvery:
// it is reported stuck once it has certainly run longer than HangAfter,
// between HangAfter and HangAfter+SampleEvery after it began, and
// Finding.For counts from the sample before it began, so it may be up to
// SampleEvery too long.
//
// Findings and Healthy reflect the newest sample, except that a stuck
// call's End, or any call's End during a stall, clears its finding at once.
type Watchdog struct {
	cfg   WatchdogConfig
	clock Clock
	epoch time.Time
	every int64 // SampleEvery in ns
	hang  int64 // HangAfter in ns

	_   cpuPad
	tab atomic.Pointer[callTable] // read by Begin
	// tick is the latest sample's time, in ns since epoch: Begin stamps it.
	tick atomic.Int64
	// progress is set by the first End after each sample.
	progress atomic.Bool
	_        cpuPad

	free   sync.Pool  // of *slot: per-P hints of slots just freed
	growMu sync.Mutex // serialises growth of the table

	// The sampler's own state.
	timer        Timer
	prevT        int64
	lastProgress int64
	present      [numKinds]bool // which kinds the previous sample found
	gor, heap    trend
	episode      int64 // start of the current unhealthy episode, or -1
	hooked       bool  // OnUnhealthy already called this episode
	ms           []metrics.Sample
	rss          rssReader

	mu        sync.Mutex // guards what the sampler publishes
	findings  []Finding
	last      WatchdogStats
	found     [numKinds]uint64
	samples   uint64
	unhealthy uint64

	done      chan struct{}
	wg        sync.WaitGroup
	closeOnce sync.Once
	sampled   func() // test hook: after each sample
}

type cpuPad [64]byte

// NewWatchdog starts a watchdog. A zero cfg means the defaults.
func NewWatchdog(cfg WatchdogConfig) (*Watchdog, error) { return newWatchdog(cfg, nil) }

func newWatchdog(cfg WatchdogConfig, sampled func()) (*Watchdog, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	clock := cfg.Clock
	if clock == nil {
		clock = realClock{}
	}
	w := &Watchdog{
		cfg:     cfg,
		clock:   clock,
		every:   int64(cfg.SampleEvery),
		hang:    int64(cfg.HangAfter),
		episode: -1,
		ms: []metrics.Sample{
			{Name: "/sched/goroutines:goroutines"},
			{Name: "/gc/heap/live:bytes"},
			{Name: "/gc/gomemlimit:bytes"},
		},
		done:    make(chan struct{}),
		sampled: sampled,
	}
	if err := w.rss.open(); err != nil && cfg.MaxRSS > 0 {
		return nil, fmt.Errorf("liveness: watchdog MaxRSS needs /proc/self/statm: %w", err)
	}
	if cfg.LeakWindow > 0 {
		n := int(cfg.LeakWindow/cfg.SampleEvery) + 1
		w.gor.init(n)
		w.heap.init(n)
	}
	w.tab.Store(newCallTable(w, nil, 1))
	w.epoch = clock.Now()
	w.timer = clock.NewTimer(cfg.SampleEvery)
	w.wg.Add(1)
	go w.run()
	return w, nil
}

// Config returns the watchdog's bounds, defaults filled in.
func (w *Watchdog) Config() WatchdogConfig { return w.cfg }

// Close stops the sampler and waits for it. Begin and End keep working
// (they cost nothing more), and Findings keeps the last sample's. Close
// does not wait for an OnUnhealthy call in progress.
func (w *Watchdog) Close() {
	w.closeOnce.Do(func() {
		close(w.done)
		w.wg.Wait()
		w.rss.close()
	})
}

func (w *Watchdog) run() {
	defer w.wg.Done()
	defer w.timer.Stop()
	for {
		select {
		case <-w.timer.C():
		case <-w.done:
			return
		}
		w.sample(w.clock.Now())
		w.timer.Reset(w.cfg.SampleEvery)
		if w.sampled != nil {
			w.sampled()
		}
	}
}

// Findings returns the problems the watchdog sees now: the newest
// sample's, less stuck calls that have ended since and a stall that a
// finished call has broken.
func (w *Watchdog) Findings() []Finding {
	w.mu.Lock()
	fs := w.findings
	w.mu.Unlock()
	if len(fs) == 0 {
		return nil
	}
	progressed := w.progress.Load()
	out := make([]Finding, 0, len(fs))
	for _, f := range fs {
		if f.call.s != nil && !f.call.running() || f.Kind == DispatchStall && progressed {
			continue
		}
		out = append(out, f)
	}
	return out
}

// Healthy reports whether the watchdog sees no problem now, and if it
// does, each problem's cause in a sentence (Finding.Text): what a health
// endpoint answers with.
func (w *Watchdog) Healthy() (ok bool, reasons []string) {
	fs := w.Findings()
	for _, f := range fs {
		reasons = append(reasons, f.Text)
	}
	return len(fs) == 0, reasons
}

// InFlight is the number of handler calls begun and not ended. It scans
// the call table: microseconds, not for a hot path.
func (w *Watchdog) InFlight() int {
	begun, ended := w.tab.Load().counts()
	return int(begun - ended)
}

// Stats returns the watchdog's counters, and what its last sample measured.
func (w *Watchdog) Stats() WatchdogStats {
	tab := w.tab.Load()
	begun, ended := tab.counts()
	w.mu.Lock()
	s := w.last
	s.Samples, s.Unhealthy = w.samples, w.unhealthy
	s.Found = make(map[FindingKind]uint64)
	for k, n := range w.found {
		if n > 0 {
			s.Found[FindingKind(k)] = n
		}
	}
	w.mu.Unlock()
	s.Begun, s.Ended, s.InFlight, s.Slots = begun, ended, int(begun-ended), tab.slots()
	return s
}
