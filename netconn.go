package tether

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tetherrpc/tether/peer"
	"github.com/tetherrpc/tether/rpc"
)

// Addr is the address of one end of a conn from Listener or DialConn: the
// node's ID and the network address of the tether connection the conn
// runs over. Its String, "ID@host:port", is the form Dial and DialConn
// take, so a server may learn who called with
//
//	id := c.RemoteAddr().(tether.Addr).ID
//
// (net/http puts the String in Request.RemoteAddr; gRPC in peer.Peer.Addr).
type Addr struct {
	ID  peer.ID
	Net net.Addr // where the tether connection runs: a *net.TCPAddr over TCP
}

// Network is "tether".
func (a Addr) Network() string { return "tether" }

func (a Addr) String() string {
	if a.Net == nil {
		return string(a.ID)
	}
	return string(a.ID) + "@" + a.Net.String()
}

// Listener returns a net.Listener whose Accept yields, as net.Conns, the
// streams that peers open to service with DialConn: gRPC, net/http or
// net/rpc serve over tether by taking it in place of a TCP listener. Each
// conn runs over the one tether connection to its peer and dies with it:
// once the peer is evicted (a silent partition is found in about a second)
// every conn to it fails at once with a *rpc.DeadError. See DialConn for
// the conns' semantics.
//
// Closing the listener stops that service only: conns already accepted go
// on, those not yet accepted are closed, Accept returns net.ErrClosed, and
// peers opening new streams to the service are refused. The node's Close
// (and Abort and Drain, which end in it) closes every listener the node
// has made, so a server's Serve loop over one returns with the accept
// error; a Listener made after that is closed already. A second Listener
// for the same service takes over from the first for new streams; closing
// the first then leaves the second serving.
//
// An accepted conn holds a goroutine (the stream handler's) until it is
// closed; an idle conn costs no other. Each conn counts against the
// peer's limit of calls and streams running here at once
// (rpc.Config.MaxConcurrentCalls, 1024 by default): past it, DialConn is
// refused with an error matching rpc.ErrTooManyCalls.
func (n *Node) Listener(service string) net.Listener {
	l := &listener{
		n:       n,
		service: service,
		conns:   make(chan *streamConn),
		done:    make(chan struct{}),
	}
	ls := &n.lns
	ls.mu.Lock()
	defer ls.mu.Unlock()
	if ls.closed {
		l.once.Do(func() { close(l.done) })
		return l
	}
	if ls.open == nil {
		ls.open = make(map[*listener]struct{})
		ls.serving = make(map[string]*listener)
	}
	ls.open[l] = struct{}{}
	ls.serving[service] = l
	n.HandleStream(service, rpc.StreamFunc(l.serve))
	return l
}

// ErrServiceClosed is what a stream opened to a closed Listener's service
// ends with, where the stream reached it before the listener was gone.
var ErrServiceClosed = errors.New("tether: service closed")

// listeners are a node's open Listeners, which its Close closes.
type listeners struct {
	mu      sync.Mutex
	open    map[*listener]struct{}
	serving map[string]*listener // by service, the one whose handler the mux has
	closed  bool                 // the node closed: new Listeners are closed
}

// closeListeners closes the node's Listeners, and any it makes from now on.
func (n *Node) closeListeners() {
	ls := &n.lns
	ls.mu.Lock()
	ls.closed = true
	open := ls.open
	ls.open = nil
	ls.mu.Unlock()
	for l := range open {
		l.Close()
	}
}

type listener struct {
	n       *Node
	service string
	conns   chan *streamConn
	done    chan struct{}
	once    sync.Once
}

// serve is the stream handler: it hands the stream to Accept as a conn and
// holds it until the conn is closed, the peer closes its end, or the
// connection dies.
func (l *listener) serve(ctx context.Context, s *rpc.Stream) error {
	c := newStreamConn(s, false, nil)
	select {
	case l.conns <- c:
	case <-l.done:
		return ErrServiceClosed
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case <-c.done:
	case <-ctx.Done():
	}
	return nil
}

// Accept waits for a peer to open a stream to the service.
func (l *listener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, &net.OpError{Op: "accept", Net: "tether", Addr: l.Addr(), Err: net.ErrClosed}
	}
}

// Close stops the service; see Node.Listener.
func (l *listener) Close() error {
	l.once.Do(func() {
		close(l.done)
		ls := &l.n.lns
		ls.mu.Lock()
		defer ls.mu.Unlock()
		delete(ls.open, l)
		if ls.serving[l.service] == l {
			// Refuse new streams: the service is no longer served. A
			// stream handler of nil removes the service's.
			delete(ls.serving, l.service)
			l.n.HandleStream(l.service, nil)
		}
	})
	return nil
}

// Addr is the node's ID and the address it serves (Node.Addr: nil before
// a node made by New serves).
func (l *listener) Addr() net.Addr { return Addr{ID: l.n.ID(), Net: l.n.Addr()} }

