// Package cluster holds the system test of package cluster on a LAN of 20
// hosts (partition.LAN: a network namespace each, on a bridge), a node
// process on each: the cluster forms, a silenced host is evicted and
// declared dead, a rack cut off is evicted on both sides, both heal, and
// 5% packet loss for a minute changes nothing. It needs Linux, root, ip,
// nsenter and iptables, and skips, saying why, elsewhere.
package cluster

import (
	"os"
	"testing"

	"go.uber.org/goleak"

	"github.com/tetherrpc/tether/internal/ttest"
)

func TestMain(m *testing.M) {
	if role := ttest.Role(); len(role) > len(childRole) && role[:len(childRole)] == childRole {
		os.Exit(runChild(role[len(childRole):]))
	}
	goleak.VerifyTestMain(m)
}
