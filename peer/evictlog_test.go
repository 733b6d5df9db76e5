package peer

import (
	"errors"
	"fmt"
	"io"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/tetherrpc/tether/liveness"
	"github.com/tetherrpc/tether/rpc"
)

// fakeFoldClock is a foldClock that moves only when told; due timers run
// on the goroutine that moves it.
type fakeFoldClock struct {
	mu     sync.Mutex
	now    time.Time
	timers []*fakeFoldTimer
}

type fakeFoldTimer struct {
	at   time.Time
	f    func()
	done bool // fired or stopped
}

func newFakeFoldClock() *fakeFoldClock {
	return &fakeFoldClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
}

func (c *fakeFoldClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeFoldClock) AfterFunc(d time.Duration, f func()) func() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &fakeFoldTimer{at: c.now.Add(d), f: f}
	c.timers = append(c.timers, t)
	return func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		if t.done {
			return false
		}
		t.done = true
		return true
	}
}

// advance moves the clock by d, running each timer that falls due.
func (c *fakeFoldClock) advance(d time.Duration) {
	c.mu.Lock()
	end := c.now.Add(d)
	c.mu.Unlock()
	for {
		c.mu.Lock()
		var next *fakeFoldTimer
		for _, t := range c.timers {
			if !t.done && !t.at.After(end) && (next == nil || t.at.Before(next.at)) {
				next = t
			}
		}
		if next == nil {
			c.now = end
			c.mu.Unlock()
			return
		}
		next.done = true
		if next.at.After(c.now) {
			c.now = next.at
		}
		c.mu.Unlock()
		next.f()
	}
}

// armed counts timers neither fired nor stopped.
func (c *fakeFoldClock) armed() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, t := range c.timers {
		if !t.done {
			n++
		}
	}
	return n
}

func testFold(mass bool) (*fold, *fakeFoldClock, *observer.ObservedLogs) {
	core, logs := observer.New(zapcore.DebugLevel)
	clock := newFakeFoldClock()
	return newFold(zap.New(core), zapcore.WarnLevel, "peers evicted", clock, mass), clock, logs
}

// The first evictions of a burst are logged singly; the rest make one
// summary once the burst has been quiet for foldQuiet, with how many, the
// causes, a sample of IDs and the span; a mass failure marks one incident.
func TestFoldMassFailure(t *testing.T) {
	f, clock, logs := testFold(true)
	const peers, evicted = 10_000, 2_000
	singles := 0
	for i := range evicted {
		class := "silent"
		if i%4 == 0 {
			class = "unanswered"
		}
		if f.single(clock.Now(), ID(fmt.Sprintf("p%05d", i)), class, 2, peers-i) {
			singles++
		}
		clock.advance(100 * time.Microsecond) // 0.2 s in all
	}
	if singles != foldSingles {
		t.Fatalf("%d evictions logged singly, want %d", singles, foldSingles)
	}
	if n := logs.Len(); n != 0 {
		t.Fatalf("a summary before the burst went quiet: %v", logs.All())
	}
	clock.advance(foldQuiet - time.Millisecond)
	if n := logs.Len(); n != 0 {
		t.Fatalf("a summary before the burst went quiet: %v", logs.All())
	}
	clock.advance(time.Millisecond)
	all := logs.TakeAll()
	if len(all) != 1 {
		t.Fatalf("%d summaries, want 1: %v", len(all), all)
	}
	s := all[0]
	m := s.ContextMap()
	folded := evicted - foldSingles
	if s.Level != zapcore.WarnLevel || s.Message != "peers evicted" ||
		m["count"] != int64(folded) || m["calls_cancelled"] != int64(2*folded) ||
		m["peers_omitted"] != int64(folded-foldSample) || m[incidentKey] != true {
		t.Fatalf("summary %s %v", s.Message, m)
	}
	causes := m["causes"].(map[string]any)
	// Of the three logged singly, the first was unanswered, two silent.
	if fmt.Sprint(causes) != fmt.Sprint(map[string]int{"silent": 1500 - 2, "unanswered": 500 - 1}) {
		t.Fatalf("causes %v", causes)
	}
	if ids := m["peers"].([]any); len(ids) != foldSample || ids[0] != "p00003" {
		t.Fatalf("sample %v", ids)
	}
	if span := m["last"].(time.Time).Sub(m["first"].(time.Time)); span < 190*time.Millisecond || span > 200*time.Millisecond {
		t.Fatalf("span %v", span)
	}
	if clock.armed() != 0 {
		t.Fatal("a timer left armed after the summary")
	}
	// The burst is over: the next eviction gets a line of its own.
	if !f.single(clock.Now(), "late", "silent", 0, peers-evicted) {
		t.Fatal("the first eviction after a quiet period was folded")
	}
	f.close()
	if logs.Len() != 0 {
		t.Fatalf("close wrote %v", logs.All())
	}
}

