// Package scale_test holds the scale tests: one tether node and thousands
// of idle peers in a second process, inside a private network namespace,
// with the per-peer figures asserted as generous bounds.
package scale_test

import (
	"testing"

	"go.uber.org/goleak"

	"github.com/tetherrpc/tether/internal/scale"
)

func TestMain(m *testing.M) {
	scale.Child(scale.Tether()) // in the peers (or keepers) process: dial, idle, exit
	goleak.VerifyTestMain(m)
}
