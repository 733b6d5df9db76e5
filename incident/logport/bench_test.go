package logport_test

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/tetherrpc/tether/incident/logport"
)

// BenchmarkWrite is the producer's cost per entry through a zap logger:
// with nobody subscribed (numbering only), and with 1 and 4 subscribers
// stalled (encode once, copy into the ring, drop the oldest chunk when the
// budget is spent). The cost does not grow with the subscribers.
func BenchmarkWrite(b *testing.B) {
	for _, subs := range []int{0, 1, 4} {
		b.Run(fmt.Sprintf("subscribers=%d", subs), func(b *testing.B) {
			e := newEnv(b)
			c, _ := e.connect()
			for range subs {
				subscribe(b, logport.StreamFunc(c.OpenStream), logport.Window(1))
			}
			pad := strings.Repeat("x", 100)
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				e.log.Info("storage server answered", zap.Int("n", i), zap.String("peer", "v4q3lcqkxyo6fsmh"), zap.String("pad", pad))
			}
		})
	}
}

// BenchmarkCoreWrite is the tap core's Write alone, as incident.Async's
// writer goroutine calls it, with one stalled subscriber.
func BenchmarkCoreWrite(b *testing.B) {
	e := newEnv(b)
	c, _ := e.connect()
	subscribe(b, logport.StreamFunc(c.OpenStream), logport.Window(1))
	core := e.port.Core()
	ent := zapcore.Entry{Level: zapcore.InfoLevel, Message: "storage server answered"}
	fields := []zapcore.Field{zap.Uint64("seq", 1), zap.Int("n", 7), zap.String("peer", "v4q3lcqkxyo6fsmh")}
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		core.Write(ent, fields)
	}
}

// BenchmarkThroughput measures how fast a subscriber drains 50,000 held
// entries over TCP loopback, by credit window: foolscap's 10 in flight
// against the default 1024.
func BenchmarkThroughput(b *testing.B) {
	const n = 50000
	for _, window := range []int{10, 100, logport.DefaultWindow} {
		b.Run(fmt.Sprintf("window=%d", window), func(b *testing.B) {
			e := newEnv(b, logport.WithHistory(), logport.WithBudget(64<<20))
			pad := strings.Repeat("x", 100)
			for i := range n {
				e.log.Info("storage server answered", zap.Int("n", i), zap.String("pad", pad))
			}
			c, _ := e.connect()
			var bytes int64
			b.ResetTimer()
			for range b.N {
				ctx, cancel := context.WithCancel(context.Background())
				var got int
				bytes = 0
				logport.Subscribe(ctx, logport.StreamFunc(c.OpenStream), func(en logport.Entry) {
					bytes += int64(len(en.JSON))
					if got++; got == n {
						cancel()
					}
				}, logport.CatchUp(), logport.Window(window))
				cancel()
				if got != n {
					b.Fatalf("got %d of %d", got, n)
				}
			}
			b.SetBytes(bytes)
			b.ReportMetric(float64(n)*float64(b.N)/b.Elapsed().Seconds(), "entries/s")
		})
	}
}
