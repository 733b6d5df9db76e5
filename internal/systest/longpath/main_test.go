// Package longpath holds the system tests of long paths: two nodes 300 ms
// apart (a partition.Proxy whose Link delays every byte) keep each other
// through bulk streams both ways and small calls beside them, with the WAN
// preset and with the default one, and still notice a real silent
// partition (iptables in a private network namespace) within the preset's
// bound; and a node that 100 peers upload to at once through a 50 ms round
// trip keeps its heap within its window budget. TETHER_LONGPATH sets the
// soaks' length (default 30s; 5s with -short).
package longpath

import (
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	uploadersChild() // in the uploaders' process, runs them and exits
	goleak.VerifyTestMain(m)
}
