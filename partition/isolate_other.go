//go:build !linux

package partition

import (
	"context"
	"testing"
)

func isolated(t *testing.T) bool {
	t.Helper()
	t.Skip(kernelSupport())
	return false
}

func reexec(context.Context) (bool, error) { return false, kernelSupport() }
