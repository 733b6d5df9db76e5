// Package ttgossip holds memberlist's configuration for tests of clusters
// on one machine.
package ttgossip

import (
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/tetherrpc/tether/internal/ttest"
)

// Config is memberlist tuned for loopback tests: probes every 250 ms
// (twice that under the race detector), so that a member is declared dead
// within a few seconds, and so that a probe under way when a node closes
// outlives the close by at most a probe interval, within goleak's wait.
func Config() *memberlist.Config {
	slow := time.Duration(1)
	if ttest.Race {
		slow = 2
	}
	mc := memberlist.DefaultLocalConfig()
	mc.ProbeInterval = slow * 250 * time.Millisecond
	mc.ProbeTimeout = slow * 125 * time.Millisecond
	mc.GossipInterval = 50 * time.Millisecond
	mc.PushPullInterval = 2 * time.Second
	mc.SuspicionMult = 3
	mc.IndirectChecks = 3 // DefaultLANConfig's: a member reached through three others
	mc.RetransmitMult = 4 // DefaultLANConfig's: with DefaultLocalConfig's 2, news of a join misses a member now and then
	mc.TCPTimeout = slow * time.Second
	mc.GossipToTheDeadTime = 2 * time.Second
	return mc
}
