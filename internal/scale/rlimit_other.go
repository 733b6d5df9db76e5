//go:build !unix

package scale

import (
	"time"
)

// RaiseFileLimit raises this process's limit on open files to at least n;
// here there is no such limit to raise.
func RaiseFileLimit(n int) error { return nil }

// cpuTime is the CPU time this process has used; not measured here.
func cpuTime() time.Duration { return 0 }
