package incident

import (
	"context"
	"time"
	"unsafe"

	"go.uber.org/zap/zapcore"
)

// Queue reserves, in quarters of each bound (entries and bytes): how full
// the queue may be for an entry of a level to get in. Lower levels stop
// first, so the room left over is kept for the levels that matter; Error and
// above are the last to go.
const (
	infoShareQuarters  = 2 // Debug and Info (and below): half
	warnShareQuarters  = 3 // Warn: three quarters
	errorShareQuarters = 4 // Error, DPanic, Panic, Fatal: all of it
)

// SeqKey is the key of the sequence number field Async adds to every entry.
const SeqKey = "seq"

// entryOverhead is the memory a queued entry costs beyond its payloads and
// its fields: the queue slot (entry struct, core, offsets) and the seq field.
const entryOverhead = int(unsafe.Sizeof(queuedEntry{})) + fieldOverhead

// AsyncCore is a zapcore.Core that never blocks its caller. Write copies
// the entry into a bounded queue and returns; one goroutine writes the queue
// to the inner core. Make one with Async; stop it with Close.
type AsyncCore struct {
	s     *asyncState
	inner zapcore.Core
}

var _ zapcore.Core = (*AsyncCore)(nil)

// Async returns a core that queues entries for inner and writes them on a
// goroutine of its own, so a slow or stuck sink never holds up a caller.
//
// Fields are snapshotted in the caller's goroutine, so the log shows values
// as they were at the call: plain values (numbers, strings, bools, times,
// durations) are copied as they are, at no extra cost; bytes are copied; and
// Stringers, errors, object and array marshalers and reflected values are
// evaluated at the call, by replaying them once into a recording encoder
// through zap's own Field.AddTo. The inner core then writes exactly what it
// would have written at the call, whatever its encoder. (Encoders that keep
// Go types, such as zaptest/observer's, see reflected values as
// json.RawMessage and marshaled ints widened to int64.) A marshaler that
// panics yields a "<key>Error" field instead of a panic. The fields slice is
// copied; the caller's memory is never retained. The inner core must not
// retain the fields slice passed to its Write after Write returns (zap's own
// cores do not): the queue reuses that memory.
//
// The queue is bounded in entries and in bytes (WithMaxEntries,
// WithMaxBytes). An entry's size is estimated as its message, logger name and
// stack, plus for each field its key and string or byte payload, plus fixed
// overheads for the entry (240 bytes on 64-bit machines: the queue slot and
// the seq field) and for each field (64 bytes: the zapcore.Field itself).
// Caller file and function names are not counted: they are static strings
// the entry only points to.
//
// Debug and Info entries may fill only half of each bound and Warn entries
// three quarters; Error and above may fill all of it. An entry that does not
// fit is dropped and counted. The writer takes the whole queue at once; after
// writing a backlog during which entries were lost, it writes one Warn entry
// "N entries lost (seq A..B)" with fields lost, first_seq and last_seq (A
// and B are the first and last lost numbers; entries between them may have
// been written). Notices carry no seq and are counted apart (Notices).
//
// Every entry passed to Write gets a field "seq" (uint64) before its own
// fields (fields added by With come first, as the inner core holds them),
// from a counter shared by the core and all cores made from it by With.
// Numbers are given in Write order, to written and dropped entries alike,
// and the writer keeps that order, so a gap in the output is always a loss.
// Entries below the inner core's level never reach Write (Check filters
// them) and take no number.
//
// The one exception to never blocking: after a Panic or Fatal entry, after
// which zap panics or exits the process, Write waits up to the flush timeout
// for the queue to drain, so that the last words reach the sink.
//
// Check consults only inner's Enabled, not inner's Check; to sample, wrap
// the AsyncCore (zapcore.NewSamplerWithOptions(incident.Async(inner), ...)),
// which also keeps sampled-out entries from taking sequence numbers.
//
// The writer goroutine runs until Close.
func Async(inner zapcore.Core, opts ...Option) *AsyncCore {
	cfg := defaultAsyncConfig()
	for _, o := range opts {
		o(&cfg)
	}
	s := &asyncState{
		cfg:   cfg,
		root:  inner,
		fill:  newBatch(),
		spare: newBatch(),
		wake:  make(chan struct{}, 1),
		done:  make(chan struct{}),
	}
	for cls, q := range [...]int{infoShareQuarters, warnShareQuarters, errorShareQuarters} {
		s.limEntries[cls] = uint64(cfg.maxEntries * q / 4)
		s.limBytes[cls] = cfg.maxBytes / 4 * q
	}
	go s.run()
	return &AsyncCore{s: s, inner: inner}
}

