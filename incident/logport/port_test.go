package logport_test

import (
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/tetherrpc/tether/incident"
	"github.com/tetherrpc/tether/incident/logport"
	"github.com/tetherrpc/tether/internal/ttest"
	"github.com/tetherrpc/tether/rpc"
)

// A subscriber that keeps up gets every entry, in order, with contiguous
// sequence numbers, and the JSON says what was logged.
func TestFastSubscriberInOrder(t *testing.T) {
	end := newEnded()
	e := newEnv(t, end.option())
	c, _ := e.connect()
	x := subscribe(t, logport.StreamFunc(c.OpenStream))

	const n = 5000
	go func() {
		for i := range n {
			e.log.Info("hello", zap.Int("i", i), zap.String("peer", "p1"))
		}
	}()
	for i := range n {
		it := x.next(t)
		if it.loss.First != 0 {
			t.Fatalf("entry %d: a loss %v from a subscriber that keeps up", i, it.loss)
		}
		if it.seq != uint64(i+1) {
			t.Fatalf("entry %d has seq %d", i, it.seq)
		}
		m := decode(t, it.json)
		if m["msg"] != "hello" || m["i"] != float64(i) || m["port_seq"] != float64(it.seq) || m["level"] != "info" {
			t.Fatalf("entry %d: %s", i, it.json)
		}
		if !strings.HasPrefix(it.json, `{"port_seq":`) || !strings.HasSuffix(it.json, "}\n") {
			t.Fatalf("entry %d: %q", i, it.json)
		}
	}
	if err := x.stop(); !errors.Is(err, context.Canceled) {
		t.Fatalf("Subscribe returned %v after its context was cancelled", err)
	}
	if x.pos.Seq != n {
		t.Fatalf("position %d, want %d", x.pos.Seq, n)
	}
	fin := end.next(t)
	if fin.st.Produced != n || fin.st.Delivered != n || fin.st.Dropped != 0 || fin.st.Queued != 0 {
		t.Fatalf("final %+v", fin.st)
	}
	if fin.err != nil && !errors.Is(fin.err, context.Canceled) { // unsubscribed: nil, or cancelled
		t.Fatalf("the port says the subscription ended with %v", fin.err)
	}
	st := e.port.Stats()
	checkStats(t, st)
	if st.Subscribers != 0 || st.MemoryBytes != 0 || st.HeldBytes != 0 {
		t.Fatalf("after the only subscriber left: %+v", st)
	}
}

// Two subscribers on two connections each get everything; entries are held
// once for both.
func TestTwoSubscribers(t *testing.T) {
	e := newEnv(t)
	c1, _ := e.connect()
	c2, _ := e.connect()
	x1 := subscribe(t, logport.StreamFunc(c1.OpenStream))
	x2 := subscribe(t, logport.StreamFunc(c2.OpenStream))
	const n = 2000
	go func() {
		for i := range n {
			e.log.Debug("d", zap.Int("i", i))
		}
	}()
	for i := range n {
		for _, x := range []*sub{x1, x2} {
			if it := x.next(t); it.seq != uint64(i+1) {
				t.Fatalf("entry %d: %+v", i, it)
			}
		}
	}
}

