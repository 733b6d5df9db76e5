package rpc

import (
	"context"
	"slices"
	"time"
)

type probe struct {
	nonce uint32
	sent  int64
	fn    func(time.Duration)
}

// Probe sends a liveness probe. fn gets the round trip when the answer
// arrives; it runs on the connection's transport reader and must not
// block. If the connection dies first, fn is never called. Probe never
// blocks.
//
// A probe is a yamux ping, written between frames, and its answer comes
// from the peer's yamux session reader: neither touches the control
// stream, so an idle connection's probes start no reader on either side
// and leave no buffer behind. The answer shows the peer's process runs and
// reads its connection; a process that is stopped, or reads no more, does
// not answer even when its kernel still acknowledges our bytes.
func (c *Conn) Probe(fn func(rtt time.Duration)) error {
	c.mu.Lock()
	if c.dead != nil {
		c.mu.Unlock()
		return c.deadErr()
	}
	if c.probeID++; c.probeID == 0 {
		c.probeID = 1 // 0 is never a nonce
	}
	nonce := c.probeID
	c.probes = append(c.probes, probe{nonce: nonce, sent: nanotime(), fn: fn})
	if len(c.probes) > maxProbes {
		c.probes = slices.Delete(c.probes, 0, 1) // forget the oldest unanswered
	}
	c.mu.Unlock()
	c.enqueue(outFrame{kind: kindProbe, id: uint64(nonce)}, true)
	return nil
}

const maxProbes = 64

// Ping sends a probe and waits for its answer.
func (c *Conn) Ping(ctx context.Context) (time.Duration, error) {
	ch := make(chan time.Duration, 1)
	if err := c.Probe(func(d time.Duration) { ch <- d }); err != nil {
		return 0, err
	}
	select {
	case d := <-ch:
		return d, nil
	case <-ctx.Done():
		return 0, ctx.Err()
	case <-c.done:
		return 0, c.deadErr()
	}
}

// finishProbe takes the answer to probe nonce, on yamux's reader. An
// answer to a probe forgotten (too old) or never sent is dropped, as yamux
// drops an answer to a ping it did not send.
func (c *Conn) finishProbe(nonce uint32) {
	c.mu.Lock()
	i := slices.IndexFunc(c.probes, func(p probe) bool { return p.nonce == nonce })
	if i < 0 {
		c.mu.Unlock()
		return
	}
	pr := c.probes[i]
	if c.probes = slices.Delete(c.probes, i, i+1); len(c.probes) == 0 {
		c.probes = nil // an idle connection holds none
	}
	c.mu.Unlock()
	rtt := nanotime() - pr.sent
	c.wire.win.noteRTT(rtt)
	pr.fn(time.Duration(rtt))
}