// A storm that goes on is summarized every foldMaxSpan; every eviction is
// in exactly one line, and only the first summary opens an incident.
func TestFoldLongStorm(t *testing.T) {
	f, clock, logs := testFold(true)
	const total = 250 // one every 100 ms: 25 s
	singles := 0
	for i := range total {
		if f.single(clock.Now(), ID(fmt.Sprint(i)), "silent", 0, 1000) {
			singles++
		}
		clock.advance(100 * time.Millisecond)
	}
	clock.advance(foldQuiet)
	sum, incidents := singles, 0
	lines := logs.AllUntimed()
	for _, e := range lines {
		m := e.ContextMap()
		sum += int(m["count"].(int64))
		if m[incidentKey] == true {
			incidents++
		}
		if span := m["span"].(time.Duration); span > foldMaxSpan {
			t.Errorf("a summary spans %v", span)
		}
	}
	if sum != total || incidents != 1 || len(lines) != 3 {
		t.Fatalf("%d singles and %d summaries account for %d of %d evictions; %d incidents", singles, len(lines), sum, total, incidents)
	}
	f.close()
}

// Evictions a quiet period apart are each logged singly, however many.
func TestFoldSeparateEvictions(t *testing.T) {
	f, clock, logs := testFold(true)
	for i := range 10 {
		if !f.single(clock.Now(), ID(fmt.Sprint(i)), "silent", 0, 10) {
			t.Fatalf("eviction %d folded", i)
		}
		clock.advance(foldQuiet)
	}
	f.close()
	if logs.Len() != 0 {
		t.Fatalf("summaries %v", logs.All())
	}
}

// A summary still pending at close is written then, and the fold leaves
// no timer behind; a small burst in a large registry opens no incident.
func TestFoldCloseWritesPending(t *testing.T) {
	f, clock, logs := testFold(true)
	for i := range 50 {
		f.single(clock.Now(), ID(fmt.Sprint(i)), "hung", 1, 10_000)
	}
	if clock.armed() != 1 {
		t.Fatalf("%d timers armed, want 1", clock.armed())
	}
	f.close()
	if clock.armed() != 0 {
		t.Fatal("close left a timer armed")
	}
	all := logs.TakeAll()
	if len(all) != 1 || all[0].ContextMap()["count"] != int64(50-foldSingles) {
		t.Fatalf("after close: %v", all)
	}
	if _, ok := all[0].ContextMap()[incidentKey]; ok {
		t.Fatal("50 of 10,000 peers opened an incident")
	}
	if !f.single(clock.Now(), "after", "hung", 0, 10) {
		t.Fatal("folded after close")
	}
	clock.advance(time.Minute)
	if logs.Len() != 0 {
		t.Fatalf("a summary after close: %v", logs.All())
	}
}

// A few peers of a small registry flapping for long, a burst of hundreds
// of evictions, are not a mass failure: no incident.
func TestFoldFlappingIsNoIncident(t *testing.T) {
	f, clock, logs := testFold(true)
	for i := range 500 {
		f.single(clock.Now(), ID(fmt.Sprint(i%5)), "unanswered", 0, 10)
		clock.advance(200 * time.Millisecond)
	}
	clock.advance(foldQuiet)
	f.close()
	for _, e := range logs.AllUntimed() {
		if _, ok := e.ContextMap()[incidentKey]; ok {
			t.Fatalf("flapping opened an incident: %v", e.ContextMap())
		}
	}
	if logs.Len() != 10 { // 100 s of storm, a summary every 10 s
		t.Fatalf("%d summaries", logs.Len())
	}
}

// The disconnection fold never opens an incident, however many leave.
func TestFoldNoMass(t *testing.T) {
	f, clock, logs := testFold(false)
	for i := range 100 {
		f.single(clock.Now(), ID(fmt.Sprint(i)), "peer_left", 0, 100)
	}
	clock.advance(foldQuiet)
	f.close()
	all := logs.AllUntimed()
	if len(all) != 1 {
		t.Fatalf("%v", all)
	}
	if _, ok := all[0].ContextMap()[incidentKey]; ok {
		t.Fatal("goodbyes opened an incident")
	}
}

// A real timer fires the summary, and close waits for a timer that is
// running.
func TestFoldRealClock(t *testing.T) {
	log, logs, summary := observed()
	f := newFold(log, zapcore.WarnLevel, "peers evicted", realFoldClock{}, true)
	for i := range 20 {
		f.single(time.Now(), ID(fmt.Sprint(i)), "silent", 0, 20)
	}
	select {
	case <-summary:
	case <-time.After(foldQuiet + 10*time.Second):
		t.Fatal("no summary")
	}
	f.close()
	if all := logs.AllUntimed(); len(all) != 1 || all[0].ContextMap()["count"] != int64(20-foldSingles) {
		t.Fatalf("%v", all)
	}
}

func TestCauseClass(t *testing.T) {
	for _, c := range []struct {
		err  error
		want string
	}{
		{&liveness.Verdict{Kind: liveness.Silent}, "silent"},
		{&liveness.Verdict{Kind: liveness.Hung}, "hung"},
		{&liveness.Verdict{}, "unanswered"},
		{fmt.Errorf("x: %w", rpc.ErrProtocolViolation), "protocol_violation"},
		{rpc.ErrPeerLeft, "peer_left"},
		{rpc.ErrClosed, "closed"},
		{ErrReplaced, "replaced"},
		{io.EOF, "connection_closed"},
		{syscall.ECONNRESET, "connection_reset"},
		{syscall.ETIMEDOUT, "tcp_timeout"},
		{errors.New("operator"), "other"},
		{ErrEvicted, "other"},
	} {
		if got := CauseClass(c.err); got != c.want {
			t.Errorf("CauseClass(%v) = %q, want %q", c.err, got, c.want)
		}
	}
}
