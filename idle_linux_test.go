package tether_test

import (
	"os"
	"strconv"
	"unsafe"

	"golang.org/x/sys/unix"
)

// runAsIdle puts every thread of this process (and so every thread it
// makes later) in the kernel's SCHED_IDLE class: it runs only on CPU time
// nobody else wants. A hostile child calls it so that, on the one machine
// that runs the victim and the attacker alike, the attacker takes no CPU
// from the victim, as an attacker on a machine of its own would not: the
// floor of the hostile tests is about what the victim does for its other
// peers while it serves a flood, not about sharing two cores with the
// attacker. It reports whether it could.
func runAsIdle() bool {
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return false
	}
	attr := unix.SchedAttr{Size: uint32(unsafe.Sizeof(unix.SchedAttr{})), Policy: unix.SCHED_IDLE}
	for _, task := range tasks {
		tid, err := strconv.Atoi(task.Name())
		if err != nil {
			continue
		}
		if err := unix.SchedSetAttr(tid, &attr, 0); err != nil && err != unix.ESRCH {
			return false
		}
	}
	return true
}
