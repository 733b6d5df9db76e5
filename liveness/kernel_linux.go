//go:build linux

package liveness

import (
	"net"
	"time"

	"golang.org/x/sys/unix"
)

const kernelSupported = true

func readTCPInfo(c *net.TCPConn) (KernelInfo, bool) {
	rc, err := c.SyscallConn()
	if err != nil {
		return KernelInfo{}, false
	}
	var ti *unix.TCPInfo
	var serr error
	if err := rc.Control(func(fd uintptr) {
		ti, serr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
	}); err != nil || serr != nil {
		return KernelInfo{}, false
	}
	return KernelInfo{
		LastAckRecv:  time.Duration(ti.Last_ack_recv) * time.Millisecond,
		LastDataRecv: time.Duration(ti.Last_data_recv) * time.Millisecond,
		Unacked:      int(ti.Unacked),
		Unsent:       int(ti.Notsent_bytes),
		Retransmits:  int(ti.Retransmits),
		RTT:          time.Duration(ti.Rtt) * time.Microsecond,
		RTTVar:       time.Duration(ti.Rttvar) * time.Microsecond,
	}, true
}

func setUserTimeout(c *net.TCPConn, d time.Duration) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, int(d/time.Millisecond))
	}); err != nil {
		return err
	}
	return serr
}
