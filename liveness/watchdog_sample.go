package liveness

import (
	"fmt"
	"math"
	"runtime/metrics"
	"time"
)

// sample looks once: calls, then the runtime's numbers, then decides. It
// runs on the sampler goroutine only, and allocates only to describe
// findings.
func (w *Watchdog) sample(now time.Time) {
	t := int64(now.Sub(w.epoch))
	progressed := w.progress.Swap(false)
	w.tick.Store(t) // calls from now on began after this sample

	// A call stamped τ began before the sample after τ, about τ+SampleEvery:
	// it has certainly run longer than HangAfter once τ+SampleEvery+HangAfter ≤ t.
	var cs callScan
	tab := w.tab.Load()
	tab.scan(t-w.every-w.hang, w.prevT-w.every-w.hang, &cs)
	if 2*cs.inFlight > tab.slots() {
		w.grow(tab)
	}

	metrics.Read(w.ms)
	gor := metricUint(w.ms[0])
	heap := metricUint(w.ms[1])
	limit := metricUint(w.ms[2])
	if limit == math.MaxInt64 {
		limit = 0 // none set
	}
	rss, _ := w.rss.read()

	var fs []Finding
	if cs.stuck > 0 {
		for _, sc := range cs.oldest[:cs.numOldest] {
			method, peer, ok := sc.c.describe()
			if !ok {
				continue // ended since the scan
			}
			d := time.Duration(t - sc.start)
			fs = append(fs, Finding{
				Kind: StuckCall, Method: method, Peer: peer, For: d,
				Text: fmt.Sprintf("handler %q for peer %s running %v (bound %v)", method, orUnknown(peer), roundDur(d), w.cfg.HangAfter),
				call: sc.c,
			})
		}
		if more := cs.stuck - cs.numOldest; more > 0 {
			fs = append(fs, Finding{
				Kind: StuckCall, Value: uint64(more),
				Text: fmt.Sprintf("%d more handler calls running over %v", more, w.cfg.HangAfter),
			})
		}
	}

	if cs.inFlight == 0 || progressed {
		w.lastProgress = t
	} else if d := time.Duration(t - w.lastProgress); d >= w.cfg.HangAfter {
		fs = append(fs, Finding{
			Kind: DispatchStall, For: d, Value: uint64(cs.inFlight),
			Text: fmt.Sprintf("dispatch stalled: no handler call finished for %v while %d in flight (bound %v)", roundDur(d), cs.inFlight, w.cfg.HangAfter),
		})
	}

	if m := uint64(w.cfg.MaxGoroutines); m > 0 && gor > m {
		fs = append(fs, Finding{
			Kind: TooManyGoroutines, Value: gor, Limit: m,
			Text: fmt.Sprintf("%d goroutines, over the bound of %d", gor, m),
		})
	}
	if w.gor.add(gor) {
		if from, to, ok := w.gor.growing(leakMinGoroutines); ok {
			win := w.gor.span(w.cfg.SampleEvery)
			fs = append(fs, Finding{
				Kind: GoroutineGrowth, For: win, Value: to - from,
				Text: fmt.Sprintf("goroutines rising steadily: their floor rose from %d to %d over the last %v (+%.1f/s)", from, to, roundDur(win), float64(to-from)/win.Seconds()),
			})
		}
	}
	if m := w.cfg.MaxHeap; m > 0 && heap > m {
		soft := ""
		if limit > 0 {
			soft = fmt.Sprintf("; Go's soft limit %s", bytesText(limit))
		}
		fs = append(fs, Finding{
			Kind: HeapOverLimit, Value: heap, Limit: m,
			Text: fmt.Sprintf("live heap %s, over the bound of %s%s", bytesText(heap), bytesText(m), soft),
		})
	}
	if w.heap.add(heap) {
		if from, to, ok := w.heap.growing(leakMinHeap); ok {
			win := w.heap.span(w.cfg.SampleEvery)
			fs = append(fs, Finding{
				Kind: HeapGrowth, For: win, Value: to - from,
				Text: fmt.Sprintf("live heap rising steadily: its floor rose from %s to %s over the last %v (+%s/s)", bytesText(from), bytesText(to), roundDur(win), bytesText(uint64(float64(to-from)/win.Seconds()))),
			})
		}
	}
	if m := w.cfg.MaxRSS; m > 0 && rss > m {
		fs = append(fs, Finding{
			Kind: RSSOverLimit, Value: rss, Limit: m,
			Text: fmt.Sprintf("resident set %s, over the bound of %s", bytesText(rss), bytesText(m)),
		})
	}

	// Episodes: each kind counts when it appears; stuck calls count each
	// call once, as it crosses the bound.
	var has, crossed [numKinds]bool
	for _, f := range fs {
		has[f.Kind] = true
	}
	for k := range has {
		if k != int(StuckCall) && has[k] && !w.present[k] {
			crossed[k] = true
		}
	}
	w.present = has
	w.prevT = t

	var hook []Finding
	switch {
	case len(fs) == 0:
		w.episode, w.hooked = -1, false
	case w.episode < 0:
		w.episode = t
	}
	if len(fs) > 0 && !w.hooked && time.Duration(t-w.episode) >= w.cfg.Sustain {
		w.hooked = true
		hook = fs
	}

	w.mu.Lock()
	w.findings = fs
	w.samples++
	w.found[StuckCall] += uint64(cs.newStuck)
	for k, c := range crossed {
		if c {
			w.found[k]++
		}
	}
	if hook != nil {
		w.unhealthy++
	}
	w.last = WatchdogStats{Goroutines: gor, Heap: heap, RSS: rss, MemoryLimit: limit}
	w.mu.Unlock()

	if hook != nil && w.cfg.OnUnhealthy != nil {
		go w.cfg.OnUnhealthy(append([]Finding(nil), hook...))
	}
}

