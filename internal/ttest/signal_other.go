//go:build !unix

package ttest

import (
	"errors"
	"runtime"
	"testing"
)

// CanPause reports whether a child can be paused here (SIGSTOP).
const CanPause = false

var errNoPause = errors.New("ttest: pausing a process needs SIGSTOP, which " + runtime.GOOS + " lacks")

// Pause stops the child (SIGSTOP); not here.
func (c *Child) Pause() error { return errNoPause }

// Resume lets a paused child go on (SIGCONT); not here.
func (c *Child) Resume() error { return errNoPause }

// NeedPause skips t where a child cannot be paused.
func NeedPause(t testing.TB) {
	t.Helper()
	t.Skip(errNoPause)
}
