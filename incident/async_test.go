package incident_test

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/tetherrpc/tether/incident"
)

// runAll starts n goroutines running f(g) together and waits for them, or
// fails the test if they take longer than limit: with a blocked sink, a
// caller that waits for the sink never returns.
func runAll(t *testing.T, n int, limit time.Duration, f func(g int)) {
	t.Helper()
	var wg sync.WaitGroup
	start := make(chan struct{})
	for g := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			f(g)
		}()
	}
	close(start)
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(limit):
		t.Fatalf("callers still running after %v: blocked", limit)
	}
}

func TestAsyncBlockedSinkNeverBlocksCallers(t *testing.T) {
	s, release := blockedSink()
	defer release()
	const maxEntries = 1024
	a := incident.Async(s.core(zapcore.DebugLevel), incident.WithMaxEntries(maxEntries))
	defer a.Close()
	log := zap.New(a)

	const goroutines, perG = 8, 5000
	worst := make([]time.Duration, goroutines)
	runAll(t, goroutines, 20*time.Second, func(g int) {
		for i := range perG {
			t0 := time.Now()
			log.Info("flood", zap.Int("g", g), zap.Int("i", i), zap.String("k", "v"))
			if d := time.Since(t0); d > worst[g] {
				worst[g] = d
			}
		}
	})
	var maxCall time.Duration
	for _, d := range worst {
		maxCall = max(maxCall, d)
	}
	t.Logf("slowest of %d calls: %v", goroutines*perG, maxCall)
	// The sink is still blocked, and stays blocked until every caller has
	// returned: a caller that waited for it would have hung runAll. This
	// bound catches partial waits; it is generous because on a loaded
	// machine a goroutine can lose its processor for tens of milliseconds
	// in the middle of a call.
	if maxCall > time.Second {
		t.Errorf("slowest call took %v", maxCall)
	}

	st := a.Stats()
	checkIdentity(t, st)
	if st.Enqueued != goroutines*perG {
		t.Errorf("Enqueued = %d, want %d", st.Enqueued, goroutines*perG)
	}
	if st.Written != 0 {
		t.Errorf("Written = %d while the sink is blocked", st.Written)
	}
	// Info may fill half the queue; the entry stuck in the sink counts as
	// queued until the sink returns.
	if st.Queued != maxEntries/2 {
		t.Errorf("Queued = %d, want %d (the Info share)", st.Queued, maxEntries/2)
	}

	release()
	if err := a.Sync(); err != nil {
		t.Fatalf("Sync: %v", err)
	}
	st = a.Stats()
	checkIdentity(t, st)
	if st.Queued != 0 || st.Written != maxEntries/2 || st.Dropped != goroutines*perG-maxEntries/2 {
		t.Errorf("after drain: %+v", st)
	}
	if st.Notices == 0 {
		t.Errorf("no loss notice written")
	}
	checkSeqs(t, s.all(), st)
}

func TestAsyncLevelReserves(t *testing.T) {
	s, release := blockedSink()
	defer release()
	a := incident.Async(s.core(zapcore.DebugLevel), incident.WithMaxEntries(100))
	defer a.Close()
	log := zap.New(a)

	for _, step := range []struct {
		level  zapcore.Level
		queued uint64
	}{
		{zapcore.DebugLevel, 50},  // Debug and Info: half
		{zapcore.InfoLevel, 50},   // nothing more for Info
		{zapcore.WarnLevel, 75},   // Warn: three quarters
		{zapcore.ErrorLevel, 100}, // Error: all of it
		{zapcore.WarnLevel, 100},
	} {
		for range 1000 {
			log.Check(step.level, "flood").Write()
		}
		st := a.Stats()
		checkIdentity(t, st)
		if st.Queued != step.queued {
			t.Fatalf("after flooding %v: Queued = %d, want %d", step.level, st.Queued, step.queued)
		}
	}
	release()
	if err := a.Sync(); err != nil {
		t.Fatal(err)
	}
	count := map[zapcore.Level]int{}
	for _, e := range s.all() {
		if !e.notice {
			count[e.ent.Level]++
		}
	}
	want := map[zapcore.Level]int{zapcore.DebugLevel: 50, zapcore.WarnLevel: 25, zapcore.ErrorLevel: 25}
	for l, n := range want {
		if count[l] != n {
			t.Errorf("%v entries written: %d, want %d", l, count[l], n)
		}
	}
	checkSeqs(t, s.all(), a.Stats())
}