// A subscriber that stalls costs the producer no more than the budget;
// what it misses is dropped and counted, and when it resumes it gets one
// loss notice for exactly the range dropped, then the entries that follow.
// Produced == Delivered + Dropped, exactly.
func TestStalledSubscriber(t *testing.T) {
	end := newEnded()
	e := newEnv(t, logport.WithBudget(logport.MinBudget), end.option())
	c, _ := e.connect()
	const window = 16
	x := subscribe(t, logport.StreamFunc(c.OpenStream), logport.Window(window))

	// The subscriber takes the first entry and then stalls in its
	// function: it returns no credit, so the port may send it no more than
	// the window.
	e.log.Info("first")
	if it := x.next(t); it.seq != 1 {
		t.Fatalf("first: %+v", it)
	}
	pad := strings.Repeat("x", 200)
	const n = 20000 // about 5 MB: ten budgets
	for i := 2; i <= n; i++ {
		e.log.Info("entry", zap.Int("i", i), zap.String("pad", pad))
		if i%500 == 0 {
			st := e.port.Stats()
			checkStats(t, st)
		}
	}
	st := e.port.Stats()
	checkStats(t, st)
	if st.Dropped == 0 {
		t.Fatalf("nothing dropped: %+v", st)
	}
	subs := e.port.Subscribers()
	if len(subs) != 1 {
		t.Fatalf("%d subscribers", len(subs))
	}
	s0 := subs[0]
	if s0.Produced != n || s0.Produced != s0.Delivered+s0.Dropped+s0.Queued {
		t.Fatalf("subscriber: %+v", s0)
	}
	if s0.Delivered > window {
		t.Fatalf("delivered %d entries to a subscriber that granted %d", s0.Delivered, window)
	}
	t.Logf("stalled: %d produced, %d delivered, %d dropped, %d queued (%d bytes), port memory %d of %d",
		s0.Produced, s0.Delivered, s0.Dropped, s0.Queued, s0.QueuedBytes, st.MemoryBytes, st.Budget)

	// Resume: the window's entries (sent before the stall), then one loss
	// notice for exactly what was dropped, then the rest.
	var seen, lost uint64 = 1, 0
	want := uint64(2)
	for want <= n {
		it := x.next(t)
		if it.loss.First != 0 {
			if it.loss.First != want {
				t.Fatalf("loss %v, expected it to start at %d", it.loss, want)
			}
			if want != s0.Delivered+1 || it.loss.N() != s0.Dropped {
				t.Fatalf("loss %v; the port had delivered %d and dropped %d", it.loss, s0.Delivered, s0.Dropped)
			}
			lost += it.loss.N()
			want = it.loss.Last + 1
			continue
		}
		if it.seq != want {
			t.Fatalf("entry %d, expected %d", it.seq, want)
		}
		seen++
		want++
	}
	if seen+lost != n {
		t.Fatalf("seen %d + lost %d != %d", seen, lost, n)
	}
	x.stop()
	fin := end.next(t)
	if fin.st.Produced != n || fin.st.Delivered != seen || fin.st.Dropped != lost || fin.st.Queued != 0 || fin.st.Losses != 1 {
		t.Fatalf("final %+v; the subscriber saw %d and was told of %d lost", fin.st, seen, lost)
	}
}

// A subscriber whose connection vanishes mid-stream is cleaned up: its
// subscription ends, what it had queued is dropped and freed, and the port
// holds nothing more.
func TestSubscriberVanishes(t *testing.T) {
	for _, how := range []string{"client closes", "server evicts"} {
		t.Run(how, func(t *testing.T) {
			end := newEnded()
			e := newEnv(t, end.option())
			c, s := e.connect()
			x := subscribe(t, logport.StreamFunc(c.OpenStream), logport.Window(4))
			for i := range 1000 {
				e.log.Info("entry", zap.Int("i", i))
			}
			x.next(t) // then stall, with entries queued
			if st := e.port.Stats(); st.Queued == 0 || st.HeldBytes == 0 {
				t.Fatalf("nothing queued: %+v", st)
			}
			if how == "client closes" {
				c.Close()
			} else {
				s.Abort(errors.New("evicted by the test"))
			}
			if err := x.wait(t); !errors.Is(err, rpc.ErrDeadReference) {
				t.Fatalf("Subscribe returned %v", err)
			}
			fin := end.next(t)
			if fin.st.Produced != 1000 || fin.st.Delivered+fin.st.Dropped != 1000 || fin.st.Queued != 0 {
				t.Fatalf("final %+v", fin.st)
			}
			// A clean close may reach the stream as its end before the
			// connection's death: then it is an unsubscription (nil).
			if !errors.Is(fin.err, rpc.ErrDeadReference) && !errors.Is(fin.err, context.Canceled) &&
				(fin.err != nil || how != "client closes") {
				t.Fatalf("the port says the subscription ended with %v", fin.err)
			}
			st := e.port.Stats()
			checkStats(t, st)
			if st.Subscribers != 0 || st.MemoryBytes != 0 || st.HeldBytes != 0 || st.Queued != 0 {
				t.Fatalf("after the subscriber vanished: %+v", st)
			}
			e.log.Info("nobody listens") // numbered, not held
			if st := e.port.Stats(); st.Entries != 1001 || st.MemoryBytes != 0 {
				t.Fatalf("%+v", st)
			}
		})
	}
}

