package server

import (
	"context"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/tetherrpc/tether/rpc"
)

// maxPending bounds the connections a node handshakes at once, so a
// flood of silent dialers costs bounded memory; past it the oldest
// handshake is cut off (see slots.admit).
const maxPending = 512

// slots are the handshakes in progress.
type slots struct {
	timeout time.Duration // the handshake timeout

	mu      sync.Mutex
	pending []*pending
	live    int           // of them not cut off
	took    time.Duration // how long good handshakes took lately
	freed   chan struct{} // 1-buffered: a slot freed
}

// pending is a connection whose handshake is in progress.
type pending struct {
	nc      net.Conn
	start   time.Time
	evicted bool
}

func (s *slots) init(timeout time.Duration) {
	if timeout <= 0 {
		timeout = rpc.DefaultHandshakeTimeout
	}
	s.timeout, s.took, s.freed = timeout, firstHandshakeGuess, make(chan struct{}, 1)
}

// admit makes room for nc's handshake. While maxPending handshakes are in
// progress, it waits (the dialers behind nc wait in the listener's queue)
// until a slot frees, or until the oldest handshake has taken so much
// longer than good ones lately take that it is stalled: that one is cut
// off, and returned as victim for the caller to close. So a storm of good
// peers is admitted steadily, each in turn, while dialers that hold
// handshakes open to exhaust the slots lose them to the next arrival
// within about stale(). It returns a nil h if ctx ends meanwhile.
func (s *slots) admit(ctx context.Context, nc net.Conn) (h *pending, victim net.Conn) {
	h = &pending{nc: nc}
	s.mu.Lock()
	for s.live >= maxPending {
		i := slices.IndexFunc(s.pending, func(o *pending) bool { return !o.evicted })
		oldest := s.pending[i]
		stale := s.stale()
		age := time.Since(oldest.start)
		if age >= stale {
			oldest.evicted = true
			s.live--
			victim = oldest.nc
			break
		}
		s.mu.Unlock()
		t := time.NewTimer(stale - age)
		select {
		case <-s.freed:
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil, nil
		}
		t.Stop()
		s.mu.Lock()
	}
	h.start = time.Now()
	s.pending = append(s.pending, h)
	s.live++
	s.mu.Unlock()
	return h, victim
}

// stale is how long a handshake may take before a new arrival may cut it
// off when every slot is taken: eight times what good handshakes took
// lately, within [minStale, half the handshake timeout]. Under mu.
func (s *slots) stale() time.Duration {
	return min(max(minStale, 8*s.took), s.timeout/2)
}

// minStale: a good handshake on a quiet machine takes about a
// millisecond; 100 ms leaves room for a slow path and a busy node.
const minStale = 100 * time.Millisecond

// firstHandshakeGuess is what good handshakes are taken to last before any
// has finished: when thousands of peers dial a node that just started, the
// first 512 share the CPU and none finishes within a few milliseconds;
// cutting them would only make their dialers come back.
const firstHandshakeGuess = 250 * time.Millisecond

// done frees h's slot. ok says the handshake succeeded: its duration then
// feeds the average that tells stalled handshakes from slow ones (stale).
// It reports whether h may go on: not if it was cut off meanwhile, whose
// connection is closed already.
func (s *slots) done(h *pending, ok bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if i := slices.Index(s.pending, h); i >= 0 {
		s.pending = slices.Delete(s.pending, i, i+1)
	}
	if ok {
		// An exponentially weighted average over about the last 16.
		s.took += (time.Since(h.start) - s.took) / 16
	}
	if h.evicted {
		return false
	}
	s.live--
	select {
	case s.freed <- struct{}{}:
	default:
	}
	return true
}
