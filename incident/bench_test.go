package incident_test

import (
	"context"
	"io"
	"io/fs"
	"math/bits"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/tetherrpc/tether/incident"
)

// The same entry in every benchmark: a message and three fields.
func logOne(log *zap.Logger) {
	log.Info("request served",
		zap.String("peer", "v4q3lcqkxyo6fsmh"),
		zap.Int("bytes", 1024),
		zap.Duration("took", 1500*time.Microsecond))
}

func discardCore() zapcore.Core {
	return zapcore.NewCore(
		zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig()),
		zapcore.AddSync(io.Discard),
		zapcore.DebugLevel)
}

// flushEvery keeps the Async queue from overflowing in a tight loop, so
// every entry is encoded and written, as with the plain core.
const flushEvery = 1024

// BenchmarkPlainCoreDiscard is the baseline: zap's own core encoding JSON
// to io.Discard in the caller's goroutine.
func BenchmarkPlainCoreDiscard(b *testing.B) {
	log := zap.New(discardCore())
	b.ReportAllocs()
	for b.Loop() {
		logOne(log)
	}
}

// BenchmarkAsyncDiscard writes the same entries through Async. Time per op
// is the wall time per entry written, with the writer goroutine encoding on
// the other core; nothing is dropped.
func BenchmarkAsyncDiscard(b *testing.B) {
	a := incident.Async(discardCore())
	defer a.Close()
	log := zap.New(a)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		logOne(log)
		if i++; i%flushEvery == 0 {
			_ = a.Flush(context.Background())
		}
	}
	_ = a.Flush(context.Background())
	if st := a.Stats(); st.Dropped != 0 {
		b.Fatalf("dropped %d entries: %+v", st.Dropped, st)
	}
}

// nopCore accepts every entry and does nothing with it: the cost of zap's
// logger itself.
type nopCore struct{}

func (nopCore) Enabled(zapcore.Level) bool                 { return true }
func (c nopCore) With([]zapcore.Field) zapcore.Core        { return c }
func (nopCore) Write(zapcore.Entry, []zapcore.Field) error { return nil }
func (nopCore) Sync() error                                { return nil }
func (c nopCore) Check(ent zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	return ce.AddCore(ent, c)
}

// BenchmarkCallLatency times each call: the caller's cost, which is what
// Async promises to keep small. Compare the p50 of plain and async; nop is
// the floor, zap's logger with a core that does nothing.
func BenchmarkCallLatency(b *testing.B) {
	b.Run("nop", func(b *testing.B) {
		log := zap.New(nopCore{})
		var h hist
		b.ReportAllocs()
		for b.Loop() {
			t0 := time.Now()
			logOne(log)
			h.add(time.Since(t0))
		}
		h.report(b)
	})
	b.Run("plain", func(b *testing.B) {
		log := zap.New(discardCore())
		var h hist
		b.ReportAllocs()
		for b.Loop() {
			t0 := time.Now()
			logOne(log)
			h.add(time.Since(t0))
		}
		h.report(b)
	})
	b.Run("async", func(b *testing.B) {
		a := incident.Async(discardCore())
		defer a.Close()
		log := zap.New(a)
		var h hist
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			t0 := time.Now()
			logOne(log)
			h.add(time.Since(t0))
			if i++; i%flushEvery == 0 {
				_ = a.Flush(context.Background())
			}
		}
		h.report(b)
		if st := a.Stats(); st.Dropped != 0 {
			b.Fatalf("dropped %d entries", st.Dropped)
		}
	})
}

// BenchmarkAsyncBlockedSink has 8 goroutines log as fast as they can while
// the inner sink is stuck: the queue fills, then every call drops. It
// reports call latency percentiles.
func BenchmarkAsyncBlockedSink(b *testing.B) {
	s, release := blockedSink()
	a := incident.Async(s.core(zapcore.DebugLevel))
	log := zap.New(a)
	const goroutines = 8
	var mu sync.Mutex
	var all hist
	b.ReportAllocs()
	b.SetParallelism((goroutines + 1) / 2) // 2 cores here: 8 goroutines
	b.RunParallel(func(pb *testing.PB) {
		var h hist
		for pb.Next() {
			t0 := time.Now()
			logOne(log)
			h.add(time.Since(t0))
		}
		mu.Lock()
		all.merge(&h)
		mu.Unlock()
	})
	b.StopTimer()
	all.report(b)
	st := a.Stats()
	b.ReportMetric(float64(st.Dropped)/float64(max(st.Enqueued, 1)), "dropped/op")
	release()
	_ = a.Close()
}

