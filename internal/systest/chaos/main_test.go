// Package chaos holds the chaos soak (TestChaos: faults of every kind at
// random against a grid of real nodes, every invariant checked as it
// happens) and the regressions it found. Most of it needs kernel-level
// partitions (Linux, root, iptables, unshare) and skips, saying why,
// elsewhere.
package chaos

import (
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
