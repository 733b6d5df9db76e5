package scale

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// runQueueWait returns how long, in all, this process's threads have
// waited on the kernel's run queues: runnable, but held off the CPU by
// other work on the machine. It reads /proc/self/task/*/schedstat (Linux
// with schedstats); elsewhere, or if it cannot, it returns -1. Threads
// that ended meanwhile are not counted, so a difference over a stretch is
// a lower bound.
func runQueueWait() time.Duration {
	paths, err := filepath.Glob("/proc/self/task/*/schedstat")
	if err != nil || len(paths) == 0 {
		return -1
	}
	var total time.Duration
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			continue // the thread ended
		}
		f := strings.Fields(string(b))
		if len(f) < 2 {
			return -1
		}
		ns, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil {
			return -1
		}
		total += time.Duration(ns)
	}
	return total
}
