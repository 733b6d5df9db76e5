//go:build unix

package ttest

import (
	"syscall"
	"testing"
)

// CanPause reports whether a child can be paused here (SIGSTOP).
const CanPause = true

// Pause stops the child (SIGSTOP), as a suspended VM or a long garbage
// collection would: its kernel still acknowledges, the process is silent.
func (c *Child) Pause() error { return c.Cmd.Process.Signal(syscall.SIGSTOP) }

// Resume lets a paused child go on (SIGCONT).
func (c *Child) Resume() error { return c.Cmd.Process.Signal(syscall.SIGCONT) }

// NeedPause skips t where a child cannot be paused.
func NeedPause(t testing.TB) { t.Helper() }
