package peer

import (
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

// nth agrees with sorting, on random input with and without repeats.
func TestHedgeNth(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for round := range 2000 {
		n := 1 + rng.IntN(hedgeWindow)
		s := make([]time.Duration, n)
		for i := range s {
			if round%2 == 0 {
				s[i] = time.Duration(rng.IntN(8)) // many repeats
			} else {
				s[i] = time.Duration(rng.Int64N(1e9))
			}
		}
		sorted := slices.Sorted(slices.Values(s))
		k := rng.IntN(n)
		if got := nth(slices.Clone(s), k); got != sorted[k] {
			t.Fatalf("nth(%v, %d) = %v, want %v", s, k, got, sorted[k])
		}
	}
}

// The delay follows new answers within hedgeStale of them.
func TestHedgeFollows(t *testing.T) {
	h := NewHedge()
	for range hedgeWindow {
		h.Observe(10 * time.Millisecond)
	}
	if d := h.Delay(); d != 10*time.Millisecond {
		t.Fatalf("delay %v", d)
	}
	for range hedgeWindow {
		h.Observe(100 * time.Millisecond)
	}
	if d := h.Delay(); d != 100*time.Millisecond {
		t.Fatalf("delay %v after a window of slower answers", d)
	}
}

// Delay costs no allocation, asked after every answer as FirstK does.
func TestHedgeDelayAllocs(t *testing.T) {
	h := NewHedge()
	i := 0
	if a := testing.AllocsPerRun(1000, func() {
		i++
		h.Observe(time.Duration(i) * time.Microsecond)
		h.Delay()
	}); a != 0 {
		t.Fatalf("%v allocations", a)
	}
}
