package liveness

import (
	"crypto/tls"
	"net"
	"time"
)

// KernelInfo is what the kernel knows of a TCP connection (Linux TCP_INFO):
// evidence of life that does not depend on either process running.
type KernelInfo struct {
	LastAckRecv  time.Duration // since the peer's kernel last acknowledged anything
	LastDataRecv time.Duration // since data last arrived from the peer
	Unacked      int           // segments sent and not yet acknowledged
	Retransmits  int           // consecutive retransmissions of the oldest segment
	RTT, RTTVar  time.Duration // the kernel's own estimate
}

// tcpConn finds the *net.TCPConn under c, looking through TLS.
func tcpConn(c net.Conn) *net.TCPConn {
	for {
		switch x := c.(type) {
		case *net.TCPConn:
			return x
		case *tls.Conn:
			c = x.NetConn()
		case interface{ NetConn() net.Conn }:
			c = x.NetConn()
		default:
			return nil
		}
	}
}

// KernelSource returns a function reading the kernel's evidence for c, or
// nil where there is none (not TCP, or not Linux).
func KernelSource(c net.Conn) func() (KernelInfo, bool) {
	tc := tcpConn(c)
	if tc == nil || !kernelSupported {
		return nil
	}
	return func() (KernelInfo, bool) { return readTCPInfo(tc) }
}

// SetUserTimeout sets TCP_USER_TIMEOUT on c (Linux): data left
// unacknowledged that long makes the kernel drop the connection, so writes
// stuck in the kernel fail instead of waiting 15 minutes. It does nothing
// where unsupported.
func SetUserTimeout(c net.Conn, d time.Duration) error {
	tc := tcpConn(c)
	if tc == nil || !kernelSupported {
		return nil
	}
	return setUserTimeout(tc, d)
}
