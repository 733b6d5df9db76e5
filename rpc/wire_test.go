package rpc

import (
	"context"
	"testing"
)

// Evidence of life is whole control frames, or real progress; a trickle
// of bytes is not.
func TestWireEvidence(t *testing.T) {
	var w wireConn
	before := w.lastRecv.Load()
	for range 1000 {
		w.partial++ // what Read counts, a byte at a time
	}
	if w.lastRecv.Load() != before {
		t.Fatal("a trickle counted as life")
	}
	c, s := pair(t, "tcp", nil, &Config{Mux: echoMux()})
	_ = s
	t0 := c.LastReceived()
	if err := c.Call(context.Background(), "echo", []byte("x"), nil); err != nil {
		t.Fatal(err)
	}
	if !c.LastReceived().After(t0) {
		t.Fatal("an answer was not evidence of life")
	}
	t1 := c.LastReceived()
	big := make([]byte, 64<<10)
	if err := c.Call(context.Background(), "echo", big, nil); err != nil || !c.LastReceived().After(t1) {
		t.Fatalf("a 64 KiB answer: %v", err)
	}
}
