package incident

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap/zapcore"
)

// asyncState is what an AsyncCore and the cores made from it share.
//
// One mutex guards the queue and every counter. Write holds it for a few
// dozen nanoseconds (a number, a bounds check, copying the fields into the
// batch's slab); the writer holds it to swap the whole batch out and, every
// publishEvery entries, to move counts from queued to written. Stats takes
// the same mutex, which is what makes Enqueued == Written + Dropped + Queued
// exact in every snapshot, at no cost to the hot path beyond the lock it
// takes anyway. There is no channel operation per entry: the writer is
// woken through a 1-buffered channel only when it sleeps.
type asyncState struct {
	cfg  asyncConfig
	root zapcore.Core // receives notices and Sync

	mu          sync.Mutex
	fill        *batch // producers append here
	spare       *batch // empty; nil while the writer holds it
	seq         uint64 // last number given out == entries offered
	written     uint64
	dropped     uint64
	queued      uint64
	queuedBytes int
	errors      uint64
	notices     uint64
	loss        lossRecord // drops not yet reported
	idle        bool       // writer is waiting for wake
	closing     bool
	exited      bool
	syncReq     uint64 // flush tickets handed out
	syncDone    uint64 // flush tickets served
	syncErr     error
	changed     chan struct{} // closed when syncDone moves; nil if nobody waits
	limEntries  [3]uint64
	limBytes    [3]int

	wake      chan struct{} // 1-buffered
	done      chan struct{} // closed when the writer exits
	abandon   atomic.Bool   // Close gave up: drop the rest and exit
	closeOnce sync.Once
	closeErr  error
}

// levelClass maps a level to its queue reserve class.
func levelClass(l zapcore.Level) int {
	switch {
	case l <= zapcore.InfoLevel:
		return 0
	case l == zapcore.WarnLevel:
		return 1
	default:
		return 2
	}
}

// enqueue gives the entry its number and queues it; it reports whether the
// entry was accepted.
func (s *asyncState) enqueue(core zapcore.Core, ent zapcore.Entry, fields []zapcore.Field, size int) bool {
	cls := levelClass(ent.Level)
	s.mu.Lock()
	s.seq++
	seq := s.seq
	if s.closing {
		s.dropped++
		s.mu.Unlock()
		return false
	}
	if s.queued >= s.limEntries[cls] || s.queuedBytes+size > s.limBytes[cls] {
		s.dropped++
		s.loss.add(seq)
		s.mu.Unlock()
		return false
	}
	s.fill.push(core, ent, seq, fields, size)
	s.queued++
	s.queuedBytes += size
	wake := s.idle
	s.idle = false
	s.mu.Unlock()
	if wake {
		// Only when the writer sleeps, and outside the lock: waking a
		// goroutine can cost a system call.
		s.poke()
	}
	return true
}

// poke wakes the writer if it waits; the channel holds one token, so this
// never blocks.
func (s *asyncState) poke() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// flush waits until the writer has served a ticket taken now.
func (s *asyncState) flush(ctx context.Context, op string) error {
	start := time.Now()
	s.mu.Lock()
	if s.exited {
		s.mu.Unlock()
		return nil
	}
	s.syncReq++
	ticket := s.syncReq
	s.poke()
	for s.syncDone < ticket {
		if s.changed == nil {
			s.changed = make(chan struct{})
		}
		ch := s.changed
		s.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			s.mu.Lock()
			pending := s.queued
			s.mu.Unlock()
			return &TimeoutError{Op: op, Pending: pending, Waited: time.Since(start), Cause: ctx.Err()}
		}
		s.mu.Lock()
	}
	err := s.syncErr
	s.mu.Unlock()
	return err
}

// lossRecord describes drops not yet reported in a notice.
type lossRecord struct {
	n, first, last uint64
}

func (l *lossRecord) add(seq uint64) {
	if l.n == 0 {
		l.first = seq
	}
	l.last = seq
	l.n++
}
