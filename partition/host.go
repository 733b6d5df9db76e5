package partition

import (
	"context"
	"fmt"
	"net"
	"syscall"
	"time"
)

const (
	firstEphemeralPort = 49152
	lastPort           = 65535
)

// Host is one named machine on a Network. Its methods are safe for
// concurrent use.
type Host struct {
	net  *Network
	name string

	nextPort int // guarded by net.mu
}

// Name returns the host's name.
func (h *Host) Name() string { return h.name }

// Listen announces on a port of this host. addr may be "port", ":port" or
// "name:port" where name is this host's name; port 0 or an empty addr picks
// a free port, which the listener's Addr reports. The listener's Accept
// returns connections whose handshake completed; closing the listener
// closes those not yet accepted.
func (h *Host) Listen(addr string) (net.Listener, error) {
	a, err := parseAddr(addr, h.name, true)
	if err != nil {
		return nil, &net.OpError{Op: "listen", Net: "mem", Err: err}
	}
	opErr := func(err error) error { return &net.OpError{Op: "listen", Net: "mem", Addr: a, Err: err} }
	if a.Host != h.name {
		return nil, opErr(fmt.Errorf("%w: host %q cannot listen on %q", syscall.EADDRNOTAVAIL, h.name, a.Host))
	}
	n := h.net
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return nil, opErr(net.ErrClosed)
	}
	if a.Port == 0 {
		a.Port = h.freePortLocked()
		if a.Port == 0 {
			return nil, opErr(syscall.EADDRINUSE)
		}
	} else if n.listeners[a] != nil {
		return nil, opErr(syscall.EADDRINUSE)
	}
	l := &listener{net: n, addr: a}
	n.listeners[a] = l
	return l, nil
}

// freePortLocked returns an ephemeral port with no listener, or 0 if none is
// left. Connection ends take ports from the same counter; they may repeat
// after the range wraps, which matters to nobody because nothing looks a
// connection up by its address.
func (h *Host) freePortLocked() int {
	for range lastPort - firstEphemeralPort + 1 {
		p := h.nextPort
		h.nextPort++
		if h.nextPort > lastPort {
			h.nextPort = firstEphemeralPort
		}
		if h.net.listeners[Addr{h.name, p}] == nil {
			return p
		}
	}
	return 0
}

// Dial connects to addr ("host:port"; an empty host means this one). Like a
// TCP handshake it needs both directions of the link: across a cut, even a
// one-way one, it waits until the link heals or ctx ends, and then returns an
// error matching ctx.Err(). A link's delays add one round trip. Dialing a
// port with no listener fails at once with an error matching
// syscall.ECONNREFUSED; an unknown host gives a *net.DNSError.
func (h *Host) Dial(ctx context.Context, addr string) (net.Conn, error) {
	to, err := parseAddr(addr, h.name, false)
	if err != nil {
		return nil, &net.OpError{Op: "dial", Net: "mem", Err: err}
	}
	opErr := func(err error) error { return &net.OpError{Op: "dial", Net: "mem", Addr: to, Err: err} }
	n := h.net
	n.mu.Lock()
	defer n.mu.Unlock()
	handshook := false
	for {
		if n.closed {
			return nil, opErr(net.ErrClosed)
		}
		if err := ctx.Err(); err != nil {
			return nil, opErr(err)
		}
		if n.hosts[to.Host] == nil {
			return nil, opErr(&net.DNSError{Err: "no such host", Name: to.Host, IsNotFound: true})
		}
		fwd, back := n.links[link{h.name, to.Host}], n.links[link{to.Host, h.name}]
		if fwd.cut || back.cut {
			n.waitLocked(ctx.Done())
			continue
		}
		if rtt := fwd.delay + back.delay; rtt > 0 && !handshook {
			n.mu.Unlock()
			waitFor(ctx, rtt)
			n.mu.Lock()
			handshook = true
			continue // the link may have changed meanwhile
		}
		l := n.listeners[to]
		if l == nil {
			return nil, opErr(syscall.ECONNREFUSED)
		}
		local := Addr{h.name, h.freePortLocked()}
		pr := newPair(n, local, to, fwd, back)
		n.pairs[pr] = struct{}{}
		l.queue = append(l.queue, pr.ends[1])
		n.broadcastLocked()
		return pr.ends[0], nil
	}
}

// waitFor returns after d or when ctx ends, whichever is first.
func waitFor(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}
