// Package tether is RPC middleware for peer-connection hygiene: calls and
// streams between peers over yamux, with a registry that evicts a silently
// vanished peer in about a second (not in 15 minutes, as TCP would), fails
// every call outstanding to it at once, tells subscribers, and reconnects
// with backoff.
//
// One line starts a node:
//
//	n, err := tether.Listen("127.0.0.1:0", tether.WithLogger(zl))
//	n.Handle("storage.get", rpc.Func(func(ctx context.Context, req []byte) ([]byte, error) {
//		return shares.Get(ctx, req)
//	}))
//	p, err := n.Dial(ctx, addr)
//	err = p.Call(ctx, "storage.get", key, &share)
//	<-p.Done() // closed when the peer is evicted; p.Err() says why
//
// A node runs over any net.Listener and any dialer, not only TCP: New
// makes one that listens nowhere, Serve serves a listener (a Unix socket,
// a socket handed over by systemd, the in-memory partition.Network), and
// WithDialer sets how it connects.
//
// The packages underneath: rpc (calls, streams, cancellation), peer
// (references, eviction, reconnection, FirstK quorum reads), liveness
// (adaptive failure detection), incident (non-blocking logging and incident
// reports) and partition (a harness that makes silent partitions for tests).
package tether

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/tetherrpc/tether/incident"
	"github.com/tetherrpc/tether/incident/logport"
	"github.com/tetherrpc/tether/internal/server"
	"github.com/tetherrpc/tether/internal/tetheropts"
	"github.com/tetherrpc/tether/liveness"
	"github.com/tetherrpc/tether/peer"
	"github.com/tetherrpc/tether/rpc"
)

// Node is one tether node: the listeners it serves, the handlers it
// serves, and the registry of its peers. Both ends of every connection
// can call and serve.
type Node struct {
	mux     *rpc.Mux
	reg     *peer.Registry
	srv     *server.Server
	rcfg    *rpc.Config
	logger  *zap.Logger
	opts    options
	async   *incident.AsyncCore // nil without WithLogger
	rec     *incident.Recorder  // nil without WithIncidentDir
	metrics *metrics            // nil without WithMetrics
	port    *logport.Port       // nil without WithLogPort
	wd      *liveness.Watchdog

	draining   atomic.Bool
	restarting atomic.Bool
	aborting   atomic.Bool // Abort: connections are reset, never said goodbye to
	served     atomic.Uint64
	ageTimer   *time.Timer
	lns        listeners // the Listeners open (netconn.go)

	ctx       context.Context // ends at Close
	cancel    context.CancelFunc
	closeOnce sync.Once
}

// Listen starts a node listening on addr ("host:port"; port 0 picks one)
// over TCP: New, then Serve on a TCP listener in a goroutine of the
// node's own.
func Listen(addr string, opts ...Option) (*Node, error) {
	n, err := New(opts...)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		n.Close()
		return nil, err
	}
	n.srv.Go(ln)
	return n, nil
}

// New starts a node that listens nowhere yet: it can dial (through
// WithDialer's function), and serves the listeners given to Serve.
func New(opts ...Option) (*Node, error) {
	o := options{hangAfter: 30 * time.Second, penalty: [2]time.Duration{250 * time.Millisecond, time.Minute}}
	for _, opt := range opts {
		opt(&o)
	}
	lc := liveness.LAN()
	if o.liveness != nil {
		lc = *o.liveness
	}
	lc = lc.WithInterval(o.heartbeat)
	if err := lc.Validate(); err != nil {
		return nil, err
	}
	if o.dial == nil {
		var d net.Dialer
		o.dial = func(ctx context.Context, addr string) (net.Conn, error) { return d.DialContext(ctx, "tcp", addr) }
	}

	n := &Node{mux: rpc.NewMux(), opts: o}
	if err := n.startLogging(); err != nil {
		return nil, err
	}
	rc := o.rpc
	rc.ID, rc.Mux, rc.TLS, rc.Logger = o.id, n.mux, o.tls, n.logger
	tetheropts.SetPaused(&rc.Internal, true) // the registry resumes each connection once it is registered
	if o.tls != nil {
		rc.ID = ""
	}
	resolved, err := rpcResolve(rc)
	if err != nil {
		n.stopLogging()
		return nil, err
	}
	n.rcfg = resolved

	pcfg := peer.Config{
		LocalID:  peer.ID(resolved.ID),
		Dial:     n.dialConn,
		Liveness: lc,
		Logger:   n.logger,
	}
	if o.metrics != nil {
		n.metrics = newMetrics()
		tetheropts.SetObserveCall(&pcfg.Internal, n.metrics.observeCall)
	}
	reg, err := peer.New(pcfg)
	if err != nil {
		n.stopLogging()
		return nil, err
	}
	n.reg = reg
	n.srv = server.New(server.Config{RPC: resolved, Registry: reg, Logger: n.logger, PenaltyBase: o.penalty[0], PenaltyMax: o.penalty[1]})
	reg.Subscribe(n.srv.Penalize)
	if o.metrics != nil {
		if err := n.registerMetrics(o.metrics); err != nil {
			reg.Close()
			n.stopLogging()
			return nil, err
		}
	}
	if err := n.startWatchdog(); err != nil {
		reg.Close()
		n.stopLogging()
		return nil, err
	}
	if n.port != nil {
		n.port.Register(n) // log.subscribe, log.incidents, log.incident
	}
	n.ctx, n.cancel = context.WithCancel(context.Background())
	return n, nil
}

