//go:build !linux

package liveness

import (
	"net"
	"time"
)

const kernelSupported = false

func readTCPInfo(*net.TCPConn) (KernelInfo, bool) { return KernelInfo{}, false }

func setUserTimeout(*net.TCPConn, time.Duration) error { return nil }
