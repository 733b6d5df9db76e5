// Package ttest holds what tether's tests share: a timeout scale for slow
// machines, waiting for a condition, a loopback TCP pair, this test binary
// re-run in a child process, and skips that say why a test cannot run here.
package ttest

import (
	"fmt"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"
)

// EnvScale names the environment variable that stretches every timeout
// and generous bound the tests set: TETHER_TIMEOUT_SCALE=3 on a machine
// three times slower than a developer's laptop.
const EnvScale = "TETHER_TIMEOUT_SCALE"

// RaceFactor is how much more Scale stretches under the race detector,
// which slows goroutine-heavy code five to ten times.
const RaceFactor = 10

// Race reports whether the race detector is compiled in.
const Race = raceEnabled

var scale = sync.OnceValue(func() float64 {
	s := 1.0
	if v := os.Getenv(EnvScale); v != "" {
		if f, err := strconv.ParseFloat(v, 64); err == nil && f > 0 {
			s = f
		} else {
			fmt.Fprintf(os.Stderr, "ttest: ignoring %s=%q: want a positive number\n", EnvScale, v)
		}
	}
	if Race {
		s *= RaceFactor
	}
	return s
})

// Scale is the factor by which Scaled stretches durations: the value of
// TETHER_TIMEOUT_SCALE (1 if unset), times RaceFactor under the race
// detector.
func Scale() float64 { return scale() }

// Scaled stretches d by Scale. Use it for timeouts and for bounds that
// must hold on a slow or busy machine, not for the promises (floors) a
// test exists to check.
func Scaled(d time.Duration) time.Duration { return time.Duration(float64(d) * Scale()) }

// WaitFor polls cond until it holds, and fails t if it does not within
// the timeout stretched by Scale; msg says what was awaited.
func WaitFor(t testing.TB, timeout time.Duration, cond func() bool, msg string) {
	t.Helper()
	d := Scaled(timeout)
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, msg)
		}
		time.Sleep(time.Millisecond)
	}
}

// Within returns what ch yields within d (not stretched: d is the bound
// under test), and whether it did.
func Within[T any](ch <-chan T, d time.Duration) (T, bool) {
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case v := <-ch:
		return v, true
	case <-tm.C:
		var zero T
		return zero, false
	}
}
