package ttest

import (
	"fmt"
	"os"
	"strconv"
	"unsafe"

	"golang.org/x/sys/unix"
)

func setPriority(p Priority) error {
	attr := unix.SchedAttr{Size: uint32(unsafe.Sizeof(unix.SchedAttr{}))}
	switch p {
	case Idle:
		attr.Policy = unix.SCHED_IDLE
	case Lowest:
		attr.Policy, attr.Nice = unix.SCHED_NORMAL, 19
	default:
		return fmt.Errorf("ttest: unknown priority %d", p)
	}
	// Linux schedules threads, not processes: set every thread's class, and
	// the threads made later inherit it from their makers.
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return fmt.Errorf("ttest: setting the CPU priority: %w", err)
	}
	for _, task := range tasks {
		tid, err := strconv.Atoi(task.Name())
		if err != nil {
			continue
		}
		if err := unix.SchedSetAttr(tid, &attr, 0); err != nil && err != unix.ESRCH {
			return fmt.Errorf("ttest: setting the CPU priority of thread %d: %w", tid, err)
		}
	}
	return nil
}
