package partition

import (
	"sync"
	"time"
)

// DefaultBufferSize is the default capacity, per direction of a connection,
// of the bytes a writer may have outstanding: written but not yet read by the
// far end, whether still in flight, held by a cut, or waiting in the far
// end's receive buffer. It plays the part of TCP's send and receive buffers
// together.
const DefaultBufferSize = 256 << 10

// Network is an in-memory network of named hosts whose links can be cut,
// delayed and healed per direction. The zero value is not usable; call
// NewNetwork. A Network is safe for concurrent use.
//
// A cut behaves like a silent partition, not like a closed connection:
// nobody gets an error or a reset. Writes into a cut link succeed until the
// direction's buffer is full (see WithBufferSize), then block, honouring
// write deadlines. The bytes are held, as TCP keeps unacknowledged data for
// retransmission, and are delivered in order after Heal. Reads on the far
// side just wait. A Close while cut is not seen by the peer until the link
// heals (its FIN is held like everything else). A Dial across a cut waits
// until its context ends, as dropped SYNs do.
type Network struct {
	bufSize int

	mu        sync.Mutex
	wake      chan struct{} // closed on every change Dial and Accept wait for; nil when nobody waits
	closed    bool
	hosts     map[string]*Host
	links     map[link]linkState
	listeners map[Addr]*listener
	pairs     map[*pair]struct{}
}

// link names one direction between two hosts.
type link struct{ from, to string }

// linkState is the condition of one direction of a link. The zero value is a
// perfect link.
type linkState struct {
	cut   bool
	delay time.Duration
}

// Option configures a Network.
type Option func(*Network)

// WithBufferSize sets the per-direction buffer capacity of every connection
// (see DefaultBufferSize). n <= 0 selects the default.
func WithBufferSize(n int) Option {
	return func(nw *Network) {
		if n > 0 {
			nw.bufSize = n
		}
	}
}

// NewNetwork returns an empty network in which every link is perfect.
func NewNetwork(opts ...Option) *Network {
	n := &Network{
		bufSize:   DefaultBufferSize,
		hosts:     make(map[string]*Host),
		links:     make(map[link]linkState),
		listeners: make(map[Addr]*listener),
		pairs:     make(map[*pair]struct{}),
	}
	for _, o := range opts {
		o(n)
	}
	return n
}

// Host returns the host with the given name, creating it on first use. Any
// string is a valid name; "server" and "10.0.0.1" read well in addresses.
func (n *Network) Host(name string) *Host {
	n.mu.Lock()
	defer n.mu.Unlock()
	h, ok := n.hosts[name]
	if !ok {
		h = &Host{net: n, name: name, nextPort: firstEphemeralPort}
		n.hosts[name] = h
	}
	return h
}

// Cut silently drops everything between a and b, both ways, until Heal.
func (n *Network) Cut(a, b string) {
	n.update(a, b, func(s *linkState) { s.cut = true })
	n.update(b, a, func(s *linkState) { s.cut = true })
}

// CutOneWay silently drops everything sent from one host to another until
// Heal; the other direction is untouched. TCP needs both directions, so a
// one-way cut stalls new dials both ways, but bytes on established
// connections still flow in the open direction.
func (n *Network) CutOneWay(from, to string) {
	n.update(from, to, func(s *linkState) { s.cut = true })
}

// Delay makes every chunk written between a and b, in either direction,
// readable d after it was written, so a round trip takes 2d more. Chunks
// already in flight keep their arrival times; order is always kept. d <= 0
// removes the delay.
func (n *Network) Delay(a, b string, d time.Duration) {
	n.DelayOneWay(a, b, d)
	n.DelayOneWay(b, a, d)
}

// DelayOneWay is Delay for the direction from one host to another only.
func (n *Network) DelayOneWay(from, to string, d time.Duration) {
	n.update(from, to, func(s *linkState) { s.delay = max(d, 0) })
}

// Heal restores both directions between a and b to a perfect link: no cut
// and no delay. Bytes and FINs held by a cut are delivered at once, in order.
func (n *Network) Heal(a, b string) {
	n.update(a, b, func(s *linkState) { *s = linkState{} })
	n.update(b, a, func(s *linkState) { *s = linkState{} })
}

// HealAll restores every link of the network to perfect.
func (n *Network) HealAll() {
	n.mu.Lock()
	keys := make([]link, 0, len(n.links))
	for k := range n.links {
		keys = append(keys, k)
	}
	n.mu.Unlock()
	for _, k := range keys {
		n.update(k.from, k.to, func(s *linkState) { *s = linkState{} })
	}
}

// update changes the state of one direction and applies it to every live
// connection that uses it.
func (n *Network) update(from, to string, change func(*linkState)) {
	n.mu.Lock()
	defer n.mu.Unlock()
	k := link{from, to}
	s := n.links[k]
	change(&s)
	if s == (linkState{}) {
		delete(n.links, k)
	} else {
		n.links[k] = s
	}
	now := time.Now()
	for pr := range n.pairs {
		pr.linkChanged(k, s, now)
	}
	n.broadcastLocked()
}

// Close closes every listener and connection of the network, as if each
// were closed by its owner, and stops every timer. Later Listen and Dial
// calls fail with an error matching net.ErrClosed. Close always returns nil.
func (n *Network) Close() error {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return nil
	}
	n.closed = true
	var ends []*conn
	for _, l := range n.listeners {
		l.closed = true
		ends = append(ends, l.queue...)
		l.queue = nil
	}
	clear(n.listeners)
	for pr := range n.pairs {
		ends = append(ends, pr.ends[0], pr.ends[1])
	}
	n.broadcastLocked()
	n.mu.Unlock()
	for _, c := range ends {
		c.Close() // an end already closed reports so; nothing to do then
	}
	return nil
}

// forget drops a pair whose ends are both closed.
func (n *Network) forget(pr *pair) {
	n.mu.Lock()
	delete(n.pairs, pr)
	n.mu.Unlock()
}

// waitLocked releases n.mu until the next broadcast or until done is closed.
func (n *Network) waitLocked(done <-chan struct{}) {
	if n.wake == nil {
		n.wake = make(chan struct{})
	}
	ch := n.wake
	n.mu.Unlock()
	select {
	case <-ch:
	case <-done:
	}
	n.mu.Lock()
}

func (n *Network) broadcastLocked() {
	if n.wake != nil {
		close(n.wake)
		n.wake = nil
	}
}
