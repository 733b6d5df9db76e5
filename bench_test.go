package tether_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/internal/ttest/ttnode"
	"github.com/tetherrpc/tether/rpc"
)

// The benchmarks run on loopback TCP, as BENCHMARKS.md's figures do.

// BenchmarkEvict10000 measures the time from an eviction to the return of
// the last of 10,000 outstanding calls (the promised floor: 50 ms).
func BenchmarkEvict10000(b *testing.B) {
	const n = 10_000
	a := ttnode.Start(b)
	s := ttnode.Start(b, tether.WithRPCConfig(rpc.Config{MaxConcurrentCalls: 2 * n}))
	running, _ := hold(s)
	var worst time.Duration
	for b.Loop() {
		b.StopTimer()
		running.Store(0)
		p := ttnode.Dial(b, a, s)
		var wg sync.WaitGroup
		var mu sync.Mutex
		var last time.Time
		for range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				p.Call(context.Background(), "hold", nil, nil)
				now := time.Now()
				mu.Lock()
				if now.After(last) {
					last = now
				}
				mu.Unlock()
			}()
		}
		waitFor(b, func() bool { return running.Load() == n }, "calls")
		b.StartTimer()
		t0 := time.Now()
		a.Peers().Evict(p.ID(), nil)
		wg.Wait()
		if d := last.Sub(t0); d > worst {
			worst = d
		}
	}
	b.ReportMetric(float64(worst.Microseconds())/1000, "worst-ms")
}

// BenchmarkCallOnEvicted is a call on an evicted reference: no I/O.
func BenchmarkCallOnEvicted(b *testing.B) {
	a, s := ttnode.Start(b), ttnode.Start(b)
	p := ttnode.Dial(b, a, s)
	a.Peers().Evict(p.ID(), nil)
	<-p.Done()
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		p.Call(ctx, "x", nil, nil)
	}
}
