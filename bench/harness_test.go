package bench

import (
	"context"
	"net"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tetherrpc/tether/internal/ttest"
)

// payloadSize is the size of every request and of every reply.
const payloadSize = 64

// callers is the number of concurrent callers sharing one connection in the
// parallel shape.
const callers = 64

// caller makes one echo call: it sends req and returns the reply. scratch is
// a payloadSize buffer owned by the calling goroutine that a system may read
// the reply into (only raw yamux does: the RPC systems' APIs hand back a
// reply of their own). A caller must be safe for concurrent use.
type caller func(ctx context.Context, req, scratch []byte) ([]byte, error)

// system is one contestant: start connects a client to a server over
// loopback TCP (one connection) and returns the call function and a stop
// function that tears both ends down and waits for them.
type system struct {
	name           string
	start          func(tb testing.TB) (call caller, stop func())
	sequentialOnly bool // cannot carry concurrent calls on one connection
}

// tcpPair returns both ends of one loopback TCP connection.
func tcpPair(tb testing.TB) (client, server net.Conn) {
	tb.Helper()
	c, s := ttest.TCPPair(tb)
	return c, s
}

func newPayload() []byte {
	b := make([]byte, payloadSize)
	for i := range b {
		b[i] = byte(i)
	}
	return b
}

// warmUp makes a few calls from several goroutines before timing, so that
// pools, buffers and flow-control windows are in their steady state.
func warmUp(tb testing.TB, call caller, goroutines, perGoroutine int) {
	tb.Helper()
	var wg sync.WaitGroup
	var failed atomic.Pointer[error]
	for range goroutines {
		wg.Go(func() {
			req, scratch := newPayload(), make([]byte, payloadSize)
			for range perGoroutine {
				resp, err := call(context.Background(), req, scratch)
				if err == nil && string(resp) != string(req) {
					err = errMismatch
				}
				if err != nil {
					failed.CompareAndSwap(nil, &err)
					return
				}
			}
		})
	}
	wg.Wait()
	if p := failed.Load(); p != nil {
		tb.Fatalf("warm-up call: %v", *p)
	}
}

type mismatchError struct{}

func (mismatchError) Error() string { return "the reply differs from the request" }

var errMismatch error = mismatchError{}

// percentile returns the p-th percentile (0..1) of sorted durations, by the
// nearest-rank method.
func percentile(sorted []int64, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(p*float64(len(sorted))+0.5) - 1
	i = max(0, min(i, len(sorted)-1))
	return float64(sorted[i])
}

// mallocs returns the number of heap allocations made so far.
func mallocs() uint64 {
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.Mallocs
}

// reportAllocsPerCall reports the allocations per call since m0 as
// "allocs/call", unrounded: the testing package's allocs/op is truncated
// to an integer (13.96 shows as 13).
func reportAllocsPerCall(b *testing.B, m0 uint64) {
	b.ReportMetric(float64(mallocs()-m0)/float64(b.N), "allocs/call")
}

// runSequential makes b.N calls one after another from one goroutine and
// reports ns/op, B/op, allocs/op (both ends: they are in this process) and
// the p50 and p99 latency of single calls.
func runSequential(b *testing.B, call caller) {
	req, scratch := newPayload(), make([]byte, payloadSize)
	lat := make([]int64, b.N) // allocated before the timer starts
	ctx := context.Background()
	m0 := mallocs()
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		t0 := time.Now()
		resp, err := call(ctx, req, scratch)
		lat[i] = int64(time.Since(t0))
		if err != nil {
			b.Fatal(err)
		}
		if len(resp) != payloadSize {
			b.Fatalf("reply of %d bytes", len(resp))
		}
	}
	b.StopTimer()
	reportAllocsPerCall(b, m0)
	slices.Sort(lat)
	b.ReportMetric(percentile(lat, 0.50), "p50-ns")
	b.ReportMetric(percentile(lat, 0.99), "p99-ns")
}

// runParallel makes b.N calls from 64 goroutines sharing one connection and
// a counter, and reports ns/op (the inverse of throughput) and calls/s.
func runParallel(b *testing.B, call caller) {
	var next atomic.Int64
	var failed atomic.Pointer[error]
	var ready, wg sync.WaitGroup
	startGun := make(chan struct{})
	ready.Add(callers)
	for range callers {
		wg.Go(func() {
			req, scratch := newPayload(), make([]byte, payloadSize)
			ctx := context.Background()
			ready.Done()
			<-startGun
			for next.Add(1) <= int64(b.N) {
				resp, err := call(ctx, req, scratch)
				if err == nil && len(resp) != payloadSize {
					err = errMismatch
				}
				if err != nil {
					failed.CompareAndSwap(nil, &err)
					return
				}
			}
		})
	}
	ready.Wait()
	m0 := mallocs()
	b.ReportAllocs()
	b.ResetTimer()
	t0 := time.Now()
	close(startGun)
	wg.Wait()
	elapsed := time.Since(t0)
	b.StopTimer()
	reportAllocsPerCall(b, m0)
	if p := failed.Load(); p != nil {
		b.Fatal(*p)
	}
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "calls/s")
}

// systems are the contestants of BenchmarkEcho, in the order they run.
var systems = []system{
	{"tether", startTether, false},
	{"yamux-stream-per-call", startYamux, false},
	{"yamux-one-stream", startYamuxOneStream, true},
	{"net-rpc", startNetRPC, false},
	{"grpc", startGRPC, false},
	{"drpc", startDRPC, false},
}

// BenchmarkEcho: a 64-byte request echoed back (64-byte reply), client and
// server in this process over one loopback TCP connection. Names are
// Echo/<shape>/system=<name>, so that `benchstat -col /system` puts the
// systems side by side.
func BenchmarkEcho(b *testing.B) {
	b.Run("sequential", func(b *testing.B) {
		for _, s := range systems {
			b.Run("system="+s.name, func(b *testing.B) {
				call, stop := s.start(b)
				defer stop()
				warmUp(b, call, 1, 200)
				runSequential(b, call)
			})
		}
	})
	b.Run("parallel64", func(b *testing.B) {
		for _, s := range systems {
			if s.sequentialOnly {
				continue
			}
			b.Run("system="+s.name, func(b *testing.B) {
				call, stop := s.start(b)
				defer stop()
				warmUp(b, call, callers, 20)
				runParallel(b, call)
			})
		}
	})
}
