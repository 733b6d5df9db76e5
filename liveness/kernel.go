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
	Unsent       int           // bytes queued to send that the kernel holds back (the peer's window or congestion)
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

// SetKeepAlive turns on the kernel's TCP keepalive on c with period d for
// both the idle time and the interval between keepalives (see
// Config.KeepAlive), leaving to TCP_USER_TIMEOUT (SetUserTimeout) and to the
// Monitor when to give up. It does nothing if d is zero or c is not TCP.
func SetKeepAlive(c net.Conn, d time.Duration) error {
	tc := tcpConn(c)
	if tc == nil || d <= 0 {
		return nil
	}
	return tc.SetKeepAliveConfig(net.KeepAliveConfig{Enable: true, Idle: d, Interval: d, Count: keepAliveCount})
}

// keepAliveCount is how many unacknowledged keepalives the kernel sends
// before it gives up on its own, where TCP_USER_TIMEOUT does not decide
// first: a backstop, since the Monitor decides long before.
const keepAliveCount = 9