func TestAsyncByteBound(t *testing.T) {
	s, release := blockedSink()
	defer release()
	const maxBytes = 64 << 10
	a := incident.Async(s.core(zapcore.DebugLevel), incident.WithMaxBytes(maxBytes))
	defer a.Close()
	log := zap.New(a)
	payload := strings.Repeat("x", 4096)

	for range 100 {
		log.Info("big", zap.String("payload", payload))
	}
	st := a.Stats()
	checkIdentity(t, st)
	if st.Queued == 0 || st.QueuedBytes%int(st.Queued) != 0 {
		t.Fatalf("stats %+v", st)
	}
	per := st.QueuedBytes / int(st.Queued)
	// An honest estimate: at least the payload, message and key; not much
	// more than that plus a few hundred bytes of bookkeeping.
	if min := len(payload) + len("big") + len("payload"); per < min || per > min+1024 {
		t.Errorf("estimated entry size %d, want between %d and %d", per, min, min+1024)
	}
	if st.QueuedBytes > maxBytes/2 || st.QueuedBytes+per <= maxBytes/2 {
		t.Errorf("Info filled %d bytes with entries of %d; want the most that fits in %d", st.QueuedBytes, per, maxBytes/2)
	}
	infoQueued := st.Queued

	for range 100 {
		log.Error("big", zap.String("payload", payload))
	}
	st = a.Stats()
	checkIdentity(t, st)
	if st.QueuedBytes > maxBytes || st.QueuedBytes+per <= maxBytes {
		t.Errorf("Error filled %d bytes with entries of %d; want the most that fits in %d", st.QueuedBytes, per, maxBytes)
	}
	if st.Queued <= infoQueued {
		t.Errorf("no Error entry got in after Info filled its share")
	}
	release()
	if err := a.Sync(); err != nil {
		t.Fatal(err)
	}
	checkSeqs(t, s.all(), a.Stats())
}

func TestAsyncEntryBoundAtError(t *testing.T) {
	s, release := blockedSink()
	defer release()
	a := incident.Async(s.core(zapcore.DebugLevel), incident.WithMaxEntries(64))
	defer a.Close()
	log := zap.New(a)
	for range 200 {
		log.Error("e")
	}
	if st := a.Stats(); st.Queued != 64 || st.Dropped != 136 {
		t.Errorf("stats %+v, want 64 queued, 136 dropped", st)
	}
	release()
	if err := a.Sync(); err != nil {
		t.Fatal(err)
	}
	checkSeqs(t, s.all(), a.Stats())
}

func TestAsyncSlowSink(t *testing.T) {
	s := newSink()
	s.delay = 20 * time.Microsecond
	a := incident.Async(s.core(zapcore.DebugLevel), incident.WithMaxEntries(256))
	defer a.Close()
	log := zap.New(a)
	runAll(t, 4, 20*time.Second, func(g int) {
		for i := range 5000 {
			log.Info("slow", zap.Int("g", g), zap.Int("i", i))
			if i%100 == 0 {
				checkIdentity(t, a.Stats())
			}
		}
	})
	if err := a.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	st := a.Stats()
	t.Logf("slow sink: %+v", st)
	if st.Dropped == 0 {
		t.Errorf("a sink this slow should have lost entries")
	}
	if st.Written < 128 {
		t.Errorf("written %d, want at least one queue's worth", st.Written)
	}
	checkSeqs(t, s.all(), st)
}