// With history, a subscriber can catch up on what came before, and resume
// after a reconnection without a gap; on a port of another epoch it starts
// from that port's first entry.
func TestHistoryCatchUpAndResume(t *testing.T) {
	e := newEnv(t, logport.WithHistory())
	for i := 1; i <= 100; i++ {
		e.log.Info("before", zap.Int("i", i))
	}
	c, _ := e.connect()
	x := subscribe(t, logport.StreamFunc(c.OpenStream), logport.CatchUp())
	for i := 1; i <= 100; i++ {
		if it := x.next(t); it.seq != uint64(i) {
			t.Fatalf("catch-up entry %d: %+v", i, it)
		}
	}
	x.stop()
	pos := x.pos
	if pos.Seq != 100 || pos.Epoch != e.port.Epoch() {
		t.Fatalf("position %+v", pos)
	}
	for i := 101; i <= 150; i++ {
		e.log.Info("while away", zap.Int("i", i))
	}
	y := subscribe(t, logport.StreamFunc(c.OpenStream), logport.From(pos))
	for i := 101; i <= 150; i++ {
		if it := y.next(t); it.seq != uint64(i) {
			t.Fatalf("resumed entry %d: %+v", i, it)
		}
	}
	y.stop()

	// A position from another port (the node restarted): from the start.
	z := subscribe(t, logport.StreamFunc(c.OpenStream), logport.From(logport.Position{Epoch: pos.Epoch + 2, Seq: 120}))
	if it := z.next(t); it.seq != 1 {
		t.Fatalf("another epoch: %+v", it)
	}
}

// Without history, entries logged while nobody listened are numbered all
// the same, so a subscriber resuming sees them as a loss.
func TestResumeWithoutHistoryShowsGap(t *testing.T) {
	e := newEnv(t)
	c, _ := e.connect()
	x := subscribe(t, logport.StreamFunc(c.OpenStream))
	e.log.Info("one")
	x.next(t)
	x.stop()
	// The port lets the subscriber go once it sees the stream end: until
	// then "two" would still reach it and be kept for it.
	ttest.WaitFor(t, 10*time.Second, func() bool { return len(e.port.Subscribers()) == 0 }, "the port to let the stopped subscriber go")
	e.log.Info("two")
	e.log.Info("three")
	y := subscribe(t, logport.StreamFunc(c.OpenStream), logport.From(x.pos))
	if it := y.next(t); it.loss != (logport.Loss{First: 2, Last: 3}) {
		t.Fatalf("%+v", it)
	}
	e.log.Info("four")
	if it := y.next(t); it.seq != 4 {
		t.Fatalf("%+v", it)
	}
}

// Closing the port ends subscriptions with ErrClosed, even one whose
// subscriber granted credit and stopped reading.
func TestCloseEndsSubscriptions(t *testing.T) {
	e := newEnv(t)
	c, _ := e.connect()
	x := subscribe(t, logport.StreamFunc(c.OpenStream))
	pad := strings.Repeat("y", 1000)
	for i := range 3000 { // more than yamux's window: the sender blocks in Write
		e.log.Info("e", zap.Int("i", i), zap.String("pad", pad))
	}
	x.next(t)
	// The subscriber reads on: what was in flight, then the error.
	closed := make(chan struct{})
	go func() {
		e.port.Close()
		close(closed)
	}()
	err := x.wait(t)
	<-closed
	if !errors.Is(err, logport.ErrClosed) {
		t.Fatalf("Subscribe returned %v", err)
	}
	if _, err := logport.Subscribe(context.Background(), logport.StreamFunc(c.OpenStream), func(logport.Entry) {}); !errors.Is(err, logport.ErrClosed) {
		t.Fatalf("subscribing to a closed port: %v", err)
	}
}

// Close does not wait long for a subscriber that granted credit and stopped
// reading: its stream is cut after the grace period.
func TestCloseCutsStuckSubscriber(t *testing.T) {
	e := newEnv(t)
	c, _ := e.connect()
	x := subscribe(t, logport.StreamFunc(c.OpenStream))
	pad := strings.Repeat("y", 1000)
	for i := range 3000 {
		e.log.Info("e", zap.Int("i", i), zap.String("pad", pad))
	}
	x.next(t) // and stall: the sender blocks in Write
	start := time.Now()
	e.port.Close()
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("Close took %v", d)
	}
	err := x.wait(t)
	if !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, logport.ErrClosed) {
		t.Fatalf("Subscribe returned %v", err)
	}
}

