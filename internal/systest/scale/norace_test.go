//go:build !race

package scale_test

// raceEnabled reports whether the race detector is compiled in.
const raceEnabled = false
