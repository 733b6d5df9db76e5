package peer

import (
	"errors"
	"io"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/tetherrpc/tether/liveness"
	"github.com/tetherrpc/tether/rpc"
)

// How a burst of evictions is logged. The first foldSingles of a burst are
// logged one line each, as a lone eviction is; the rest are folded into a
// summary line, written when the burst has been quiet for foldQuiet, or
// foldMaxSpan after its first folded eviction while the storm goes on (then
// again every foldMaxSpan). A burst ends after foldQuiet without eviction.
//
// The quiet period is a few heartbeats: the peers lost to one fault are
// convicted within a probe interval or two of each other, so they land in
// one burst; an unrelated eviction a second later starts a new one.
const (
	foldSingles = 3
	foldQuiet   = time.Second
	foldMaxSpan = 10 * time.Second
	foldSample  = 10 // peer IDs named in a summary
)

// A mass failure opens one incident: the first summary written once the
// burst has evicted at least massMin distinct peers, and at least one in
// massFraction of those the registry held when the burst began, carries the
// incident field; no other line of the burst does. (The recorder folds
// whatever else triggers within its window into the same incident.)
// Losing a tenth of one's peers at once points at a fault near this node or
// shared by many (a switch, a partition of our own side, an overloaded host),
// for which the history the incident keeps is worth having. A lone dead
// peer, a few peers flapping, or the churn of a large network never opens
// one: ordinary evictions are not incidents.
const (
	massMin      = 20
	massFraction = 10
	// incidentKey marks a log entry that opens an incident below Error
	// (the node's incident recorder treats it as a trigger).
	incidentKey = "incident"
)

// foldClock is the time of a fold; tests drive a fake one.
type foldClock interface {
	Now() time.Time
	// AfterFunc calls f once after d, on its own goroutine; stop
	// reports whether it prevented the call.
	AfterFunc(d time.Duration, f func()) (stop func() bool)
}

type realFoldClock struct{}

func (realFoldClock) Now() time.Time { return time.Now() }

func (realFoldClock) AfterFunc(d time.Duration, f func()) func() bool {
	return time.AfterFunc(d, f).Stop
}

// fold logs a burst of like events (evictions, or disconnections) in a few
// lines: see foldSingles. It starts no goroutine of its own but one timer
// while a summary is pending, and writes a pending summary at close.
type fold struct {
	log     *zap.Logger
	level   zapcore.Level
	summary string // the summary line's message
	clock   foldClock
	mass    bool // summaries may open an incident

	mu       sync.Mutex
	burst    int             // events in the current burst, 0 if none
	size     int             // peers the registry held when the burst began
	opened   bool            // the burst's incident was asked for
	distinct map[ID]struct{} // the burst's peers, until opened (mass only)
	last     time.Time       // the burst's latest event
	pend     foldSummary
	stop     func() bool // the pending summary's timer, if armed
	timerRun sync.WaitGroup
	closed   bool
}

// foldSummary is what a summary line says.
type foldSummary struct {
	count       int // events folded into it
	calls       int // calls they failed
	causes      causeCounts
	sample      []string
	omitted     int
	first, last time.Time
	incident    bool // the line opens the burst's incident
}

// causeCounts is the count of events per cause class, in the order the
// classes first came.
type causeCounts []causeCount

type causeCount struct {
	class string
	n     int
}

func (c causeCounts) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	for _, cc := range c {
		enc.AddInt(cc.class, cc.n)
	}
	return nil
}

func (c causeCounts) add(class string) causeCounts {
	for i := range c {
		if c[i].class == class {
			c[i].n++
			return c
		}
	}
	return append(c, causeCount{class, 1})
}

func newFold(log *zap.Logger, level zapcore.Level, summary string, clock foldClock, mass bool) *fold {
	return &fold{log: log, level: level, summary: summary, clock: clock, mass: mass}
}

