//go:build !linux

package partition

import (
	"context"
	"os/exec"
	"time"
)

func lanSupport() error { return kernelSupport() }

func delaySupport() error { return kernelSupport() }

func newLAN(context.Context, int) (*LAN, error) { return nil, kernelSupport() }

func (h *LANHost) do(func() error) error { return kernelSupport() }

func (h *LANHost) command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Err = kernelSupport()
	return cmd
}

func (l *LAN) addRules([]rule) (func() error, error) { return nil, kernelSupport() }

func (l *LAN) delay(int, time.Duration) (func() error, error) { return nil, kernelSupport() }
