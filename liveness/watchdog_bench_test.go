package liveness

import (
	"testing"
	"time"
)

// BenchmarkWatchdogBeginEnd is the cost a handler call pays: one Begin and
// its End.
func BenchmarkWatchdogBeginEnd(b *testing.B) {
	w, err := NewWatchdog(WatchdogConfig{Clock: &fakeClock{now: t0}}) // samples only when told
	if err != nil {
		b.Fatal(err)
	}
	defer w.Close()
	b.Run("serial", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			w.Begin("storage.get", "abc").End()
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				w.Begin("storage.get", "abc").End()
			}
		})
	})
	// With 10,000 other calls in flight: a bigger table, colder lines.
	calls := make([]Call, 10000)
	for i := range calls {
		calls[i] = w.Begin("m", "p")
	}
	w.sample(t0) // the sampler grows the table to keep it half free
	b.Run("parallel-10000-in-flight", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				w.Begin("storage.get", "abc").End()
			}
		})
	})
	for _, c := range calls {
		c.End()
	}
}

// BenchmarkWatchdogSample is the cost of one sample with 10,000 calls in
// flight: all young, or all stuck (the oldest described, the rest summed).
func BenchmarkWatchdogSample(b *testing.B) {
	clk := &fakeClock{now: t0} // never advanced: the sampler goroutine stays idle
	w, err := NewWatchdog(WatchdogConfig{Clock: clk, MaxRSS: 1 << 40, MaxHeap: 1 << 40, MaxGoroutines: 1 << 30, LeakWindow: time.Minute})
	if err != nil {
		b.Fatal(err)
	}
	defer w.Close()
	for range 10000 {
		w.Begin("storage.get", "abc")
	}
	w.sample(t0) // grows the table as the running sampler would
	b.Logf("%d slots", w.tab.Load().slots())
	b.Run("10000-young", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			w.sample(t0)
		}
	})
	b.Run("10000-stuck", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			w.sample(t0.Add(time.Hour))
		}
	})
}
