package rpc

import (
	"context"
	"slices"
	"time"
)

type probe struct {
	nonce uint64
	sent  int64
	fn    func(time.Duration)
}

// Probe sends a liveness probe. fn gets the round trip when the answer
// arrives; it runs on the connection's reader and must not block. If the
// connection dies first, fn is never called. Probe never blocks. The answer
// comes from the peer's dispatcher, so a hung process does not answer even
// when its kernel still acknowledges our bytes.
func (c *Conn) Probe(fn func(rtt time.Duration)) error {
	c.mu.Lock()
	if c.dead != nil {
		c.mu.Unlock()
		return c.deadErr()
	}
	c.probeID++
	nonce := c.probeID
	c.probes = append(c.probes, probe{nonce: nonce, sent: nanotime(), fn: fn})
	if len(c.probes) > maxProbes {
		c.probes = slices.Delete(c.probes, 0, 1) // forget the oldest unanswered
	}
	c.mu.Unlock()
	c.enqueue(outFrame{kind: kindPing, id: nonce}, true)
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

func (c *Conn) finishProbe(nonce uint64) error {
	c.mu.Lock()
	var pr probe
	i := slices.IndexFunc(c.probes, func(p probe) bool { return p.nonce == nonce })
	ok := i >= 0
	if ok {
		pr = c.probes[i]
		if c.probes = slices.Delete(c.probes, i, i+1); len(c.probes) == 0 {
			c.probes = nil // an idle connection holds none
		}
	}
	issued := c.probeID
	c.mu.Unlock()
	if !ok {
		if nonce == 0 || nonce > issued {
			return violation("pong %d for a ping never sent", nonce)
		}
		return nil // forgotten: too old
	}
	rtt := nanotime() - pr.sent
	c.wire.win.noteRTT(rtt)
	pr.fn(time.Duration(rtt))
	return nil
}