func TestAsyncStatsIdentityUnderLoad(t *testing.T) {
	s := newSink()
	a := incident.Async(s.core(zapcore.DebugLevel), incident.WithMaxEntries(64))
	defer a.Close()
	log := zap.New(a)

	stop := make(chan struct{})
	var reads atomic.Int64
	var readers sync.WaitGroup
	for range 2 {
		readers.Add(1)
		go func() {
			defer readers.Done()
			var prev incident.AsyncStats
			for {
				select {
				case <-stop:
					return
				default:
				}
				st := a.Stats()
				if st.Enqueued != st.Written+st.Dropped+st.Queued {
					t.Errorf("identity broken: %+v", st)
					return
				}
				if st.Enqueued < prev.Enqueued || st.Written < prev.Written || st.Dropped < prev.Dropped {
					t.Errorf("counters went back: %+v then %+v", prev, st)
					return
				}
				prev = st
				reads.Add(1)
			}
		}()
	}
	runAll(t, 4, 30*time.Second, func(g int) {
		for i := range 20000 {
			if i%5000 == 0 && g == 0 {
				_ = a.Sync()
			}
			log.Warn("hammer", zap.Int("i", i))
		}
	})
	close(stop)
	readers.Wait()
	if err := a.Sync(); err != nil {
		t.Fatal(err)
	}
	st := a.Stats()
	if reads.Load() == 0 || st.Enqueued != 80000 {
		t.Fatalf("reads %d, stats %+v", reads.Load(), st)
	}
	checkSeqs(t, s.all(), st)
}

func TestAsyncSeqOnlyForEnabledEntries(t *testing.T) {
	s := newSink()
	a := incident.Async(s.core(zapcore.WarnLevel))
	defer a.Close()
	log := zap.New(a)
	if a.Level() != zapcore.WarnLevel {
		t.Errorf("Level() = %v, want warn", a.Level())
	}
	log.Debug("no")
	log.Warn("one")
	log.Info("no")
	log.Error("two")
	if err := a.Sync(); err != nil {
		t.Fatal(err)
	}
	got := s.all()
	if len(got) != 2 || got[0].seq != 1 || got[1].seq != 2 || got[0].ent.Message != "one" || got[1].ent.Message != "two" {
		t.Fatalf("sink saw %+v", got)
	}
	if st := a.Stats(); st.Enqueued != 2 {
		t.Errorf("Enqueued = %d, want 2", st.Enqueued)
	}
}

func TestAsyncWithSharesQueue(t *testing.T) {
	s := newSink()
	a := incident.Async(s.core(zapcore.DebugLevel))
	base := zap.New(a)
	runAll(t, 8, 20*time.Second, func(g int) {
		l := base.With(zap.Int("worker", g)).With(zap.String("role", "w"))
		for i := range 200 {
			l.Info("work", zap.Int("i", i))
		}
	})
	if err := a.Sync(); err != nil {
		t.Fatal(err)
	}
	got := s.all()
	if len(got) != 1600 {
		t.Fatalf("sink saw %d entries, want 1600", len(got))
	}
	perWorker := map[int64]int{}
	var last uint64
	for _, e := range got {
		w, ok1 := e.field("worker")
		r, ok2 := e.field("role")
		if !ok1 || !ok2 || r.String != "w" {
			t.Fatalf("context fields missing: %+v", e.fields)
		}
		perWorker[w.Integer]++
		if e.seq <= last {
			t.Fatalf("seq %d after %d", e.seq, last)
		}
		last = e.seq
	}
	for g := range 8 {
		if perWorker[int64(g)] != 200 {
			t.Errorf("worker %d: %d entries", g, perWorker[int64(g)])
		}
	}
	// Closing through a child closes the shared queue.
	child := a.With([]zapcore.Field{zap.Int("x", 1)}).(*incident.AsyncCore)
	if err := child.Close(); err != nil {
		t.Fatal(err)
	}
	base.Info("after close")
	st := a.Stats()
	checkIdentity(t, st)
	if st.Dropped != 1 || st.Written != 1600 {
		t.Errorf("stats after close %+v", st)
	}
}

