package incident

import (
	"fmt"
	"time"

	"go.uber.org/zap/zapcore"
)

// publishEvery is how many entries the writer writes between two updates of
// the shared counters; fewer updates mean less contention with callers, more
// mean fresher Stats and earlier room in the queue.
const publishEvery = 64

// queuedEntry is one slot of a batch. Its fields live in the batch's slab,
// seq field first.
type queuedEntry struct {
	core     zapcore.Core
	ent      zapcore.Entry
	off, end int
	size     int
}

// batch is a growable slice of entries plus one slab for all their fields,
// so that a queued entry costs no allocation once the batch has grown. The
// writer swaps the whole batch out under the lock and hands back an empty
// one: producers and the writer never touch the same batch.
type batch struct {
	ents   []queuedEntry
	fields []zapcore.Field
}

func newBatch() *batch {
	return &batch{
		ents:   make([]queuedEntry, 0, 256),
		fields: make([]zapcore.Field, 0, 1024),
	}
}

func (b *batch) push(core zapcore.Core, ent zapcore.Entry, seq uint64, fields []zapcore.Field, size int) {
	off := len(b.fields)
	b.fields = append(b.fields, zapcore.Field{Key: SeqKey, Type: zapcore.Uint64Type, Integer: int64(seq)})
	b.fields = append(b.fields, fields...)
	b.ents = append(b.ents, queuedEntry{core: core, ent: ent, off: off, end: len(b.fields), size: size})
}

// reset empties the batch, dropping references so the garbage collector can
// reclaim what the entries pointed to.
func (b *batch) reset() {
	clear(b.ents)
	b.ents = b.ents[:0]
	clear(b.fields)
	b.fields = b.fields[:0]
}

// run is the writer goroutine.
func (s *asyncState) run() {
	defer close(s.done)
	var served uint64 // flush tickets served
	for {
		s.mu.Lock()
		for len(s.fill.ents) == 0 && s.loss.n == 0 && s.syncReq == served && !s.closing {
			s.idle = true
			s.mu.Unlock()
			<-s.wake
			s.mu.Lock()
			s.idle = false
		}
		if s.abandon.Load() {
			s.dropLocked(s.fill.ents)
			s.fill.reset()
			s.exitLocked()
			s.mu.Unlock()
			return
		}
		b := s.fill
		s.fill, s.spare = s.spare, nil
		loss := s.loss
		s.loss = lossRecord{}
		req := s.syncReq
		closing := s.closing
		s.mu.Unlock()

		errs := s.writeBatch(b)
		if loss.n > 0 && !s.abandon.Load() {
			errs += s.writeNotice(loss)
		}
		var syncErr error
		final := closing && len(b.ents) == 0 && loss.n == 0
		if (req > served || final) && !s.abandon.Load() {
			syncErr = s.syncInner()
			if syncErr != nil {
				errs++
			}
		}
		b.reset()

		s.mu.Lock()
		s.spare = b
		s.errors += errs
		if req > served {
			served = req
			s.syncDone = req
			s.syncErr = syncErr
			s.notifyLocked()
		}
		if final || s.abandon.Load() {
			s.dropLocked(s.fill.ents)
			s.fill.reset()
			s.exitLocked()
			s.mu.Unlock()
			return
		}
		s.mu.Unlock()
	}
}

// writeBatch writes b's entries to their cores and returns how many failed.
func (s *asyncState) writeBatch(b *batch) (errs uint64) {
	n, bytes := 0, 0
	for i := range b.ents {
		if s.abandon.Load() {
			s.mu.Lock()
			s.publishLocked(n, bytes)
			s.dropLocked(b.ents[i:])
			s.mu.Unlock()
			return errs
		}
		q := &b.ents[i]
		if !s.writeOne(q.core, q.ent, b.fields[q.off:q.end]) {
			errs++
		}
		n++
		bytes += q.size
		if n == publishEvery {
			s.mu.Lock()
			s.publishLocked(n, bytes)
			s.mu.Unlock()
			n, bytes = 0, 0
		}
	}
	s.mu.Lock()
	s.publishLocked(n, bytes)
	s.mu.Unlock()
	return errs
}

// publishLocked moves n entries of the given size from queued to written.
func (s *asyncState) publishLocked(n, bytes int) {
	s.written += uint64(n)
	s.queued -= uint64(n)
	s.queuedBytes -= bytes
}

// dropLocked moves queued entries to dropped.
func (s *asyncState) dropLocked(ents []queuedEntry) {
	for i := range ents {
		s.queued--
		s.queuedBytes -= ents[i].size
		s.dropped++
	}
}

// exitLocked marks the writer gone and releases every flush waiter.
func (s *asyncState) exitLocked() {
	s.exited = true
	s.syncDone = s.syncReq
	s.notifyLocked()
}

func (s *asyncState) notifyLocked() {
	if s.changed != nil {
		close(s.changed)
		s.changed = nil
	}
}

// writeOne writes one entry, turning a panic into an error; it reports
// success.
func (s *asyncState) writeOne(core zapcore.Core, ent zapcore.Entry, fields []zapcore.Field) (ok bool) {
	defer func() {
		if p := recover(); p != nil {
			ok = false
			s.report(fmt.Errorf("incident: inner core panicked in Write: %v", p))
		}
	}()
	if err := core.Write(ent, fields); err != nil {
		s.report(err)
		return false
	}
	return true
}

func (s *asyncState) syncInner() (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("incident: inner core panicked in Sync: %v", p)
			s.report(err)
		}
	}()
	if err = s.root.Sync(); err != nil {
		s.report(err)
	}
	return err
}

// report hands an inner-core failure to the error handler, if any.
func (s *asyncState) report(err error) {
	if s.cfg.onError == nil {
		return
	}
	defer func() { _ = recover() }()
	s.cfg.onError(err)
}

// writeNotice writes the "entries lost" notice at Warn (or Error, if the
// inner core is not enabled at Warn); it returns 1 if the write failed.
func (s *asyncState) writeNotice(l lossRecord) uint64 {
	lvl := zapcore.WarnLevel
	if !s.root.Enabled(lvl) {
		lvl = zapcore.ErrorLevel
	}
	ent := zapcore.Entry{
		Level:   lvl,
		Time:    time.Now(),
		Message: fmt.Sprintf("%d entries lost (seq %d..%d)", l.n, l.first, l.last),
	}
	fields := []zapcore.Field{
		{Key: "lost", Type: zapcore.Uint64Type, Integer: int64(l.n)},
		{Key: "first_seq", Type: zapcore.Uint64Type, Integer: int64(l.first)},
		{Key: "last_seq", Type: zapcore.Uint64Type, Integer: int64(l.last)},
	}
	ok := s.writeOne(s.root, ent, fields)
	s.mu.Lock()
	s.notices++
	s.mu.Unlock()
	if !ok {
		return 1
	}
	return 0
}
