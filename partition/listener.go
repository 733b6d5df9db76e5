package partition

import "net"

// listener is a Host's net.Listener.
type listener struct {
	net  *Network
	addr Addr

	// guarded by net.mu
	queue  []*conn // accepting ends of dialed connections, oldest first
	closed bool
}

// Accept waits for and returns the next connection to the listener. After
// Close it returns an error matching net.ErrClosed.
func (l *listener) Accept() (net.Conn, error) {
	n := l.net
	n.mu.Lock()
	defer n.mu.Unlock()
	for {
		if l.closed {
			return nil, &net.OpError{Op: "accept", Net: "mem", Addr: l.addr, Err: net.ErrClosed}
		}
		if len(l.queue) > 0 {
			c := l.queue[0]
			l.queue[0] = nil
			l.queue = l.queue[1:]
			return c, nil
		}
		n.waitLocked(nil)
	}
}

// Close stops listening and closes the connections not yet accepted; their
// dialers see them closed as if accepted and closed at once. Accepted
// connections stay open.
func (l *listener) Close() error {
	n := l.net
	n.mu.Lock()
	if l.closed {
		n.mu.Unlock()
		return &net.OpError{Op: "close", Net: "mem", Addr: l.addr, Err: net.ErrClosed}
	}
	l.closed = true
	if n.listeners[l.addr] == l {
		delete(n.listeners, l.addr)
	}
	queued := l.queue
	l.queue = nil
	n.broadcastLocked()
	n.mu.Unlock()
	for _, c := range queued {
		c.Close() // cannot fail: nobody else has this end
	}
	return nil
}

// Addr returns the listener's address, an Addr.
func (l *listener) Addr() net.Addr { return l.addr }