func TestAsyncSyncIsBounded(t *testing.T) {
	s, release := blockedSink()
	defer release()
	const bound = 100 * time.Millisecond
	a := incident.Async(s.core(zapcore.DebugLevel), incident.WithFlushTimeout(bound))
	log := zap.New(a)
	log.Info("stuck")
	<-s.entered // the writer is now inside the sink, for good
	log.Info("queued behind")

	t0 := time.Now()
	err := a.Sync()
	took := time.Since(t0)
	if took < bound || took > bound+time.Second {
		t.Errorf("Sync took %v, want about %v", took, bound)
	}
	var te *incident.TimeoutError
	var ne net.Error
	if !errors.Is(err, incident.ErrTimeout) || !errors.As(err, &te) || !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("Sync error %v (%T), want a *TimeoutError", err, err)
	}
	if te.Op != "sync" || te.Pending != 2 {
		t.Errorf("TimeoutError %+v, want op sync, 2 pending", te)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	err = a.Flush(ctx)
	if !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, incident.ErrTimeout) {
		t.Errorf("Flush error %v, want deadline exceeded and ErrTimeout", err)
	}

	t0 = time.Now()
	err = a.Close()
	if took := time.Since(t0); took > bound+time.Second {
		t.Errorf("Close took %v", took)
	}
	if !errors.As(err, &te) || te.Op != "close" {
		t.Fatalf("Close error %v, want close timeout", err)
	}
	if again := a.Close(); again != err {
		t.Errorf("second Close = %v, want the same %v", again, err)
	}
	log.Info("after close")

	release()
	// Once the sink lets go, the writer drops what is left and exits; a
	// flush then returns at once.
	ctx2, cancel2 := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel2()
	if err := a.Flush(ctx2); err != nil {
		t.Fatalf("Flush after exit: %v", err)
	}
	st := a.Stats()
	checkIdentity(t, st)
	if st.Queued != 0 || st.Written != 1 || st.Dropped != 2 || st.Enqueued != 3 {
		t.Errorf("final stats %+v, want 1 written and 2 dropped", st)
	}
	goleak.VerifyNone(t)
}

func TestAsyncCloseDrainsAndIsIdempotent(t *testing.T) {
	s := newSink()
	a := incident.Async(s.core(zapcore.DebugLevel))
	log := zap.New(a)
	for i := range 100 {
		log.Info("e", zap.Int("i", i))
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if got := len(s.all()); got != 100 {
		t.Errorf("sink got %d entries before Close returned, want 100", got)
	}
	s.mu.Lock()
	syncs := s.syncs
	s.mu.Unlock()
	if syncs == 0 {
		t.Errorf("Close did not sync the inner core")
	}
	for range 5 {
		log.Info("late")
	}
	st := a.Stats()
	checkIdentity(t, st)
	if st.Written != 100 || st.Dropped != 5 || st.Queued != 0 {
		t.Errorf("stats %+v", st)
	}
	if err := a.Sync(); err != nil {
		t.Errorf("Sync after Close: %v", err)
	}
	goleak.VerifyNone(t)
}

func TestAsyncSurvivesInnerFailures(t *testing.T) {
	s := newSink()
	s.fail = func(ent zapcore.Entry) error {
		switch ent.Message {
		case "fail":
			return errors.New("disk on fire")
		case "panic":
			panic("inner core bug")
		}
		return nil
	}
	var reported []error
	var mu sync.Mutex
	a := incident.Async(s.core(zapcore.DebugLevel), incident.WithErrorHandler(func(err error) {
		mu.Lock()
		reported = append(reported, err)
		mu.Unlock()
	}))
	defer a.Close()
	log := zap.New(a)
	for _, m := range []string{"ok", "fail", "panic", "ok", "panic", "ok"} {
		log.Info(m)
	}
	if err := a.Sync(); err != nil {
		t.Fatal(err)
	}
	st := a.Stats()
	if st.Errors != 3 || st.Written != 6 {
		t.Errorf("stats %+v, want 3 errors of 6 written", st)
	}
	if got := len(s.all()); got != 3 {
		t.Errorf("sink kept %d entries, want 3", got)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(reported) != 3 || !strings.Contains(reported[1].Error(), "inner core bug") {
		t.Errorf("reported %v", reported)
	}
}

func TestAsyncPanicEntryReachesSink(t *testing.T) {
	s := newSink()
	s.delay = 20 * time.Millisecond
	a := incident.Async(s.core(zapcore.DebugLevel))
	defer a.Close()
	log := zap.New(a)
	log.Info("before")
	func() {
		defer func() { _ = recover() }()
		log.Panic("last words")
	}()
	got := s.all()
	if len(got) != 2 || got[1].ent.Message != "last words" {
		t.Fatalf("after Panic returned the sink had %d entries %+v; want the panic entry written", len(got), got)
	}
}
