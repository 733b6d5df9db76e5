package logport_test

import (
	"context"
	"errors"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/tetherrpc/tether/incident/logport"
)

// Foolscap ticket 72: a log gatherer six times slower than its producer
// made the producer's queue grow to 3 GB in three hours, until the node
// crashed. Replayed here: the producer logs six times as fast as the
// subscriber takes entries, for 3 s (60 s with TETHER_LONG=1). The
// producer's heap (after GC) must stay within the port's budget plus 1 MiB,
// and the accounting must be exact: per subscriber, produced = delivered +
// dropped, and the subscriber saw exactly the delivered entries and was
// told of exactly the dropped ones.
func TestTicket72Replay(t *testing.T) {
	replay72(t, 3*time.Second)
}

func TestTicket72ReplayLong(t *testing.T) {
	if os.Getenv("TETHER_LONG") == "" {
		t.Skip("set TETHER_LONG=1 for the 60 s replay")
	}
	replay72(t, 60*time.Second)
}

const (
	subscriberRate = 5000               // entries a second the slow subscriber takes
	producerRate   = 6 * subscriberRate // six times faster, as in ticket 72
)

// pace sleeps until n events at rate a second since start are due: the
// simulated cost of producing or gathering an entry, not synchronisation.
func pace(start time.Time, n, rate int) {
	if d := time.Until(start.Add(time.Duration(n) * time.Second / time.Duration(rate))); d > 0 {
		time.Sleep(d)
	}
}

func heapNow() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

func replay72(t *testing.T, d time.Duration) {
	end := newEnded()
	e := newEnv(t, end.option())
	c, _ := e.connect()

	// The slow subscriber: takes subscriberRate entries a second until
	// told to hurry, counts what it gets and what it is told it lost.
	var (
		received, lost atomic.Uint64
		last           atomic.Uint64 // the last seq seen or reported lost
		hurry          atomic.Bool
		target         atomic.Uint64 // when last reaches it, caughtUp is closed
		caughtUp       = make(chan struct{})
		once           sync.Once
	)
	started := make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	subDone := make(chan error, 1)
	go func() {
		var n int
		var t0 time.Time
		_, err := logport.Subscribe(ctx, logport.StreamFunc(c.OpenStream), func(en logport.Entry) {
			if en.IsLoss() {
				lost.Add(en.Lost.N())
				last.Store(en.Lost.Last)
			} else {
				received.Add(1)
				last.Store(en.Seq)
				if n++; !hurry.Load() {
					if n == 1 {
						t0 = time.Now()
					}
					if n%100 == 0 {
						pace(t0, n, subscriberRate)
					}
				}
			}
			if tg := target.Load(); tg != 0 && last.Load() >= tg {
				once.Do(func() { close(caughtUp) })
			}
		}, logport.OnStart(func(logport.Position) { close(started) }))
		subDone <- err
	}()
	<-started

	base := heapNow()
	var maxHeap, maxMem uint64
	var maxHeld int
	var bytesPerEntry float64
	sample := func() {
		h := heapNow()
		maxHeap = max(maxHeap, h)
		st := e.port.Stats()
		checkStats(t, st)
		maxMem = max(maxMem, uint64(st.MemoryBytes))
		maxHeld = max(maxHeld, st.HeldBytes)
		if st.Queued > 1000 {
			bytesPerEntry = float64(st.HeldBytes) / float64(st.Queued)
		}
	}

	// The producer: producerRate entries a second, of about 250 bytes,
	// through a zap logger, on one goroutine as behind incident.Async.
	pad := strings.Repeat("x", 120)
	start := time.Now()
	next := start.Add(200 * time.Millisecond)
	var produced int
	for time.Since(start) < d {
		for range 100 {
			produced++
			e.log.Info("storage server answered a share request",
				zap.Int("n", produced), zap.String("peer", "v4q3lcqkxyo6fsmh"), zap.String("pad", pad))
		}
		pace(start, produced, producerRate)
		if time.Now().After(next) {
			sample()
			next = time.Now().Add(200 * time.Millisecond)
		}
	}
	sample()
	elapsed := time.Since(start)

	// Let the subscriber catch up at full speed, so that what it saw can
	// be compared with what the port says it sent.
	hurry.Store(true)
	target.Store(e.port.Stats().Entries)
	if last.Load() >= target.Load() {
		once.Do(func() { close(caughtUp) })
	}
	select {
	case <-caughtUp:
	case err := <-subDone:
		t.Fatalf("subscription ended: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatalf("the subscriber did not catch up: at %d of %d", last.Load(), target.Load())
	}
	// The subscriber has seen everything; the port may not yet have
	// counted the last run as delivered (its Write returns after the bytes
	// are on their way), so the final counts are taken at the end.
	cancel()
	if err := <-subDone; !errors.Is(err, context.Canceled) {
		t.Fatalf("Subscribe returned %v", err)
	}
	s0 := end.next(t).st
	if s0.Queued != 0 || s0.Produced != uint64(produced) || s0.Produced != s0.Delivered+s0.Dropped {
		t.Fatalf("final %+v, %d produced", s0, produced)
	}
	if received.Load() != s0.Delivered || lost.Load() != s0.Dropped {
		t.Fatalf("the subscriber got %d and was told of %d lost; the port delivered %d and dropped %d",
			received.Load(), lost.Load(), s0.Delivered, s0.Dropped)
	}
	growth := int64(maxHeap) - int64(base)
	budget := int64(e.port.Budget())
	t.Logf("ticket 72 replay, %v: produced %d (%.0f/s), delivered %d, dropped %d (%.1f%%), loss notices %d",
		elapsed.Round(time.Millisecond), produced, float64(produced)/elapsed.Seconds(), s0.Delivered, s0.Dropped,
		100*float64(s0.Dropped)/float64(produced), s0.Losses)
	t.Logf("producer heap growth (after GC, max of samples): %.2f MiB; port memory max %.2f MiB, entries held max %.2f MiB; budget %.2f MiB",
		mib(growth), mib(int64(maxMem)), mib(int64(maxHeld)), mib(budget))
	if bytesPerEntry > 0 {
		t.Logf("an unbounded queue would have held %d entries, about %.1f MiB (%.0f bytes each)",
			produced-int(s0.Delivered), mib(int64(float64(uint64(produced)-s0.Delivered)*bytesPerEntry)), bytesPerEntry)
	}
	if maxMem > uint64(budget) {
		t.Fatalf("port memory %d over budget %d", maxMem, budget)
	}
	if growth > budget+1<<20 {
		t.Fatalf("heap grew %.2f MiB, over the budget of %.2f MiB plus 1 MiB", mib(growth), mib(budget))
	}
	if s0.Dropped == 0 {
		t.Fatal("nothing dropped: the subscriber kept up, the replay proves nothing")
	}
}

func mib(n int64) float64 { return float64(n) / (1 << 20) }
