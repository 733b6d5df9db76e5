package partition

import (
	"context"
	"errors"
	"net"
	"sync"
	"time"
)

// Proxy is a real TCP proxy on loopback, between a client and a target
// address, that can stop forwarding, delay or reset connections on demand,
// and carry them over a long path (see Link and SetLink). Its methods are
// safe for concurrent use.
//
// A user-space proxy cannot make a true silent partition: the proxy's own
// kernel still completes handshakes and acknowledges every segment sent to
// it. Through a blackholed proxy the far side looks hung (its kernel alive,
// its process silent), not partitioned. Only dropping packets in the kernel
// (see DropPort) makes a true silent partition.
type Proxy struct {
	target string
	ln     net.Listener
	wg     sync.WaitGroup // the accept loop and every connection's goroutines

	mu        sync.Mutex
	wake      chan struct{} // closed when blackhole or closed changes; nil when nobody waits
	blackhole bool
	links     [2]Link // up (client to target) and down
	closed    bool
	conns     map[*proxyConn]struct{}
}

// NewProxy starts a proxy listening on 127.0.0.1 (a free port) that
// forwards every connection to target, a "host:port" TCP address. It dials
// target once per accepted connection.
func NewProxy(target string) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &Proxy{target: target, ln: ln, conns: make(map[*proxyConn]struct{})}
	p.wg.Add(1)
	go p.acceptLoop()
	return p, nil
}

// Addr returns the address clients dial, "127.0.0.1:port".
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Blackhole stops forwarding in both directions while keeping every
// connection open and error-free. Data is held, not swallowed: the proxy
// stops reading, so bytes wait in kernel buffers (writers block once those
// fill, as TCP's do) and are forwarded in order after Heal, as TCP
// retransmits after a partition heals. New connections are accepted by the
// proxy's kernel, but the proxy does not dial the target for them until
// Heal.
//
// This is not a silent partition: the proxy's kernel acknowledges
// everything, so to the client the target looks hung, not vanished. Use
// DropPort in a private namespace for a true silent partition.
func (p *Proxy) Blackhole() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.blackhole = true
	p.broadcastLocked()
}

// Directions of a proxied connection.
const (
	toTarget = 0
	toClient = 1
)

// SetLink makes the proxy carry data from client to target over the link
// up, and from target to client over down, for every connection, current
// and later (see Link). Data already read keeps the link it was read
// under; order is kept. Negative fields count as zero.
// SetLink(Link{}, Link{}) forwards at once again.
//
// A client reaches the target over the link by dialing Addr instead of the
// target's address. A tether Node does the same: it dials p.Addr() (or
// "id@" + p.Addr()) where it would dial the other Node's address, and every
// call, stream and probe on that connection then crosses the link. The
// target sees the connection come from the proxy, not from the client.
func (p *Proxy) SetLink(up, down Link) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.links = [2]Link{up.clean(), down.clean()}
}

// Delay sets d of one-way latency each way and nothing else, so a round
// trip takes 2d more: SetLink(Link{Delay: d}, Link{Delay: d}). d <= 0
// removes the delay.
func (p *Proxy) Delay(d time.Duration) {
	p.SetLink(Link{Delay: d}, Link{Delay: d})
}

// Heal ends Blackhole: held data and waiting connections go on, over the
// link as it is (Heal leaves the link set by SetLink or Delay alone).
func (p *Proxy) Heal() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.blackhole = false
	p.broadcastLocked()
}

// Reset aborts every current connection with a TCP RST on both sides
// (SO_LINGER 0, then close): the client's and the target's next reads fail
// with an error matching syscall.ECONNRESET. Later connections are proxied
// as usual.
func (p *Proxy) Reset() {
	p.mu.Lock()
	conns := make([]*proxyConn, 0, len(p.conns))
	for pc := range p.conns {
		conns = append(conns, pc)
		delete(p.conns, pc)
	}
	p.mu.Unlock()
	for _, pc := range conns {
		pc.abort()
	}
}

// Conns returns the number of connections the proxy currently holds open.
func (p *Proxy) Conns() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.conns)
}

// Close stops the proxy: it stops listening, closes every connection on
// both sides and returns once all its goroutines have ended. It always
// returns nil.
func (p *Proxy) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	conns := make([]*proxyConn, 0, len(p.conns))
	for pc := range p.conns {
		conns = append(conns, pc)
	}
	clear(p.conns)
	p.broadcastLocked()
	p.mu.Unlock()
	p.ln.Close()
	for _, pc := range conns {
		pc.close()
	}
	p.wg.Wait()
	return nil
}

func (p *Proxy) acceptLoop() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// A transient failure such as EMFILE: pause rather than spin.
			// Close ends the pause by closing the listener, at most 10 ms later.
			t := time.NewTimer(10 * time.Millisecond)
			<-t.C
			continue
		}
		ctx, cancel := context.WithCancel(context.Background())
		pc := &proxyConn{client: c.(*net.TCPConn), ctx: ctx, cancel: cancel, done: make(chan struct{}),
			links: [2]*linkQueue{newLinkQueue(), newLinkQueue()}}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			pc.close()
			return
		}
		p.conns[pc] = struct{}{}
		p.wg.Add(1)
		p.mu.Unlock()
		go p.serve(pc)
	}
}

// serve dials the target for one client connection and forwards both ways.
func (p *Proxy) serve(pc *proxyConn) {
	defer p.wg.Done()
	defer p.forget(pc)
	if !p.waitOpen(pc) { // no SYN goes out while blackholed
		return
	}
	var d net.Dialer
	c, err := d.DialContext(pc.ctx, "tcp", p.target)
	if err != nil {
		pc.abort() // the client sees a reset, as if refused
		return
	}
	if !pc.setServer(c.(*net.TCPConn)) {
		return
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); p.forward(pc, toTarget, pc.client, pc.server) }()
	p.forward(pc, toClient, pc.server, pc.client)
	wg.Done()
	wg.Wait()
	pc.close()
}

func (p *Proxy) forget(pc *proxyConn) {
	p.mu.Lock()
	delete(p.conns, pc)
	p.mu.Unlock()
}

// waitOpen waits while the proxy is blackholed. It reports false once the
// connection is finished or the proxy closed.
func (p *Proxy) waitOpen(pc *proxyConn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for {
		select {
		case <-pc.done:
			return false
		default:
		}
		if p.closed {
			return false
		}
		if !p.blackhole {
			return true
		}
		if p.wake == nil {
			p.wake = make(chan struct{})
		}
		ch := p.wake
		p.mu.Unlock()
		select {
		case <-ch:
		case <-pc.done:
		}
		p.mu.Lock()
	}
}

// link returns the link of direction dir.
func (p *Proxy) link(dir int) Link {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.links[dir]
}

func (p *Proxy) broadcastLocked() {
	if p.wake != nil {
		close(p.wake)
		p.wake = nil
	}
}
