package liveness_test

import (
	"fmt"
	"time"

	"github.com/tetherrpc/tether/liveness"
)

// The adaptive timeout follows measured round trips, within the preset's
// bounds.
func ExampleEstimator() {
	lan := liveness.LAN()
	var e liveness.Estimator
	for _, rtt := range []time.Duration{100, 120, 90, 110} {
		e.Observe(rtt * time.Millisecond)
	}
	fmt.Println(e.SRTT().Round(time.Millisecond), e.Timeout(lan.MinTimeout, lan.MaxTimeout).Round(time.Millisecond))
	// Output: 102ms 250ms
}

// Presets carry their reasons beside each value; WithInterval rescales one.
func ExampleConfig_WithInterval() {
	c := liveness.LAN().WithInterval(100 * time.Millisecond)
	fmt.Println(c.Interval, c.MinTimeout, c.RetryInterval, c.HangAfter)
	// Output: 100ms 100ms 20ms 5s
}
