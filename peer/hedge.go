package peer

import (
	"slices"
	"sync"
	"time"
)

// Hedge learns how fast peers answer and says when a call is overdue: the
// 95th percentile of recent answers ("The Tail at Scale": hedging after the
// 95th percentile costs about 5% more requests and cuts the tail).
type Hedge struct {
	mu     sync.Mutex
	ring   [hedgeWindow]time.Duration
	n      int // samples held, up to hedgeWindow
	next   int
	cached time.Duration
	dirty  bool
}

const (
	hedgeWindow = 256
	// Before hedgeMinSamples answers, the delay is hedgeCold.
	hedgeMinSamples = 16
	hedgeCold       = 50 * time.Millisecond
	// The delay never goes below HedgeFloor: hedging a call that is merely
	// scheduled later than its peers wastes work.
	HedgeFloor = time.Millisecond
	// nor above HedgeCeiling, whatever was learnt.
	HedgeCeiling = 2 * time.Second
)

// NewHedge returns a Hedge with no samples.
func NewHedge() *Hedge { return &Hedge{} }

// Observe records how long an answer took.
func (h *Hedge) Observe(d time.Duration) {
	h.mu.Lock()
	h.ring[h.next] = d
	h.next = (h.next + 1) % hedgeWindow
	if h.n < hedgeWindow {
		h.n++
	}
	h.dirty = true
	h.mu.Unlock()
}

// Delay is the current hedge delay: the 95th percentile of the last 256
// answers, within [HedgeFloor, HedgeCeiling]; 50 ms before 16 answers.
func (h *Hedge) Delay() time.Duration {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.n < hedgeMinSamples {
		return hedgeCold
	}
	if h.dirty {
		s := make([]time.Duration, h.n)
		copy(s, h.ring[:h.n])
		slices.Sort(s)
		h.cached = min(max(s[h.n*95/100], HedgeFloor), HedgeCeiling)
		h.dirty = false
	}
	return h.cached
}
