package scale

import (
	"slices"
	"testing"
	"time"
)

func TestSpread(t *testing.T) {
	ms := time.Millisecond
	most, mean, counts := spread([]time.Duration{120 * ms, 150 * ms, 190 * ms, 250 * ms, 410 * ms}, 100*ms)
	// Windows 1..4 (from the first arrival): 3, 1, 0, 1.
	if most != 3 || mean != 5.0/4 || !slices.Equal(counts, []int{0, 3, 1, 0, 1}) {
		t.Fatalf("most %d, mean %v, counts %v", most, mean, counts)
	}
	if most, mean, counts := spread(nil, 100*ms); most != 0 || mean != 0 || counts != nil {
		t.Fatalf("no arrivals: %d, %v, %v", most, mean, counts)
	}
}

// The bound grows with the partition's length, as the backoff does, up to
// its cap: a dial timeout plus 1.5 times the capped interval.
func TestBackBound(t *testing.T) {
	short, long, longer := BackBound(0), BackBound(20*time.Second), BackBound(time.Hour)
	if !(short < long && long <= longer) {
		t.Fatalf("bounds %v, %v, %v: not growing with the hold", short, long, longer)
	}
	if short < 5*time.Second || longer != 20*time.Second {
		t.Fatalf("bounds %v and %v: want at least the 5 s dial timeout, and 5 s + 1.5 x 10 s at the cap", short, longer)
	}
}
