package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/tetherrpc/tether/peer"
)

// events records what the client's registry tells its subscribers.
type events struct {
	mu      sync.Mutex
	evs     []peer.Event
	closed  bool          // the run is over: the closing goodbyes are not recorded
	changed chan struct{} // signalled on every event
	hook    func(peer.Event)
}

func newEvents(hook func(peer.Event)) *events {
	return &events{changed: make(chan struct{}, 1), hook: hook}
}

// add is the subscriber. It runs on the registry's event goroutine.
func (e *events) add(ev peer.Event) {
	ev.Peer = nil // keep no dead reference alive
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return
	}
	e.evs = append(e.evs, ev)
	e.mu.Unlock()
	if e.hook != nil {
		e.hook(ev)
	}
	select {
	case e.changed <- struct{}{}:
	default:
	}
}

// snapshot returns the events so far.
func (e *events) snapshot() []peer.Event {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]peer.Event(nil), e.evs...)
}

// stop ends the recording.
func (e *events) stop() []peer.Event {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.closed = true
	return e.evs
}

// waitFor waits until ok holds for the events, for at most d.
func (e *events) waitFor(ctx context.Context, d time.Duration, ok func([]peer.Event) bool) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	for {
		if ok(e.snapshot()) {
			return true
		}
		select {
		case <-e.changed:
		case <-t.C:
			return ok(e.snapshot())
		case <-ctx.Done():
			return false
		}
	}
}

// find returns the first event after t matching kind and id.
func find(evs []peer.Event, kind peer.EventKind, id peer.ID, after time.Time) (peer.Event, bool) {
	for _, ev := range evs {
		if ev.Kind == kind && ev.ID == id && !ev.Time.Before(after) {
			return ev, true
		}
	}
	return peer.Event{}, false
}

// sample is the state of the run at one instant, for the timeline picture.
type sample struct {
	t        time.Duration // since the grid was up
	inFlight []int         // the client's calls awaiting each storage node
	held     int           // tether calls held outstanding, not yet failed
	reads    int64         // reads finished so far, ok or failed
	failed   int64
	baseline int           // plain yamux calls in flight; -1 without -baseline
	stall    time.Duration // the machine's CPU pressure total (see cpuStall); -1 if unknown
}

// sampleEvery is the timeline's resolution.
const sampleEvery = 50 * time.Millisecond

// sampler records samples and draws the progress line until stopped.
type sampler struct {
	s       *scenario
	samples []sample
	stopped chan struct{}
	done    chan struct{}
	lastLen int
}

func startSampler(s *scenario) *sampler {
	sp := &sampler{s: s, stopped: make(chan struct{}), done: make(chan struct{})}
	go sp.loop()
	return sp
}

func (sp *sampler) loop() {
	defer close(sp.done)
	tick := time.NewTicker(sampleEvery)
	defer tick.Stop()
	every := time.Second
	if sp.s.cfg.Live {
		every = 100 * time.Millisecond
	}
	var lastPrint time.Time
	var buf []int
	for {
		select {
		case <-sp.stopped:
			sp.print(true)
			return
		case <-tick.C:
		}
		buf = sp.s.g.inFlight(buf[:0])
		smp := sample{
			t:        time.Since(sp.s.t0),
			inFlight: append([]int(nil), buf...),
			reads:    sp.s.rd.ok.Load() + sp.s.rd.failed.Load(),
			failed:   sp.s.rd.failed.Load(),
			baseline: -1,
		}
		if st, ok := cpuStall(); ok {
			smp.stall = st
		} else {
			smp.stall = -1
		}
		if h := sp.s.held.Load(); h != nil {
			smp.held = int(h.inflight.Load())
		}
		if sp.s.bl != nil {
			smp.baseline = int(sp.s.bl.inflight.Load())
		}
		sp.samples = append(sp.samples, smp)
		if time.Since(lastPrint) >= every-sampleEvery/2 {
			lastPrint = time.Now()
			sp.print(false)
		}
	}
}

// print draws the progress line: in place on a terminal, else one line.
func (sp *sampler) print(final bool) {
	w := sp.s.cfg.Progress
	if w == nil || len(sp.samples) == 0 {
		return
	}
	line := sp.line()
	if sp.s.cfg.Live {
		pad := max(sp.lastLen-len(line), 0)
		sp.lastLen = len(line)
		fmt.Fprintf(w, "\r%s%s", line, strings.Repeat(" ", pad))
		if final {
			io.WriteString(w, "\n")
		}
		return
	}
	if !final {
		fmt.Fprintln(w, line)
	}
}

// line is the progress line for the latest sample.
func (sp *sampler) line() string {
	s := sp.s
	last := sp.samples[len(sp.samples)-1]
	rate := int64(0)
	// Reads a second, over the last second of samples.
	back := min(len(sp.samples)-1, int(time.Second/sampleEvery))
	if back > 0 {
		prev := sp.samples[len(sp.samples)-1-back]
		if dt := last.t - prev.t; dt > 0 {
			rate = int64(float64(last.reads-prev.reads) / dt.Seconds())
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%6.1fs  %s", last.t.Seconds(), s.state())
	if s.cfg.Outstanding > 0 && s.held.Load() != nil {
		fmt.Fprintf(&b, " | held %d/%d", last.held, s.cfg.Outstanding)
	}
	fmt.Fprintf(&b, " | reads %d ok, %d failed, %d/s", last.reads-last.failed, last.failed, rate)
	if last.baseline >= 0 {
		fmt.Fprintf(&b, " | plain yamux: %s", s.baselineState(last.baseline))
	}
	return b.String()
}
