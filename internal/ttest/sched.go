package ttest

// Priority is a CPU priority a child process can take, so as to take no
// CPU time from the test process it plays against.
type Priority int

const (
	// Idle is the kernel's SCHED_IDLE class: the process runs only on CPU
	// time nobody else wants, so on a busy machine it may not run at all.
	Idle Priority = iota + 1
	// Lowest is the normal class at nice 19: about 1.5% of a CPU that
	// another process wants at nice 0, but never none.
	Lowest
)

func (p Priority) String() string {
	switch p {
	case Idle:
		return "the idle scheduling class"
	case Lowest:
		return "nice 19"
	}
	return "unknown priority"
}

// SetPriority puts every thread of this process, and so every thread it
// makes later, at priority p. It works on Linux only; elsewhere it returns
// an error saying so.
func SetPriority(p Priority) error { return setPriority(p) }
