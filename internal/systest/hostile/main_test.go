// Package hostile holds the tests of hostile peers. Each test runs real
// nodes over TCP: a victim V, a well-behaved peer G connected to it, and a
// hostile peer H driven by hand over a raw net.Conn, speaking the wire
// format of rpc/spec.md (reimplemented in wire_test.go from the spec, with
// hashicorp/yamux for the session layer). Each hostile behaviour must get
// a clear error on that connection only, and G's calls to V must go on at
// full speed: the p99 latency of G's calls under the hostile load is at
// most twice the p99 measured just before it, in the same test.
package hostile

import (
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
