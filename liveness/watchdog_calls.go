package liveness

import (
	"math/rand/v2"
	"sync/atomic"
)

// The call table: segments of slots, one cache line each, so that calls on
// different cores never share a line. No shared counter, no lock, no
// clock: End frees its slot with one compare-and-swap and leaves it in a
// sync.Pool, per P, and Begin claims the slot its P freed last (its line is
// likely still in this core's cache), or else a free slot at a random
// place. The pool holds hints only (it may drop them, or hand out a slot
// another Begin took since): the slot's state word decides. The sampler
// scans every slot with atomic loads, and doubles the table when more than
// half of it is in use, so that a random probe finds a free slot at once.
// The table never shrinks: its size follows the peak of calls in flight,
// 64 to 256 bytes a call.
//
// A slot's state word holds a generation (how many calls the slot has
// begun) above three bits of phase:
//
//	free ──Begin──▶ claimed ──Begin──▶ running ──End──▶ free
//	                                   running ◀─sampler─▶ pinned
//	                                   pinned ──End──▶ ended ──sampler──▶ free
//
// method and peer are plain strings: Begin writes them while the slot is
// claimed, and the sampler reads them only while it has the slot pinned,
// which End never waits for (it marks the slot ended and the sampler frees
// it). The generation makes a second End of the same Call harmless.
const (
	phaseFree uint64 = iota
	phaseClaimed
	phaseRunning
	phasePinned
	phaseEnded // End while pinned: the sampler frees it
	phaseBits  = 3
	phaseMask  = 1<<phaseBits - 1

	segSlots   = 256 // 16 KiB a segment
	probeLen   = 8   // slots tried after each random pick
	minWindows = 4   // windows tried, at least one per segment, before Begin grows the table
)

type slot struct {
	state        atomic.Uint64
	start        atomic.Int64 // the tick when the call began, ns since epoch
	method, peer string
	w            *Watchdog
	_            [8]byte // to 64 bytes
}

type segment [segSlots]slot

type callTable struct{ segs []*segment }

func newCallTable(w *Watchdog, old *callTable, add int) *callTable {
	t := &callTable{segs: make([]*segment, 0, len(old.segsOrNil())+add)}
	t.segs = append(t.segs, old.segsOrNil()...)
	for range add {
		s := new(segment)
		for i := range s {
			s[i].w = w
		}
		t.segs = append(t.segs, s)
	}
	return t
}

func (t *callTable) segsOrNil() []*segment {
	if t == nil {
		return nil
	}
	return t.segs
}

func (t *callTable) slots() int { return len(t.segs) * segSlots }

// Call is one handler call in progress, from Begin to End. The zero Call's
// End does nothing.
type Call struct {
	s   *slot
	gen uint64
}

// Begin records the start of a handler call for method, serving peer. Call
// End when the handler returns, whatever its outcome:
//
//	c := w.Begin(method, peer)
//	defer c.End()
//
// It takes no lock and allocates nothing. A nil *Watchdog returns a Call
// whose End does nothing.
func (w *Watchdog) Begin(method, peer string) Call {
	if w == nil {
		return Call{}
	}
	tick := w.tick.Load()
	// First the slot this P freed last: its line is likely in this core's
	// cache. The pool holds hints only: the slot's state word decides.
	if s, _ := w.free.Get().(*slot); s != nil {
		st := s.state.Load()
		if gen := st>>phaseBits + 1; st&phaseMask == phaseFree && s.state.CompareAndSwap(st, gen<<phaseBits|phaseClaimed) {
			return s.begin(gen, tick, method, peer)
		}
	}
	for {
		tab := w.tab.Load()
		n := uint64(len(tab.segs))
		r := rand.Uint64()
		seg := (r >> 32) * n >> 32
		// A window of slots at a random place; if all are busy, a window in
		// the next segment, and so on through every segment.
		for k := range max(n, minWindows) {
			if k > 0 {
				r = rand.Uint64()
				if seg++; seg == n {
					seg = 0
				}
			}
			slots := tab.segs[seg]
			for i := range uint64(probeLen) {
				s := &slots[(r+i)%segSlots]
				st := s.state.Load()
				if st&phaseMask != phaseFree {
					continue
				}
				gen := st>>phaseBits + 1
				if !s.state.CompareAndSwap(st, gen<<phaseBits|phaseClaimed) {
					continue
				}
				return s.begin(gen, tick, method, peer)
			}
		}
		w.grow(tab) // nearly full: the sampler did not grow it in time
	}
}

// begin fills in a slot claimed for call gen, and starts the call.
func (s *slot) begin(gen uint64, tick int64, method, peer string) Call {
	s.method, s.peer = method, peer
	s.start.Store(tick)
	s.state.Store(gen<<phaseBits | phaseRunning)
	return Call{s: s, gen: gen}
}