// DialConn returns a net.Conn to service (served by the peer's Listener)
// on the peer at addr ("host:port" or "ID@host:port", as Dial takes). It
// runs as a stream over the node's one tether connection to that peer,
// dialed or reused (see Dial; concurrent DialConns to a peer not yet
// connected share one dial): give it to gRPC with grpc.WithContextDialer,
// to net/http as an http.Transport's DialContext, or to net/rpc.NewClient.
// ctx bounds the dial and the opening of the stream only, as net.Dialer's
// does, not the conn's life. A peer that serves no such service refuses
// the stream: the error matches rpc.ErrUnknownMethod.
//
// The conn (and its peer's end from Listener) has the net.Conn semantics
// of TCP: deadlines (a Read or Write past one returns an error matching
// os.ErrDeadlineExceeded, a net.Error whose Timeout is true), a half-close
// by CloseWrite (the peer reads io.EOF; reading goes on), and addresses of
// type Addr carrying the nodes' IDs. Unlike a TCP conn it does not wait
// 15 minutes to notice a silent peer: when the peer is evicted every conn
// to it fails at once, Read and Write returning a *rpc.DeadError
// (errors.Is(err, rpc.ErrDeadReference)) that wraps the cause, such as a
// *liveness.Verdict for missed heartbeats.
func (n *Node) DialConn(ctx context.Context, addr, service string) (net.Conn, error) {
	for retried := false; ; retried = true {
		p, err := n.Dial(ctx, addr)
		if err != nil {
			return nil, fmt.Errorf("tether: dialing %s for %q: %w", addr, service, err)
		}
		// The stream's own context outlives ctx, which ends the opening
		// only; it ends with the connection, so that blocked Reads and
		// Writes return at its death at once (yamux's would spin until
		// the session's streams are closed).
		sctx, cancel := context.WithCancel(p.Conn().Context())
		stop := context.AfterFunc(ctx, cancel)
		s, err := p.Stream(sctx, service)
		if !stop() { // ctx ended while opening: the stream is interrupted
			if s != nil {
				s.Close()
			}
			cancel()
			return nil, fmt.Errorf("tether: opening %q on %s: %w", service, addr, ctx.Err())
		}
		if err == nil {
			return newStreamConn(s, true, cancel), nil
		}
		cancel()
		if p.Err() == nil || retried {
			return nil, fmt.Errorf("tether: opening %q on %s: %w", service, addr, err)
		}
		// The reference died as the stream opened (replaced by the peer's
		// own connection to us, say): once more, on the live one.
	}
}

// streamConn is an rpc.Stream as a net.Conn.
type streamConn struct {
	s             *rpc.Stream
	dialed        bool
	cancel        context.CancelFunc // the dialing side's stream context; nil on the accepting side
	local, remote Addr
	done          chan struct{} // closed by Close
	closed        atomic.Bool
	once          sync.Once
}

func newStreamConn(s *rpc.Stream, dialed bool, cancel context.CancelFunc) *streamConn {
	rc := s.Conn()
	return &streamConn{
		s:      s,
		dialed: dialed,
		cancel: cancel,
		local:  Addr{ID: peer.ID(rc.LocalID()), Net: rc.LocalAddr()},
		remote: Addr{ID: peer.ID(rc.RemoteID()), Net: rc.RemoteAddr()},
		done:   make(chan struct{}),
	}
}

func (c *streamConn) Read(p []byte) (int, error) {
	if c.closed.Load() {
		return 0, c.opErr("read", net.ErrClosed)
	}
	n, err := c.s.Read(p)
	if err != nil && err != io.EOF {
		err = c.opErr("read", err)
	}
	return n, err
}

func (c *streamConn) Write(p []byte) (int, error) {
	if c.closed.Load() {
		return 0, c.opErr("write", net.ErrClosed)
	}
	n, err := c.s.Write(p)
	if err != nil {
		err = c.opErr("write", err)
	}
	return n, err
}

// CloseWrite closes the writing side: the peer reads io.EOF after what was
// written; reading goes on.
func (c *streamConn) CloseWrite() error {
	if err := c.s.CloseWrite(); err != nil {
		return c.opErr("close", err)
	}
	return nil
}

// Close closes the conn; the peer reads io.EOF. Blocked Reads and Writes
// return net.ErrClosed.
func (c *streamConn) Close() error {
	c.once.Do(func() {
		c.closed.Store(true)
		c.s.SetDeadline(time.Unix(1, 0)) // yamux's Close ends writing only
		c.s.Close()
		if c.cancel != nil {
			c.cancel()
		}
		close(c.done)
	})
	return nil
}

func (c *streamConn) LocalAddr() net.Addr  { return c.local }
func (c *streamConn) RemoteAddr() net.Addr { return c.remote }

func (c *streamConn) SetDeadline(t time.Time) error      { return c.s.SetDeadline(t) }
func (c *streamConn) SetReadDeadline(t time.Time) error  { return c.s.SetReadDeadline(t) }
func (c *streamConn) SetWriteDeadline(t time.Time) error { return c.s.SetWriteDeadline(t) }

// opErr puts a stream's error in net.Conn's terms: net.ErrClosed after
// Close; on the accepting side, the end of the peer's stream context (the
// peer closed its end) reads as io.EOF; a dead connection stays a
// *rpc.DeadError. All but io.EOF come as a *net.OpError.
func (c *streamConn) opErr(op string, err error) error {
	switch {
	case c.closed.Load():
		err = net.ErrClosed
	case !c.dialed && errors.Is(err, context.Canceled) && c.s.Conn().Err() == nil:
		if op == "read" {
			return io.EOF
		}
		err = errPeerClosed
	}
	return &net.OpError{Op: op, Net: "tether", Source: c.local, Addr: c.remote, Err: err}
}

// errPeerClosed is a write's error on an accepted conn whose peer has
// closed it, as a TCP write's after a reset.
var errPeerClosed = errors.New("tether: conn closed by peer")
