package liveness

import (
	"errors"
	"sync"
	"testing"
	"time"
)

// fakeClock is a Clock that moves only when told.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	timers []*fakeTimer
}

type fakeTimer struct {
	c      *fakeClock
	ch     chan time.Time
	at     time.Time
	active bool
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) NewTimer(d time.Duration) Timer {
	t := &fakeTimer{c: c, ch: make(chan time.Time, 1)}
	c.mu.Lock()
	c.timers = append(c.timers, t)
	c.mu.Unlock()
	t.Reset(d)
	return t
}

func (t *fakeTimer) C() <-chan time.Time { return t.ch }

func (t *fakeTimer) Reset(d time.Duration) {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	select {
	case <-t.ch:
	default:
	}
	t.at, t.active = t.c.now.Add(d), true
	t.c.fireLocked()
}

func (t *fakeTimer) Stop() {
	t.c.mu.Lock()
	t.active = false
	t.c.mu.Unlock()
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.fireLocked()
	c.mu.Unlock()
}

func (c *fakeClock) fireLocked() {
	for _, t := range c.timers {
		if t.active && !t.at.After(c.now) {
			t.active = false
			select {
			case t.ch <- c.now:
			default:
			}
		}
	}
}

// fakeTarget records probes; the test answers them.
type fakeTarget struct {
	mu       sync.Mutex
	lastRecv time.Time
	probes   chan func(time.Duration)
}

func (f *fakeTarget) LastReceived() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.lastRecv
}

func (f *fakeTarget) Probe(fn func(time.Duration)) error {
	f.probes <- fn
	return nil
}

func (f *fakeTarget) answer(fn func(time.Duration), at time.Time) {
	fn(time.Millisecond)
	f.mu.Lock()
	f.lastRecv = at
	f.mu.Unlock()
}

func nextProbe(t *testing.T, f *fakeTarget) func(time.Duration) {
	t.Helper()
	select {
	case fn := <-f.probes:
		return fn
	case <-time.After(5 * time.Second):
		t.Fatal("no probe")
	}
	return nil
}

// The monitor, on a fake clock: a learning probe at once, a probe per
// quiet interval, suspicion, then a verdict for a peer that stops
// answering; no verdict while it answers.
func TestMonitorOnFakeClock(t *testing.T) {
	cfg := Local()
	clk := &fakeClock{now: t0}
	m, err := NewMonitor(cfg, clk)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	f := &fakeTarget{lastRecv: t0, probes: make(chan func(time.Duration), 100)}
	suspects := make(chan bool, 10)
	dead := make(chan *Verdict, 1)
	w := m.Watch(f, nil, Events{Suspect: func(s bool) { suspects <- s }, Dead: func(v *Verdict) { dead <- v }})
	defer w.Stop()

	f.answer(nextProbe(t, f), clk.Now()) // the learning probe, at once
	for range 5 {                        // healthy: one probe per interval, answered
		clk.Advance(cfg.Interval)
		f.answer(nextProbe(t, f), clk.Now())
	}
	// Silent from now on: it is probed again and again, then convicted.
	silentFrom := clk.Now()
	var v *Verdict
	for v == nil {
		clk.Advance(cfg.RetryInterval)
		select {
		case <-f.probes:
		case v = <-dead:
		case <-time.After(100 * time.Millisecond): // a check that only scheduled the next
		}
		if clk.Now().Sub(silentFrom) > time.Minute {
			t.Fatal("never convicted")
		}
	}
	if v.Kind != Unanswered || !errors.Is(v, ErrMissedHeartbeats) {
		t.Fatalf("verdict %v", v)
	}
	took := clk.Now().Sub(silentFrom)
	if took < cfg.DeadAfter || took > cfg.Interval+cfg.DeadAfter+2*cfg.RetryInterval {
		t.Fatalf("convicted %v after silence began", took)
	}
	if s := <-suspects; !s {
		t.Fatal("not suspected before the verdict")
	}
	if st := m.Stats(); st.Verdicts != 1 || st.Watched != 0 {
		t.Fatalf("stats %+v", st)
	}
}

// Kick starts a round at once on a quiet (but not yet idle) connection.
func TestMonitorKick(t *testing.T) {
	cfg := Local()
	clk := &fakeClock{now: t0}
	m, _ := NewMonitor(cfg, clk)
	defer m.Close()
	f := &fakeTarget{lastRecv: t0, probes: make(chan func(time.Duration), 100)}
	w := m.Watch(f, nil, Events{})
	defer w.Stop()
	f.answer(nextProbe(t, f), clk.Now())
	clk.Advance(cfg.Interval / 2)
	w.Kick()
	nextProbe(t, f) // before the interval is up
}

func TestMonitorStopsWatching(t *testing.T) {
	clk := &fakeClock{now: t0}
	m, _ := NewMonitor(Local(), clk)
	defer m.Close()
	f := &fakeTarget{lastRecv: t0, probes: make(chan func(time.Duration), 100)}
	w := m.Watch(f, nil, Events{Dead: func(*Verdict) { t.Error("a verdict after Stop") }})
	nextProbe(t, f)
	w.Stop()
	if st := m.Stats(); st.Watched != 0 {
		t.Fatalf("still watched: %+v", st)
	}
	clk.Advance(time.Hour)
	select {
	case <-f.probes:
		t.Fatal("probed after Stop")
	case <-time.After(50 * time.Millisecond):
	}
}
