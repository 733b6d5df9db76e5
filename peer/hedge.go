package peer

import (
	"sync"
	"time"
)

// Hedge learns how fast peers answer and says when a call is overdue: the
// 95th percentile of recent answers ("The Tail at Scale": hedging after the
// 95th percentile costs about 5% more requests and cuts the tail).
type Hedge struct {
	mu      sync.Mutex
	ring    [hedgeWindow]time.Duration
	n       int // samples held, up to hedgeWindow
	next    int
	cached  time.Duration
	fresh   int // samples since cached was computed
	scratch [hedgeWindow]time.Duration
}

const (
	hedgeWindow = 256
	// Before hedgeMinSamples answers, the delay is hedgeCold.
	hedgeMinSamples = 16
	hedgeCold       = 50 * time.Millisecond
	// The delay is recomputed once hedgeStale samples have come since it
	// was last: a few samples more or less barely move the 95th percentile
	// of 256, and every FirstK call asks for the delay.
	hedgeStale = 8
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
	h.fresh++
	h.mu.Unlock()
}

// Delay is the current hedge delay: the 95th percentile of the last 256
// answers (give or take the last few), within [HedgeFloor, HedgeCeiling];
// 50 ms before 16 answers.
func (h *Hedge) Delay() time.Duration {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.n < hedgeMinSamples {
		return hedgeCold
	}
	if h.cached == 0 || h.fresh >= hedgeStale {
		s := h.scratch[:h.n]
		copy(s, h.ring[:h.n])
		h.cached = min(max(nth(s, h.n*95/100), HedgeFloor), HedgeCeiling)
		h.fresh = 0
	}
	return h.cached
}

// nth returns the k-th smallest of s (from 0), reordering s: Hoare's
// selection, linear on average.
func nth(s []time.Duration, k int) time.Duration {
	lo, hi := 0, len(s)-1
	for lo < hi {
		a, b, c := s[lo], s[lo+(hi-lo)/2], s[hi]
		pivot := max(min(a, b), min(max(a, b), c)) // the median of three
		i, j := lo, hi
		for i <= j {
			for s[i] < pivot {
				i++
			}
			for s[j] > pivot {
				j--
			}
			if i <= j {
				s[i], s[j] = s[j], s[i]
				i++
				j--
			}
		}
		switch {
		case k <= j:
			hi = j
		case k >= i:
			lo = i
		default:
			return s[k]
		}
	}
	return s[k]
}
