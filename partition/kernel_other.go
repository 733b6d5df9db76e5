//go:build !linux

package partition

import (
	"fmt"
	"runtime"
)

func kernelSupport() error {
	return fmt.Errorf("%w: needs Linux network namespaces and iptables, not %s", ErrNoKernelSupport, runtime.GOOS)
}

func shapingSupport() error { return kernelSupport() }

func checkNamespace() error {
	return fmt.Errorf("%w: network namespaces need Linux, not %s", ErrNotIsolated, runtime.GOOS)
}

func addRules(...[]string) (func() error, error) { return nil, checkNamespace() }

func limitRate(string, string) (func() error, error) { return nil, checkNamespace() }

func setMTU(string, int) (func() error, error) { return nil, checkNamespace() }