// grow doubles the table, unless it grew since tab was loaded.
func (w *Watchdog) grow(tab *callTable) {
	w.growMu.Lock()
	if w.tab.Load() == tab {
		w.tab.Store(newCallTable(w, tab, len(tab.segs)))
	}
	w.growMu.Unlock()
}

// End records that the call has returned. A second End is harmless.
func (c Call) End() {
	s := c.s
	if s == nil {
		return
	}
	if s.state.CompareAndSwap(c.gen<<phaseBits|phaseRunning, c.gen<<phaseBits|phaseFree) {
		s.w.free.Put(s)
	} else {
		s.endPinned(c.gen)
	}
	if p := &s.w.progress; !p.Load() {
		p.Store(true)
	}
}

// endPinned ends a call whose slot the sampler holds (or did hold).
func (s *slot) endPinned(gen uint64) {
	for {
		switch st := s.state.Load(); st {
		case gen<<phaseBits | phaseRunning:
			if s.state.CompareAndSwap(st, gen<<phaseBits|phaseFree) {
				return
			}
		case gen<<phaseBits | phasePinned:
			if s.state.CompareAndSwap(st, gen<<phaseBits|phaseEnded) {
				return
			}
		default: // ended already
			return
		}
	}
}

// running reports whether the call has yet to end.
func (c Call) running() bool {
	st := c.s.state.Load()
	return st>>phaseBits == c.gen && (st&phaseMask == phaseRunning || st&phaseMask == phasePinned)
}

// describe reads a running call's method and peer, with its slot pinned.
// ok is false if the call has ended.
func (c Call) describe() (method, peer string, ok bool) {
	if !c.pin() {
		return "", "", false
	}
	method, peer = c.s.method, c.s.peer
	c.unpin()
	return method, peer, true
}

// pin holds a running call's slot so that its strings stay put; End does
// not wait for it.
func (c Call) pin() bool {
	return c.s.state.CompareAndSwap(c.gen<<phaseBits|phaseRunning, c.gen<<phaseBits|phasePinned)
}

// unpin releases a pinned slot, and frees it if the call ended meanwhile.
func (c Call) unpin() {
	if !c.s.state.CompareAndSwap(c.gen<<phaseBits|phasePinned, c.gen<<phaseBits|phaseRunning) {
		c.s.state.Store(c.gen<<phaseBits | phaseFree)
	}
}

// counts sums calls begun and ended over the table: each slot has begun
// gen calls and ended all of them unless one is still in flight.
func (t *callTable) counts() (begun, ended uint64) {
	for _, seg := range t.segs {
		for i := range seg {
			st := seg[i].state.Load()
			gen := st >> phaseBits
			begun += gen
			switch st & phaseMask {
			case phaseFree, phaseEnded:
				ended += gen
			default:
				ended += gen - 1
			}
		}
	}
	return begun, ended
}

// callScan is what one scan of the table found.
type callScan struct {
	inFlight  int
	stuck     int                  // calls that certainly ran longer than HangAfter
	newStuck  int                  // of which those that crossed it since the last sample
	oldest    [maxListed]stuckCall // the oldest stuck calls, oldest first
	numOldest int
}

// maxListed is how many stuck calls get a Finding of their own.
const maxListed = 8

type stuckCall struct {
	c     Call
	start int64
}

// scan counts the calls in flight and finds those that began at or before
// cutoff (stuck now), of which those after prevCutoff crossed the bound
// since the last sample.
func (t *callTable) scan(cutoff, prevCutoff int64, out *callScan) {
	*out = callScan{}
	for _, seg := range t.segs {
		for i := range seg {
			s := &seg[i]
			st := s.state.Load()
			switch st & phaseMask {
			case phaseFree, phaseEnded:
				continue
			case phaseClaimed:
				out.inFlight++
				continue
			}
			out.inFlight++
			start := s.start.Load()
			if start > cutoff || s.state.Load() != st { // young, or a new call since
				continue
			}
			out.stuck++
			if start > prevCutoff {
				out.newStuck++
			}
			out.insert(stuckCall{Call{s, st >> phaseBits}, start})
		}
	}
}

func (out *callScan) insert(c stuckCall) {
	n := out.numOldest
	if n == maxListed {
		if c.start >= out.oldest[n-1].start {
			return
		}
		n--
	}
	i := n
	for i > 0 && out.oldest[i-1].start > c.start {
		out.oldest[i] = out.oldest[i-1]
		i--
	}
	out.oldest[i] = c
	out.numOldest = n + 1
}
