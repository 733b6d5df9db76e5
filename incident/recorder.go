package incident

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap/zapcore"
)

// maxPendingIncidents bounds closed incidents waiting for the disk. With the
// default rate limit there is rarely more than one.
const maxPendingIncidents = 16

// maxFiles bounds the list Files returns.
const maxFiles = 1024

// Recorder is a zapcore.Core that remembers recent entries and, when one of
// them is a trigger (by default Error or above), writes an incident file:
// the history before the trigger, the trigger, and what followed. Tee it
// beside the core that writes the log:
//
//	core := zapcore.NewTee(incident.Async(main), rec)
//
// History is kept in one ring per level (sizes set by WithHistory); the
// opening trigger takes the rings with it and leaves spare ones, so the call
// that triggers copies nothing but itself. The history of an incident thus
// starts after the previous incident opened. The incident then stays open for the
// trailing window (WithTrailing, default 5 s from the opening trigger): it
// records trailing entries (at most 100 by default) and folds in every
// further trigger, counting it and collecting its peer (the string field
// PeerKey). When the window ends the incident is closed and handed to a
// goroutine that writes it; for the rate limit that follows (WithRateLimit,
// default 60 s) triggers only count as suppressed. No call to Write ever
// waits for the disk: it takes a short lock and appends to memory.
//
// Each incident is one file in the directory, named
// incident-<opening time, UTC, 20261125T140102.123Z>-<8 hex digits>.json,
// written under a hidden temporary name and renamed when complete. It holds
// JSON lines: a header object (key "incident", the id), the history entries
// oldest first, the opening trigger, the trailing entries, and a trailer
// object (key "trailer": true). Entries are zap JSON objects with keys ts,
// level, logger, caller, msg, stacktrace, a "seq" field (the Recorder's own
// sequence number, in record order) and the entry's fields. See
// Header and Trailer for the rest.
type Recorder struct {
	st      *recState
	ctx     []zapcore.Field // fields added by With
	ctxPeer string
}

var _ zapcore.Core = (*Recorder)(nil)

// recState is what a Recorder and the cores made from it share.
type recState struct {
	cfg recorderConfig
	dir string

	mu                sync.Mutex
	seq               uint64
	rings             *ringSet
	spareRings        *ringSet
	open              *incident
	nextAllowed       time.Time
	suppressedPending uint64
	stats             RecorderStats
	pending           []*incident
	files             []string
	failing           bool // a write failed and was reported; no success since
	closed            bool

	wake      chan struct{}
	done      chan struct{}
	abandon   atomic.Bool
	closeOnce sync.Once
	closeErr  error
}

// NewRecorder returns a Recorder writing incident files into dir, which it
// creates if needed. It starts one goroutine, stopped by Close.
func NewRecorder(dir string, opts ...RecorderOption) (*Recorder, error) {
	cfg := defaultRecorderConfig()
	for _, o := range opts {
		o(&cfg)
	}
	if dir == "" {
		return nil, errors.New("incident: recorder directory is empty")
	}
	if err := cfg.fs.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("incident: recorder directory %s: %w", dir, err)
	}
	st := &recState{
		cfg:        cfg,
		dir:        dir,
		rings:      newRingSet(cfg.history),
		spareRings: newRingSet(cfg.history),
		wake:       make(chan struct{}, 1),
		done:       make(chan struct{}),
	}
	go st.run()
	return &Recorder{st: st}, nil
}

// Enabled reports whether the Recorder records entries of level l.
func (r *Recorder) Enabled(l zapcore.Level) bool { return r.st.cfg.level.Enabled(l) }

// With returns a core recording into the same history and incidents, adding
// fields (snapshotted now) to every entry. A string field PeerKey among them
// names the peer of triggers written through it.
func (r *Recorder) With(fields []zapcore.Field) zapcore.Core {
	frozen, _ := snapshot(fields)
	ctx := make([]zapcore.Field, 0, len(r.ctx)+len(frozen))
	ctx = append(append(ctx, r.ctx...), frozen...)
	peer := r.ctxPeer
	if p, ok := peerOf(frozen); ok {
		peer = p
	}
	return &Recorder{st: r.st, ctx: ctx, ctxPeer: peer}
}

// Check adds the Recorder to ce if it records the entry's level.
func (r *Recorder) Check(ent zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if r.Enabled(ent.Level) {
		return ce.AddCore(ent, r)
	}
	return ce
}

// Write records the entry and, if it is a trigger, opens an incident or
// folds into the open one. It never waits for the disk and never fails.
func (r *Recorder) Write(ent zapcore.Entry, fields []zapcore.Field) error {
	fields, _ = snapshot(fields)
	st := r.st
	trig := st.cfg.trigger(ent, fields)
	st.mu.Lock()
	if st.closed {
		st.mu.Unlock()
		return nil
	}
	st.seq++
	seq := st.seq
	st.stats.Recorded++
	st.rings.add(ent, seq, r.ctx, fields)
	wake := false
	if trig || st.open != nil {
		wake = st.observeLocked(r, ent, seq, fields, trig)
	}
	st.mu.Unlock()
	if wake {
		st.signal()
	}
	return nil
}

// Sync does nothing: incidents are written on their own schedule, and Close
// flushes them.
func (r *Recorder) Sync() error { return nil }

// Stats returns a snapshot of the counters.
func (r *Recorder) Stats() RecorderStats {
	r.st.mu.Lock()
	defer r.st.mu.Unlock()
	return r.st.stats
}

// Files returns the paths of the incident files written so far, oldest
// first (at most the last 1024).
func (r *Recorder) Files() []string {
	r.st.mu.Lock()
	defer r.st.mu.Unlock()
	return slices.Clone(r.st.files)
}

// Dir returns the directory incident files are written to.
func (r *Recorder) Dir() string { return r.st.dir }

// Close closes the open incident, if any, at once, waits up to the close
// timeout (WithCloseTimeout, default 2 s) for pending incident files to be
// written, and stops the writer goroutine. If the disk is still busy then,
// it returns a *TimeoutError; incidents not yet started are discarded and
// the goroutine exits when the write in progress returns. Entries written
// after Close are ignored. Close is idempotent and returns the same result
// every time; it closes the Recorder shared by every core made by With.
func (r *Recorder) Close() error {
	st := r.st
	st.closeOnce.Do(func() {
		start := time.Now()
		st.mu.Lock()
		st.closed = true
		if inc := st.open; inc != nil {
			inc.closedBy = "close"
			st.closeLocked(inc, st.cfg.clock.Now())
		}
		st.mu.Unlock()
		st.signal()
		t := time.NewTimer(st.cfg.closeTimeout)
		defer t.Stop()
		select {
		case <-st.done:
		case <-t.C:
			st.abandon.Store(true)
			st.mu.Lock()
			pending := uint64(len(st.pending)) + 1 // the one being written
			st.mu.Unlock()
			st.closeErr = &TimeoutError{Op: "close", Pending: pending, Waited: time.Since(start)}
		}
	})
	return st.closeErr
}

// signal wakes the writer goroutine.
func (st *recState) signal() {
	select {
	case st.wake <- struct{}{}:
	default:
	}
}

// peerOf finds the PeerKey string field.
func peerOf(fields []zapcore.Field) (string, bool) {
	for i := range fields {
		if fields[i].Key == PeerKey && fields[i].Type == zapcore.StringType {
			return fields[i].String, true
		}
	}
	return "", false
}