// single records an event at time at, of peer id, whose cause is of class
// and which failed calls outstanding calls; size is how many peers the
// registry held just before. It reports whether the caller should log the
// event on a line of its own; if not, the event is folded into a summary.
func (f *fold) single(at time.Time, id ID, class string, calls, size int) bool {
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return true
	}
	var flush *foldSummary
	if f.burst > 0 && at.Sub(f.last) >= foldQuiet {
		// The burst ended (its timer may not have run yet).
		if f.pend.count > 0 {
			s := f.takeLocked()
			flush = &s
		}
		f.burst = 0
	}
	if f.burst == 0 {
		f.size, f.opened = size, false
		clear(f.distinct)
	}
	f.burst++
	if f.mass && !f.opened {
		if f.distinct == nil {
			f.distinct = make(map[ID]struct{})
		}
		f.distinct[id] = struct{}{}
	}
	if at.After(f.last) {
		f.last = at
	}
	if f.burst <= foldSingles {
		f.mu.Unlock()
		f.write(flush)
		return true
	}
	p := &f.pend
	if p.count == 0 {
		p.first = at
	}
	p.count++
	p.calls += calls
	p.last = at
	p.causes = p.causes.add(class)
	if len(p.sample) < foldSample {
		p.sample = append(p.sample, string(id))
	} else {
		p.omitted++
	}
	if f.stop == nil {
		f.armLocked(foldQuiet)
	}
	f.mu.Unlock()
	f.write(flush)
	return false
}

func (f *fold) armLocked(d time.Duration) {
	f.timerRun.Add(1)
	f.stop = f.clock.AfterFunc(d, f.fire)
}

// fire writes the pending summary if the burst has gone quiet or the
// summary spans foldMaxSpan; else it waits for the sooner of the two.
func (f *fold) fire() {
	defer f.timerRun.Done()
	f.mu.Lock()
	f.stop = nil
	if f.closed || f.pend.count == 0 {
		f.mu.Unlock()
		return
	}
	now := f.clock.Now()
	quietAt := f.last.Add(foldQuiet)
	due := earlier(quietAt, f.pend.first.Add(foldMaxSpan))
	if now.Before(due) {
		f.armLocked(due.Sub(now))
		f.mu.Unlock()
		return
	}
	s := f.takeLocked()
	if !now.Before(quietAt) {
		f.burst = 0
	}
	f.mu.Unlock()
	f.write(&s)
}

// earlier returns the earlier of two instants.
func earlier(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

func (f *fold) takeLocked() foldSummary {
	s := f.pend
	f.pend = foldSummary{}
	if n := len(f.distinct); f.mass && !f.opened && n >= massMin && n*massFraction >= f.size {
		f.opened = true
		s.incident = true
		f.distinct = nil // (bounded meanwhile by size/massFraction)
	}
	return s
}

// write logs a summary (nil: nothing).
func (f *fold) write(s *foldSummary) {
	if s == nil || s.count == 0 {
		return
	}
	if ce := f.log.Check(f.level, f.summary); ce != nil {
		fields := []zap.Field{
			zap.Int("count", s.count),
			zap.Object("causes", s.causes),
			zap.Int("calls_cancelled", s.calls),
			zap.Strings("peers", s.sample),
			zap.Int("peers_omitted", s.omitted),
			zap.Time("first", s.first),
			zap.Time("last", s.last),
			zap.Duration("span", s.last.Sub(s.first).Round(time.Millisecond)),
		}
		if s.incident {
			fields = append(fields, zap.Bool(incidentKey, true))
		}
		ce.Write(fields...)
	}
}

// close writes the pending summary, if any, and folds nothing more: later
// events are logged one line each. No timer of the fold runs after it.
func (f *fold) close() {
	f.mu.Lock()
	f.closed = true
	stop := f.stop
	f.stop = nil
	f.mu.Unlock()
	if stop != nil && stop() {
		f.timerRun.Done() // it will never run
	}
	f.timerRun.Wait()
	f.mu.Lock()
	var s *foldSummary
	if f.pend.count > 0 {
		t := f.takeLocked()
		s = &t
	}
	f.mu.Unlock()
	f.write(s)
}

// CauseClass sorts a cause of death into a small, fixed set of classes:
// silent, hung, unanswered, protocol_violation, peer_left, closed,
// replaced, connection_closed, connection_reset, tcp_timeout or other. The
// summary of a burst of evictions counts by them, and so do a node's
// eviction metrics.
func CauseClass(err error) string {
	var v *liveness.Verdict
	switch {
	case errors.As(err, &v):
		switch v.Kind {
		case liveness.Silent:
			return "silent"
		case liveness.Hung:
			return "hung"
		}
		return "unanswered"
	case errors.Is(err, rpc.ErrProtocolViolation):
		return "protocol_violation"
	case errors.Is(err, rpc.ErrPeerLeft):
		return "peer_left"
	case errors.Is(err, rpc.ErrClosed):
		return "closed"
	case errors.Is(err, ErrReplaced):
		return "replaced"
	case errors.Is(err, io.EOF):
		return "connection_closed"
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return "connection_reset"
	case errors.Is(err, syscall.ETIMEDOUT):
		return "tcp_timeout"
	}
	return "other"
}