// Serve takes peers in on ln: it accepts connections, handshakes with
// each (with WithTLS, mutual TLS over ln's connections) and registers the
// peers. It blocks, as http.Server.Serve does, and returns nil once the
// node closes (Close, Drain or Abort; at once if it is closed already),
// or the listener's error if ln is closed by someone else; other accept
// errors are logged and retried. The node closes ln when it closes.
//
// Any listener serves: a Unix socket, a socket handed over by systemd
// (net.FileListener), the in-memory partition.Network, a TLS listener
// (tls.NewListener: an opaque transport, with IDs that are only claims;
// WithTLS derives IDs from keys). A node may serve several listeners at
// once. Without TCP the kernel's evidence (TCP_INFO) is missing, and
// liveness judges a peer by its answers alone.
func (n *Node) Serve(ln net.Listener) error { return n.srv.Serve(ln) }

// rpcResolve fixes the node's ID once, so that every connection tells the
// same one: the certificate's with TLS, else the one given or a random one.
func rpcResolve(c rpc.Config) (*rpc.Config, error) {
	switch {
	case c.TLS != nil:
		id, err := rpc.TLSID(c.TLS)
		if err != nil {
			return nil, err
		}
		c.ID = id
	case c.ID == "":
		c.ID = rpc.NewID()
	}
	return &c, nil
}

// Addr is the address of the listener the node serves: Listen's, or the
// first given to Serve; nil before any.
func (n *Node) Addr() net.Addr { return n.srv.Addr() }

// ID is the node's ID, as its peers know it.
func (n *Node) ID() peer.ID { return peer.ID(n.rcfg.ID) }

// Handle registers h for calls to method, from any peer.
func (n *Node) Handle(method string, h rpc.Handler) { n.mux.Handle(method, n.instrument(method, h)) }

// HandleStream registers h for streams opened on method (see peer.Peer.Stream).
func (n *Node) HandleStream(method string, h rpc.StreamHandler) { n.mux.HandleStream(method, h) }

// Peers is the node's registry of peers: Get, List, Subscribe, Evict, Keep.
func (n *Node) Peers() *peer.Registry { return n.reg }

// Logger is the logger feeding the node's pipeline: the WithLogger
// logger's core behind incident.Async (so no log call ever waits for a slow
// sink), teed with the incident recorder of WithIncidentDir. Log through it.
func (n *Node) Logger() *zap.Logger { return n.logger }

// Dial connects to addr and returns the peer's live reference, registered;
// if this node holds a live reference it dialed to addr already, it returns
// that one. addr is "host:port", or "ID@host:port" to refuse any peer but
// that one (authenticated with WithTLS); the host:port goes to the dialer
// (WithDialer; TCP by default). Concurrent Dials to one address share one
// connection (see peer.Registry.Dial).
func (n *Node) Dial(ctx context.Context, addr string) (*peer.Peer, error) {
	return n.reg.Dial(ctx, addr)
}

// dialConn is the registry's way to connect.
func (n *Node) dialConn(ctx context.Context, addr string) (*rpc.Conn, error) {
	cfg := *n.rcfg
	hostport := addr
	if at := strings.LastIndexByte(addr, '@'); at >= 0 {
		cfg.ExpectID, hostport = addr[:at], addr[at+1:]
	}
	nc, err := n.opts.dial(ctx, hostport)
	if err != nil {
		return nil, err
	}
	c, err := rpc.Client(ctx, nc, &cfg)
	if err == nil && n.aborting.Load() {
		c.Abort(ErrAborted)
		c.Close()
		return nil, ErrAborted
	}
	return c, err
}

// Close stops listening, closes the node's Listeners (their Accept
// returns net.ErrClosed), says goodbye to every peer (so they evict this
// node at once), cancels the handlers still running, and waits for the
// node's goroutines. It leaks none.
func (n *Node) Close() error {
	n.closeOnce.Do(func() { n.shutdown(false) })
	return nil
}

// ErrAborted is the cause of death of a node's connections when the node
// is aborted (Node.Abort). It matches rpc.ErrClosed: this side ended them.
var ErrAborted = fmt.Errorf("node aborted: %w", rpc.ErrClosed)

// Abort closes the listeners (and the node's Listeners, as Close does) and
// resets every connection with no goodbye, as a crash would: peers see a
// reset (a TCP RST, over TLS too), not "peer left", and evict the node as
// they would a crashed one. On this side the
// calls outstanding fail with a *rpc.DeadError wrapping ErrAborted, and
// the handlers running have their contexts cancelled. Unlike a crash,
// Abort then stops the node's goroutines and flushes its log, as Close
// does: it leaks nothing. Use it to imitate a crash in process. Abort
// after Close, or Close after Abort, does nothing.
func (n *Node) Abort() {
	n.closeOnce.Do(func() { n.shutdown(true) })
}

// shutdown stops the node: with a goodbye to every peer, or (abort) with a
// reset of every connection.
func (n *Node) shutdown(abort bool) {
	if abort {
		n.aborting.Store(true) // dials that finish from now on are reset
	}
	n.cancel()
	n.srv.Close()      // handshakes in progress end
	n.closeListeners() // Accept returns net.ErrClosed
	if abort {
		peers := n.reg.List()
		for _, p := range peers {
			p.Conn().Abort(ErrAborted)
		}
		for _, p := range peers {
			p.Conn().Close() // dead already: waits for its goroutines
		}
	}
	n.reg.Close()
	if n.ageTimer != nil {
		n.ageTimer.Stop()
	}
	n.wd.Close()
	n.stopLogging()
}

func (n *Node) String() string { return fmt.Sprintf("tether.Node(%s at %v)", n.ID(), n.Addr()) }
