//go:build !linux

package ttest

import (
	"fmt"
	"runtime"
)

func setPriority(Priority) error {
	return fmt.Errorf("ttest: setting the CPU priority of every thread needs Linux, not %s", runtime.GOOS)
}