func metricUint(s metrics.Sample) uint64 {
	if s.Value.Kind() == metrics.KindUint64 {
		return s.Value.Uint64()
	}
	return 0
}

// trend keeps the last n samples of one measure (see WatchdogConfig.LeakWindow).
type trend struct {
	vals []uint64 // a ring
	next int
	full bool
}

func (r *trend) init(n int) { r.vals = make([]uint64, n) }

// add records v and reports whether the window is full (and the rule on).
func (r *trend) add(v uint64) bool {
	if len(r.vals) == 0 {
		return false
	}
	r.vals[r.next] = v
	r.next++
	if r.next == len(r.vals) {
		r.next, r.full = 0, true
	}
	return r.full
}

// span is the time the window covers.
func (r *trend) span(every time.Duration) time.Duration {
	return time.Duration(len(r.vals)-1) * every
}

// growing applies the rule: four parts in time order, each one's floor
// above the one before, and the last floor above the first by at least
// minRise and a tenth of the first.
func (r *trend) growing(minRise uint64) (from, to uint64, ok bool) {
	n := len(r.vals)
	var floors [4]uint64
	for p := range floors {
		lo, hi := p*n/4, (p+1)*n/4
		m := uint64(math.MaxUint64)
		for i := lo; i < hi; i++ {
			m = min(m, r.vals[(r.next+i)%n]) // r.next is the oldest
		}
		floors[p] = m
		if p > 0 && m <= floors[p-1] {
			return 0, 0, false
		}
	}
	from, to = floors[0], floors[3]
	rise := to - from
	return from, to, rise >= minRise && float64(rise) >= leakMinFraction*float64(from)
}

func roundDur(d time.Duration) time.Duration {
	if d >= time.Second {
		return d.Round(100 * time.Millisecond)
	}
	return d.Round(time.Millisecond)
}

func orUnknown(peer string) string {
	if peer == "" {
		return "(unknown)"
	}
	return peer
}

// bytesText writes n bytes in binary units: "64.0 MiB".
func bytesText(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit && exp < 5; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// parseStatm reads the resident pages, statm's second field ("size
// resident shared text lib data dt"), as bytes.
func parseStatm(b []byte, page uint64) (uint64, bool) {
	i := 0
	for i < len(b) && b[i] != ' ' {
		i++
	}
	i++
	var pages uint64
	digits := 0
	for ; i < len(b) && b[i] >= '0' && b[i] <= '9'; i++ {
		pages = pages*10 + uint64(b[i]-'0')
		digits++
	}
	return pages * page, digits > 0
}