// discardFS writes incident files nowhere.
type discardFS struct{}

type nopWriteCloser struct{ io.Writer }

func (nopWriteCloser) Close() error { return nil }

func (discardFS) MkdirAll(string, fs.FileMode) error    { return nil }
func (discardFS) Create(string) (io.WriteCloser, error) { return nopWriteCloser{io.Discard}, nil }
func (discardFS) Rename(string, string) error           { return nil }
func (discardFS) Remove(string) error                   { return nil }

// BenchmarkRecorder compares a trigger call with an ordinary call.
func BenchmarkRecorder(b *testing.B) {
	setup := func(b *testing.B, opts ...incident.RecorderOption) (*incident.Recorder, *fakeClock, *zap.Logger) {
		clk := newFakeClock()
		opts = append([]incident.RecorderOption{incident.WithClock(clk), incident.WithFileSystem(discardFS{})}, opts...)
		rec, err := incident.NewRecorder("/nowhere", opts...)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = rec.Close() })
		log := zap.New(rec)
		for range 1000 { // warm the rings
			logOne(log)
		}
		return rec, clk, log
	}
	trigger := func(log *zap.Logger) {
		log.Error("call failed", zap.String(incident.PeerKey, "v4q3lcqkxyo6fsmh"), zap.Int("bytes", 1024), zap.Duration("took", 1500*time.Microsecond))
	}
	timedLoop := func(b *testing.B, f func()) {
		var h hist
		b.ReportAllocs()
		for b.Loop() {
			t0 := time.Now()
			f()
			h.add(time.Since(t0))
		}
		h.report(b)
	}
	b.Run("ordinary", func(b *testing.B) {
		_, _, log := setup(b)
		timedLoop(b, func() { logOne(log) })
	})
	b.Run("trigger-folded", func(b *testing.B) {
		_, _, log := setup(b)
		trigger(log) // opens the incident; the clock never moves
		timedLoop(b, func() { trigger(log) })
	})
	b.Run("trigger-suppressed", func(b *testing.B) {
		_, clk, log := setup(b)
		trigger(log)
		clk.Advance(incident.DefaultTrailingWindow)
		timedLoop(b, func() { trigger(log) })
	})
	// Each op opens an incident, closes it (the timer's work, done here on
	// the benchmark goroutine) and logs 100 entries of new history; the
	// percentiles are those of the opening call alone.
	b.Run("trigger-opens", func(b *testing.B) {
		rec, clk, log := setup(b, incident.WithRateLimit(0))
		var h hist
		b.ReportAllocs()
		for b.Loop() {
			t0 := time.Now()
			trigger(log)
			h.add(time.Since(t0))
			clk.Advance(incident.DefaultTrailingWindow)
			for range 100 {
				logOne(log)
			}
		}
		h.report(b)
		if st := rec.Stats(); st.Incidents != uint64(b.N) {
			b.Fatalf("stats %+v", st)
		}
	})
}

// hist is a log-linear latency histogram: 16 buckets per power of two
// (about 6% resolution), no allocation per sample.
type hist struct {
	counts [1024]uint64
	n      uint64
}

func (h *hist) add(d time.Duration) {
	v := uint64(max(d, 0))
	if v < 16 {
		h.counts[v]++
	} else {
		e := bits.Len64(v) - 1
		h.counts[(e-3)*16+int((v>>(e-4))&15)]++
	}
	h.n++
}

func (h *hist) merge(o *hist) {
	for i, c := range o.counts {
		h.counts[i] += c
	}
	h.n += o.n
}

// bucketValue is the middle of bucket i, in ns.
func bucketValue(i int) float64 {
	if i < 16 {
		return float64(i)
	}
	e, m := i/16+3, uint64(i%16)
	lo := (16 + m) << (e - 4)
	width := uint64(1) << (e - 4)
	return float64(lo) + float64(width)/2
}

func (h *hist) quantile(q float64) float64 {
	want := uint64(q * float64(h.n))
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen > want {
			return bucketValue(i)
		}
	}
	return 0
}

func (h *hist) report(b *testing.B) {
	if h.n == 0 {
		return
	}
	b.ReportMetric(h.quantile(0.50), "p50-ns/op")
	b.ReportMetric(h.quantile(0.99), "p99-ns/op")
	b.ReportMetric(h.quantile(0.999), "p99.9-ns/op")
}