// A port at its subscriber limit refuses one more, clearly.
func TestTooManySubscribers(t *testing.T) {
	e := newEnv(t, logport.WithMaxSubscribers(2))
	c, _ := e.connect()
	subscribe(t, logport.StreamFunc(c.OpenStream))
	subscribe(t, logport.StreamFunc(c.OpenStream))
	_, err := logport.Subscribe(context.Background(), logport.StreamFunc(c.OpenStream), func(logport.Entry) {})
	if !errors.Is(err, logport.ErrTooManySubscribers) {
		t.Fatalf("third subscriber: %v", err)
	}
	if st := e.port.Stats(); st.Refused != 1 || st.Subscribers != 2 {
		t.Fatalf("%+v", st)
	}
}

// An entry too large for the port becomes a stub that keeps its metadata.
func TestOversizeEntryStub(t *testing.T) {
	e := newEnv(t)
	c, _ := e.connect()
	x := subscribe(t, logport.StreamFunc(c.OpenStream))
	big := strings.Repeat("z", 100<<10)
	e.log.Error("huge "+big[:2000], zap.String("blob", big))
	e.log.Info("after")
	m := decode(t, x.next(t).json)
	if m["level"] != "error" || m["logport_oversize"] == nil || len(m["msg"].(string)) != 1024 || m["blob"] != nil {
		t.Fatalf("stub: %v", m)
	}
	if it := x.next(t); it.seq != 2 {
		t.Fatalf("%+v", it)
	}
	if st := e.port.Stats(); st.Oversize != 1 {
		t.Fatalf("%+v", st)
	}
}

// Entries below the port's level are not published and take no number.
func TestLevel(t *testing.T) {
	e := newEnv(t, logport.WithLevel(zap.WarnLevel))
	c, _ := e.connect()
	x := subscribe(t, logport.StreamFunc(c.OpenStream))
	e.log.Info("no")
	e.log.Warn("yes")
	if it := x.next(t); it.seq != 1 || decode(t, it.json)["msg"] != "yes" {
		t.Fatalf("%+v", it)
	}
}

// Fields added with With appear in every entry.
func TestWithFields(t *testing.T) {
	e := newEnv(t)
	c, _ := e.connect()
	x := subscribe(t, logport.StreamFunc(c.OpenStream))
	l := e.log.With(zap.String("node", "n1")).Named("storage")
	l.Info("a", zap.Int("k", 1))
	m := decode(t, x.next(t).json)
	if m["node"] != "n1" || m["logger"] != "storage" || m["k"] != float64(1) {
		t.Fatalf("%v", m)
	}
}

// Writers on many goroutines (without Async in front) are safe: every entry
// arrives once, numbered without a gap, each writer's in its own order.
func TestConcurrentWriters(t *testing.T) {
	e := newEnv(t)
	c, _ := e.connect()
	x := subscribe(t, logport.StreamFunc(c.OpenStream))
	const writers, each = 4, 500
	for w := range writers {
		go func() {
			for i := range each {
				e.log.Info("w", zap.Int("w", w), zap.Int("i", i))
			}
		}()
	}
	next := make([]int, writers)
	for k := range writers * each {
		it := x.next(t)
		if it.seq != uint64(k+1) {
			t.Fatalf("entry %d: %+v", k, it)
		}
		m := decode(t, it.json)
		w, i := int(m["w"].(float64)), int(m["i"].(float64))
		if i != next[w] {
			t.Fatalf("writer %d: entry %d, want %d", w, i, next[w])
		}
		next[w]++
	}
}

// Behind incident.Async, as a node runs it: Async's "seq" stays in the
// JSON beside the port's "port_seq".
func TestBehindAsync(t *testing.T) {
	e := newEnv(t)
	async := incident.Async(e.port.Core())
	defer async.Close()
	log := zap.New(async)
	c, _ := e.connect()
	x := subscribe(t, logport.StreamFunc(c.OpenStream))
	for i := range 10 {
		log.Info("through async", zap.Int("i", i))
	}
	for i := range 10 {
		it := x.next(t)
		m := decode(t, it.json)
		if m["seq"] != float64(i+1) || m["port_seq"] != float64(i+1) || m["i"] != float64(i) {
			t.Fatalf("%s", it.json)
		}
	}
}