// Enabled reports whether the inner core is enabled at level l.
func (c *AsyncCore) Enabled(l zapcore.Level) bool { return c.inner.Enabled(l) }

// Level reports the inner core's minimum enabled level.
func (c *AsyncCore) Level() zapcore.Level { return zapcore.LevelOf(c.inner) }

// With returns a core that adds fields to every entry and shares this core's
// queue, counters, sequence numbers and goroutine. The fields are
// snapshotted now and handed to the inner core's With.
func (c *AsyncCore) With(fields []zapcore.Field) zapcore.Core {
	frozen, _ := snapshot(fields)
	if len(frozen) > 0 && &frozen[0] == &fields[0] {
		frozen = append([]zapcore.Field(nil), fields...)
	}
	return &AsyncCore{s: c.s, inner: c.inner.With(frozen)}
}

// Check adds this core to ce if the inner core is enabled at the entry's
// level.
func (c *AsyncCore) Check(ent zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.inner.Enabled(ent.Level) {
		return ce.AddCore(ent, c)
	}
	return ce
}

// Write queues the entry, or drops and counts it when the queue has no room
// for its level, and returns at once. It never returns an error: a loss
// shows in Stats and in the output as a sequence gap and a notice.
func (c *AsyncCore) Write(ent zapcore.Entry, fields []zapcore.Field) error {
	fields, size := snapshot(fields)
	size += entryOverhead + len(ent.Message) + len(ent.LoggerName) + len(ent.Stack)
	if c.s.enqueue(c.inner, ent, fields, size) && ent.Level > zapcore.DPanicLevel {
		ctx, cancel := context.WithTimeout(context.Background(), c.s.cfg.flushTimeout)
		defer cancel()
		_ = c.s.flush(ctx, "flush")
	}
	return nil
}

// Sync waits until every entry queued before the call has been written and
// the inner core synced, or until the flush timeout (WithFlushTimeout,
// default 1 s) passes; then it returns a *TimeoutError (errors.Is(err,
// ErrTimeout)). Otherwise it returns the inner core's Sync error, if any.
func (c *AsyncCore) Sync() error {
	ctx, cancel := context.WithTimeout(context.Background(), c.s.cfg.flushTimeout)
	defer cancel()
	return c.s.flush(ctx, "sync")
}

// Flush is Sync bounded by ctx instead of the flush timeout. When ctx ends
// first it returns a *TimeoutError that also unwraps to ctx.Err().
func (c *AsyncCore) Flush(ctx context.Context) error {
	return c.s.flush(ctx, "flush")
}

// Close stops the writer goroutine after it has written what is queued and
// synced the inner core, waiting up to the flush timeout. If the inner core
// is still stuck then, Close returns a *TimeoutError; the entries still
// queued are dropped and counted, and the goroutine exits as soon as the
// inner core returns. Entries written after Close are dropped and counted.
// Close is idempotent and returns the same result every time; it closes the
// queue shared by every core made from this one by With.
func (c *AsyncCore) Close() error {
	s := c.s
	s.closeOnce.Do(func() {
		start := time.Now()
		s.mu.Lock()
		s.closing = true
		s.mu.Unlock()
		s.poke()
		t := time.NewTimer(s.cfg.flushTimeout)
		defer t.Stop()
		select {
		case <-s.done:
		case <-t.C:
			s.abandon.Store(true)
			s.mu.Lock()
			pending := s.queued
			s.mu.Unlock()
			s.closeErr = &TimeoutError{Op: "close", Pending: pending, Waited: time.Since(start)}
		}
	})
	return s.closeErr
}

// Stats returns a consistent snapshot of the counters; see AsyncStats.
func (c *AsyncCore) Stats() AsyncStats {
	s := c.s
	s.mu.Lock()
	defer s.mu.Unlock()
	return AsyncStats{
		Enqueued:    s.seq,
		Written:     s.written,
		Dropped:     s.dropped,
		Queued:      s.queued,
		QueuedBytes: s.queuedBytes,
		Errors:      s.errors,
		Notices:     s.notices,
	}
}
