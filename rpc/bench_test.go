package rpc

import (
	"context"
	"testing"
)

// Benchmarks beside the code, over loopback TCP; the side-by-side
// comparison with other systems is in the bench module.

func BenchmarkCall(b *testing.B) {
	c, _ := pair(b, "tcp", nil, &Config{Mux: echoMux()})
	ctx := context.Background()
	req := make([]byte, 64)
	var resp []byte
	b.ReportAllocs()
	for b.Loop() {
		if err := c.Call(ctx, "echo", req, &resp); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkCallParallel(b *testing.B) {
	c, _ := pair(b, "tcp", nil, &Config{Mux: echoMux()})
	ctx := context.Background()
	b.SetParallelism(32)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		req := make([]byte, 64)
		var resp []byte
		for pb.Next() {
			if err := c.Call(ctx, "echo", req, &resp); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkCallDead is the cost of a call on a dead connection: no I/O.
func BenchmarkCallDead(b *testing.B) {
	c, _ := pair(b, "tcp", nil, &Config{Mux: echoMux()})
	c.Abort(nil)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		c.Call(ctx, "echo", nil, nil)
	}
}
