package incident

import (
	"math/rand/v2"
	"strconv"
	"time"

	"go.uber.org/zap/zapcore"
)

// incident is one open or closed incident. While open it is guarded by
// recState.mu; once closed it belongs to the writer goroutine.
type incident struct {
	id         string
	opened     time.Time
	deadline   time.Time
	closed     time.Time
	closedBy   string // "window" or "close"
	timer      Timer
	history    *ringSet // may include the opening trigger, which is skipped
	trigger    record
	triggerSeq uint64

	triggers         uint64 // the opening one and every folded one
	peers            []string
	peerSet          map[string]struct{}
	peersOmitted     uint64
	trailing         []record
	trailingOmitted  uint64
	suppressedBefore uint64
}

func (inc *incident) addPeer(p string, limit int) {
	if p == "" {
		return
	}
	if _, ok := inc.peerSet[p]; ok {
		return
	}
	if len(inc.peers) >= limit {
		inc.peersOmitted++
		return
	}
	inc.peerSet[p] = struct{}{}
	inc.peers = append(inc.peers, p)
}

// observeLocked runs for triggers and for every entry while an incident is
// open. It reports whether the writer goroutine has work.
func (st *recState) observeLocked(r *Recorder, ent zapcore.Entry, seq uint64, fields []zapcore.Field, trig bool) (wake bool) {
	now := st.cfg.clock.Now()
	inc := st.open
	if inc != nil && !now.Before(inc.deadline) {
		// The window is over but its timer has not fired yet.
		st.closeLocked(inc, now)
		inc, wake = nil, true
	}
	if inc != nil {
		if trig {
			inc.triggers++
			st.stats.Triggers++
			st.stats.Folded++
			inc.addPeer(r.peer(fields), st.cfg.maxPeers)
		}
		if len(inc.trailing) < st.cfg.maxTrailing {
			inc.trailing = append(inc.trailing, record{ent: ent, seq: seq, fields: own(r.ctx, fields)})
		} else {
			inc.trailingOmitted++
		}
		return wake
	}
	if !trig {
		return wake
	}
	st.stats.Triggers++
	if now.Before(st.nextAllowed) {
		st.stats.Suppressed++
		st.suppressedPending++
		return wake
	}
	st.openLocked(r, ent, seq, fields, now)
	return wake
}

// own returns a new slice holding ctx then fields.
func own(ctx, fields []zapcore.Field) []zapcore.Field {
	out := make([]zapcore.Field, 0, len(ctx)+len(fields))
	return append(append(out, ctx...), fields...)
}

// newID returns 8 random hex digits.
func newID() string {
	return strconv.FormatUint(uint64(rand.Uint32())|1<<32, 16)[1:]
}

// peer names the peer an entry written through r concerns, if any.
func (r *Recorder) peer(fields []zapcore.Field) string {
	if p, ok := peerOf(fields); ok {
		return p
	}
	return r.ctxPeer
}

// openLocked opens an incident on the trigger ent. The incident takes the
// history rings as they are, and leaves spare ones in their place, so the
// caller copies nothing but the trigger itself.
func (st *recState) openLocked(r *Recorder, ent zapcore.Entry, seq uint64, fields []zapcore.Field, now time.Time) {
	inc := &incident{
		id:               newID(),
		opened:           now,
		deadline:         now.Add(st.cfg.window),
		closedBy:         "window",
		history:          st.rings,
		trigger:          record{ent: ent, seq: seq, fields: own(r.ctx, fields)},
		triggerSeq:       seq,
		triggers:         1,
		peerSet:          make(map[string]struct{}),
		suppressedBefore: st.suppressedPending,
	}
	inc.addPeer(r.peer(fields), st.cfg.maxPeers)
	st.suppressedPending = 0
	st.rings = st.spareRings
	st.spareRings = nil
	if st.rings == nil {
		st.rings = newRingSet(st.cfg.history)
	}
	st.open = inc
	st.stats.Incidents++
	inc.timer = st.cfg.clock.AfterFunc(st.cfg.window, func() { st.expire(inc) })
}

// expire closes inc when its window ends, unless it was closed already.
func (st *recState) expire(inc *incident) {
	st.mu.Lock()
	mine := st.open == inc
	if mine {
		st.closeLocked(inc, st.cfg.clock.Now())
	}
	st.mu.Unlock()
	if mine {
		st.signal()
	}
}

// closeLocked closes the open incident and queues it for writing.
func (st *recState) closeLocked(inc *incident, now time.Time) {
	st.open = nil
	inc.closed = now
	if inc.timer != nil {
		inc.timer.Stop()
	}
	st.nextAllowed = now.Add(st.cfg.rateLimit)
	if len(st.pending) >= maxPendingIncidents {
		st.stats.Discarded++
		return
	}
	st.pending = append(st.pending, inc)
}
