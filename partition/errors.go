package partition

import (
	"errors"
	"strings"
)

var (
	// ErrNoKernelSupport means this process cannot make kernel-level
	// partitions: it is not Linux, lacks root (CAP_NET_ADMIN and
	// CAP_SYS_ADMIN), or lacks the unshare or iptables programs. The error
	// KernelSupport returns wraps it and says which.
	ErrNoKernelSupport = errors.New("partition: kernel-level partitions unsupported")

	// ErrNotIsolated means a kernel-level rule was refused because this
	// process is not provably inside a private network namespace. The
	// package never adds iptables rules or queueing disciplines to the
	// host's own network.
	ErrNotIsolated = errors.New("partition: not in a private network namespace")
)

// CommandError is the error of an external command (iptables, tc, unshare)
// that failed. It unwraps to the error of the command's run, usually an
// *exec.ExitError.
type CommandError struct {
	Args   []string // the command line, program first
	Output string   // what it wrote to stdout and stderr, trimmed
	Err    error    // why it failed
}

// Error returns the command line, why it failed and what it said.
func (e *CommandError) Error() string {
	var b strings.Builder
	b.WriteString("partition: ")
	b.WriteString(strings.Join(e.Args, " "))
	b.WriteString(": ")
	b.WriteString(e.Err.Error())
	if e.Output != "" {
		b.WriteString(": ")
		b.WriteString(e.Output)
	}
	return b.String()
}

// Unwrap returns the error of the command's run.
func (e *CommandError) Unwrap() error { return e.Err }
