package rpc

import (
	"context"
	"encoding/binary"
	"testing"
	"time"
)

func TestPing(t *testing.T) {
	forEachTransport(t, func(t *testing.T, tr string) {
		c, s := pair(t, tr, nil, nil)
		for _, x := range []*Conn{c, s} {
			rtt, err := x.Ping(context.Background())
			if err != nil || rtt <= 0 || rtt > time.Second {
				t.Fatalf("ping: %v %v", rtt, err)
			}
		}
		before := c.LastReceived()
		if _, err := c.Ping(context.Background()); err != nil {
			t.Fatal(err)
		}
		if !c.LastReceived().After(before) {
			t.Fatal("LastReceived did not move with inbound bytes")
		}
	})
}

// Probes are yamux pings: they put no byte on the control stream, so an
// idle connection's probes start no reader on either side.
func TestProbesLeaveTheControlStreamAlone(t *testing.T) {
	forEachTransport(t, func(t *testing.T, tr string) {
		c, s := pair(t, tr, nil, nil)
		waitParked(t, c)
		waitParked(t, s)
		cIn, sIn := c.wire.ctrlIn.Load(), s.wire.ctrlIn.Load()
		for range 20 {
			for _, x := range []*Conn{c, s} {
				if _, err := x.Ping(context.Background()); err != nil {
					t.Fatal(err)
				}
				if readerRunning(c) || readerRunning(s) {
					t.Fatal("a probe started a control-stream reader")
				}
			}
		}
		if c.wire.ctrlIn.Load() != cIn || s.wire.ctrlIn.Load() != sIn {
			t.Fatalf("probes put %d and %d bytes on the control stream, want none",
				c.wire.ctrlIn.Load()-cIn, s.wire.ctrlIn.Load()-sIn)
		}
	})
}

// Many probes in flight at once are all answered, however the answers
// batch in the transport's reads, and none is left awaiting one.
func TestConcurrentProbes(t *testing.T) {
	c, _ := pair(t, "tcp", nil, nil)
	const n = maxProbes
	errs := make(chan error, n)
	for range n {
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_, err := c.Ping(ctx)
			errs <- err
		}()
	}
	for range n {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	c.mu.Lock()
	left := len(c.probes)
	c.mu.Unlock()
	if left != 0 {
		t.Fatalf("%d probes still awaiting an answer after all were answered", left)
	}
}

// An answer to a probe never sent is ignored, as yamux ignores one: the
// connection lives on, and its probes still work.
func TestStrayProbeAnswer(t *testing.T) {
	c, s := pair(t, "tcp", nil, nil)
	var hdr [yamuxHeaderSize]byte
	hdr[1] = yamuxTypePing
	binary.BigEndian.PutUint16(hdr[2:4], yamuxFlagACK)
	binary.BigEndian.PutUint32(hdr[8:12], 0xdead)
	if err := s.wire.sendFrame(hdr[:]); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Ping(context.Background()); err != nil {
		t.Fatalf("ping after a stray answer: %v", err)
	}
	if err := c.Err(); err != nil {
		t.Fatalf("a stray answer killed the connection: %v", err)
	}
}
