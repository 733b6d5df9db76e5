package rpc

import (
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/hashicorp/yamux"
)

// outFrame is one frame waiting for the writer.
type outFrame struct {
	kind kind
	id   uint64
	buf  []byte        // a whole request frame (call != nil), or a payload
	call *call         // for requests: skipped unless still queued
	sent chan struct{} // for goaway: closed once written
}

// enqueue hands a frame to the writer. It returns false when the connection
// is dead.
func (c *Conn) enqueue(f outFrame, control bool) bool {
	c.wmu.Lock()
	if c.wclosed {
		c.wmu.Unlock()
		return false
	}
	if control {
		c.ctlq = append(c.ctlq, f)
	} else {
		c.wq = append(c.wq, f)
	}
	c.queued += len(f.buf) + headerSize
	start := !c.writerUp
	if start {
		c.writerUp = true
		c.wg.Add(1)
	}
	c.wmu.Unlock()
	if start {
		go c.writeLoop()
		return true
	}
	select {
	case c.wake <- struct{}{}:
	default: // already woken
	}
	return true
}

// writerIdle is how long the writer waits for work before it exits: less
// than a probe interval, so a connection that only carries probes keeps no
// writer between them. The writer is a goroutine of its own (not the
// caller's), so that a write blocked in the kernel never holds up a caller
// whose context ends; it lives on while calls keep coming, because starting
// a goroutine costs an allocation, and it leaves an idle connection,
// because 10,000 idle peers should not keep 10,000 writers.
const writerIdle = 100 * time.Millisecond

// writeLoop is the connection's one writer. Everything queued at once goes
// out in one write, control frames first.
func (c *Conn) writeLoop() {
	defer c.wg.Done()
	idle := time.NewTimer(writerIdle)
	defer idle.Stop()
	// The queues' spare slices and the batch buffer live while the writer
	// does: an idle connection keeps none.
	var spareCtl, spareQ []outFrame
	var batch []byte
	for {
		for {
			c.wmu.Lock()
			if c.wclosed || (len(c.ctlq) == 0 && len(c.wq) == 0) {
				c.writing = false
				c.wmu.Unlock()
				break
			}
			c.writing = true
			ctl, q := c.ctlq, c.wq
			c.ctlq, c.wq = spareCtl[:0], spareQ[:0]
			c.wmu.Unlock()

			var err error
			batch, err = c.writeBatch(batch, ctl, q)
			n := 0
			for _, f := range ctl {
				n += len(f.buf) + headerSize
			}
			for _, f := range q {
				n += len(f.buf) + headerSize
			}
			clear(ctl)
			clear(q)

			c.wmu.Lock()
			spareCtl, spareQ = ctl[:0], q[:0]
			if c.queued -= n; c.queued <= c.cfg.MaxWriteQueue/2 {
				c.drained.Broadcast()
			}
			c.wmu.Unlock()
			if err != nil {
				c.Abort(c.transportCause(err))
				return
			}
		}
		idle.Reset(writerIdle)
		select {
		case <-c.wake:
		case <-c.done:
			return
		case <-idle.C:
			c.wmu.Lock()
			if len(c.ctlq) == 0 && len(c.wq) == 0 {
				c.writerUp = false      // the next enqueue starts a writer
				c.ctlq, c.wq = nil, nil // an idle connection keeps no queue
				c.wmu.Unlock()
				return
			}
			c.wmu.Unlock()
		}
	}
}

// directWrite is the size above which a frame is written on its own rather
// than copied into the batch.
const directWrite = 32 << 10

// writeBatch writes the frames of ctl, then those of q, copied into batch
// (kept for the next batch if not too large, and returned).
func (c *Conn) writeBatch(batch []byte, ctl, q []outFrame) ([]byte, error) {
	b := batch[:0]
	var sent []chan struct{}
	for _, f := range ctl {
		if f.kind == kindProbe {
			if err := c.wire.ping(uint32(f.id)); err != nil {
				return b, err
			}
			continue
		}
		b = appendHeader(b, f.kind, len(f.buf), f.id)
		b = append(b, f.buf...)
		if f.sent != nil {
			sent = append(sent, f.sent)
		}
	}
	for _, f := range q {
		if f.call != nil && !f.call.state.CompareAndSwap(stateQueued, stateSent) {
			continue // the caller gave up: never written
		}
		if f.call == nil { // a response, error or goaway: header here, payload in buf
			b = appendHeader(b, f.kind, len(f.buf), f.id)
		}
		if f.sent != nil {
			sent = append(sent, f.sent)
		}
		if len(f.buf) < directWrite {
			b = append(b, f.buf...)
			continue
		}
		if len(b) > 0 {
			if _, err := c.ctrl.Write(b); err != nil {
				return b, err
			}
			b = b[:0]
		}
		if _, err := c.ctrl.Write(f.buf); err != nil {
			return b, err
		}
	}
	if len(b) > 0 {
		if _, err := c.ctrl.Write(b); err != nil {
			return b, err
		}
	}
	if cap(b) > 1<<20 {
		b = nil
	}
	for _, s := range sent {
		close(s)
	}
	return b[:0], nil
}

// transportCause explains why the transport failed, preferring what the
// socket said over what yamux made of it.
func (c *Conn) transportCause(err error) error {
	if cause := c.leaving.Load(); cause != nil {
		return *cause
	}
	if terr := c.wire.transportErr(); terr != nil {
		err = terr
	}
	if errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("connection closed by the peer in the middle of a frame: %w", err)
	}
	if errors.Is(err, io.EOF) || errors.Is(err, yamux.ErrStreamClosed) || errors.Is(err, yamux.ErrSessionShutdown) {
		return fmt.Errorf("connection closed by the peer: %w", io.EOF)
	}
	return err
}

// waitForRoom holds the reader while more than MaxWriteQueue bytes wait to
// be written: a peer that does not read what it asked for gets no more of
// its requests served, so it cannot make us hold answers without bound.
// (If it stays stuck, it answers no probe either, and liveness evicts it.)
func (c *Conn) waitForRoom() {
	c.wmu.Lock()
	for c.queued > c.cfg.MaxWriteQueue && !c.wclosed {
		c.stats.readerPaused.Add(1)
		c.drained.Wait()
	}
	c.wmu.Unlock()
}
