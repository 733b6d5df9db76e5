// Package soak holds the false-eviction soaks: under each adverse
// condition (loss, a slow link, a paused peer, full CPU load), a busy and
// idle-by-turns connection is never evicted, and a real silent partition
// is still noticed within 2 s. They need kernel-level partitions (Linux,
// root, iptables, unshare) and skip, saying why, elsewhere.
package soak

import (
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
