package incident_test

import (
	"fmt"
	"slices"
	"sort"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zapcore"

	"github.com/tetherrpc/tether/incident"
)

// sunk is one entry as an inner core received it.
type sunk struct {
	ent    zapcore.Entry
	fields []zapcore.Field // context fields, then the entry's, copied
	seq    uint64
	notice bool // an "entries lost" notice (no seq field)
}

func (s sunk) field(key string) (zapcore.Field, bool) {
	for _, f := range s.fields {
		if f.Key == key {
			return f, true
		}
	}
	return zapcore.Field{}, false
}

// sink records what the cores made from it are given. Writes can be held
// at a gate, and can be made to fail.
type sink struct {
	mu      sync.Mutex
	entries []sunk
	gate    chan struct{} // if non-nil, Write waits until it is closed
	entered chan struct{} // gets a token (if room) each time Write starts
	delay   time.Duration // simulated slowness per Write
	fail    func(zapcore.Entry) error
	syncs   int
}

func newSink() *sink {
	return &sink{entered: make(chan struct{}, 1)}
}

// blocked returns a sink whose writes wait until release is called.
func blockedSink() (s *sink, release func()) {
	s = newSink()
	s.gate = make(chan struct{})
	var once sync.Once
	return s, func() { once.Do(func() { close(s.gate) }) }
}

func (s *sink) core(l zapcore.LevelEnabler) zapcore.Core { return &sinkCore{s: s, LevelEnabler: l} }

func (s *sink) all() []sunk {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.entries)
}

type sinkCore struct {
	zapcore.LevelEnabler
	s   *sink
	ctx []zapcore.Field
}

func (c *sinkCore) With(fields []zapcore.Field) zapcore.Core {
	return &sinkCore{LevelEnabler: c.LevelEnabler, s: c.s, ctx: append(slices.Clone(c.ctx), fields...)}
}

func (c *sinkCore) Check(ent zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.Enabled(ent.Level) {
		return ce.AddCore(ent, c)
	}
	return ce
}

func (c *sinkCore) Write(ent zapcore.Entry, fields []zapcore.Field) error {
	select {
	case c.s.entered <- struct{}{}:
	default:
	}
	if c.s.gate != nil {
		<-c.s.gate
	}
	if c.s.delay > 0 {
		time.Sleep(c.s.delay) // simulated slowness, not synchronisation
	}
	if c.s.fail != nil {
		if err := c.s.fail(ent); err != nil {
			return err
		}
	}
	e := sunk{ent: ent, fields: append(slices.Clone(c.ctx), fields...)}
	if f, ok := e.field(incident.SeqKey); ok {
		e.seq = uint64(f.Integer)
	} else if _, ok := e.field("lost"); ok {
		e.notice = true
	}
	c.s.mu.Lock()
	c.s.entries = append(c.s.entries, e)
	c.s.mu.Unlock()
	return nil
}

func (c *sinkCore) Sync() error {
	c.s.mu.Lock()
	c.s.syncs++
	c.s.mu.Unlock()
	return nil
}

// checkIdentity fails unless the accounting identity holds.
func checkIdentity(t testing.TB, st incident.AsyncStats) {
	t.Helper()
	if st.Enqueued != st.Written+st.Dropped+st.Queued {
		t.Fatalf("Enqueued %d != Written %d + Dropped %d + Queued %d", st.Enqueued, st.Written, st.Dropped, st.Queued)
	}
}

// checkSeqs checks what a sink saw against the final stats of a drained
// core: sequence numbers strictly increasing, the gaps exactly the drops,
// and the notices accounting for every gap.
func checkSeqs(t *testing.T, got []sunk, st incident.AsyncStats) {
	t.Helper()
	if st.Queued != 0 || st.Written+st.Dropped != st.Enqueued {
		t.Fatalf("not drained: %+v", st)
	}
	var last uint64
	seen := make(map[uint64]bool)
	var lost uint64
	type span struct{ a, b uint64 }
	var spans []span
	var notices uint64
	for _, e := range got {
		if e.notice {
			notices++
			n, _ := e.field("lost")
			a, _ := e.field("first_seq")
			b, _ := e.field("last_seq")
			if e.ent.Level != zapcore.WarnLevel {
				t.Errorf("notice level %v, want warn", e.ent.Level)
			}
			want := formatNotice(uint64(n.Integer), uint64(a.Integer), uint64(b.Integer))
			if e.ent.Message != want {
				t.Errorf("notice message %q, want %q", e.ent.Message, want)
			}
			lost += uint64(n.Integer)
			spans = append(spans, span{uint64(a.Integer), uint64(b.Integer)})
			continue
		}
		if e.seq <= last {
			t.Fatalf("seq %d after %d: not strictly increasing", e.seq, last)
		}
		last = e.seq
		seen[e.seq] = true
	}
	if uint64(len(seen)) != st.Written {
		t.Errorf("sink saw %d entries, Stats.Written %d", len(seen), st.Written)
	}
	if notices != st.Notices {
		t.Errorf("sink saw %d notices, Stats.Notices %d", notices, st.Notices)
	}
	if lost != st.Dropped {
		t.Errorf("notices report %d lost, Stats.Dropped %d", lost, st.Dropped)
	}
	var gaps uint64
	for seq := uint64(1); seq <= st.Enqueued; seq++ {
		if seen[seq] {
			continue
		}
		gaps++
		in := false
		for _, s := range spans {
			if s.a <= seq && seq <= s.b {
				in = true
				break
			}
		}
		if !in {
			t.Fatalf("seq %d missing but in no notice's range %v", seq, spans)
		}
	}
	if gaps != st.Dropped {
		t.Errorf("%d gaps in seq, Stats.Dropped %d", gaps, st.Dropped)
	}
}

func formatNotice(n, a, b uint64) string {
	return fmt.Sprintf("%d entries lost (seq %d..%d)", n, a, b)
}

// percentile returns the p-th percentile (0..1) of ds.
func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := int(p * float64(len(s)-1))
	return s[i]
}

// fakeClock is a Clock that moves only when told; timers fire, in order, on
// the goroutine that calls Advance.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	timers []*fakeTimer
}

type fakeTimer struct {
	c    *fakeClock
	at   time.Time
	f    func()
	done bool
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Date(2026, 11, 25, 14, 1, 2, 123_000_000, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) AfterFunc(d time.Duration, f func()) incident.Timer {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &fakeTimer{c: c, at: c.now.Add(d), f: f}
	c.timers = append(c.timers, t)
	return t
}

func (t *fakeTimer) Stop() bool {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	was := !t.done
	t.done = true
	return was
}

// Advance moves the clock and runs the timers that came due.
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	var due []*fakeTimer
	kept := c.timers[:0]
	for _, t := range c.timers {
		switch {
		case t.done:
		case !t.at.After(c.now):
			t.done = true
			due = append(due, t)
		default:
			kept = append(kept, t)
		}
	}
	c.timers = kept
	c.mu.Unlock()
	sort.SliceStable(due, func(i, j int) bool { return due[i].at.Before(due[j].at) })
	for _, t := range due {
		t.f()
	}
}

// Set moves the clock without running any timer, as if timers were late.
func (c *fakeClock) Set(now time.Time) {
	c.mu.Lock()
	c.now = now
	c.mu.Unlock()
}
