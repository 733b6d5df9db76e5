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
// The packages underneath: rpc (calls, streams, cancellation), peer
// (references, eviction, reconnection, FirstK quorum reads), liveness
// (adaptive failure detection), incident (non-blocking logging and incident
// reports) and partition (a harness that makes silent partitions for tests).
package tether

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/tetherrpc/tether/incident"
	"github.com/tetherrpc/tether/incident/logport"
	"github.com/tetherrpc/tether/internal/tetheropts"
	"github.com/tetherrpc/tether/liveness"
	"github.com/tetherrpc/tether/peer"
	"github.com/tetherrpc/tether/rpc"
)

// Node is one tether node: a listener, the handlers it serves, and the
// registry of its peers. Both ends of every connection can call and serve.
type Node struct {
	ln      net.Listener
	mux     *rpc.Mux
	reg     *peer.Registry
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

	penaltyRefused atomic.Uint64 // connections closed unheard

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	penalties *penaltyBox // nil when off

	hsMu      sync.Mutex // guards handshakes in progress:
	hsPending []*pendingHandshake
	hsLive    int           // of them not cut off
	hsTook    time.Duration // how long good handshakes took lately
	hsFreed   chan struct{} // 1-buffered: a handshake slot freed

	closeOnce sync.Once
}

// maxPendingHandshakes bounds the connections a node handshakes at once,
// so a flood of silent dialers costs bounded memory; past it the oldest
// handshake is cut off (see admitHandshake).
const maxPendingHandshakes = 512

// Listen starts a node listening on addr ("host:port"; port 0 picks one).
func Listen(addr string, opts ...Option) (*Node, error) {
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

	n := &Node{mux: rpc.NewMux(), opts: o, hsFreed: make(chan struct{}, 1), hsTook: firstHandshakeGuess}
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
	if n.penalties = newPenaltyBox(o.penalty[0], o.penalty[1]); n.penalties != nil {
		reg.Subscribe(n.penalize)
	}
	if o.metrics != nil {
		if err := n.registerMetrics(o.metrics); err != nil {
			reg.Close()
			n.stopLogging()
			return nil, err
		}
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		reg.Close()
		n.stopLogging()
		return nil, err
	}
	n.ln = ln
	if err := n.startWatchdog(); err != nil {
		ln.Close()
		reg.Close()
		n.stopLogging()
		return nil, err
	}
	if n.port != nil {
		n.port.Register(n) // log.subscribe, log.incidents, log.incident
	}
	n.ctx, n.cancel = context.WithCancel(context.Background())
	n.wg.Add(1)
	go n.acceptLoop()
	return n, nil
}

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

// Addr is the address the node listens on.
func (n *Node) Addr() net.Addr { return n.ln.Addr() }

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

// startLogging builds the node's log pipeline.
func (n *Node) startLogging() error {
	base := zap.NewNop()
	if n.opts.logger != nil {
		base = n.opts.logger
	}
	var cores []zapcore.Core
	if n.opts.incidentDir != "" {
		rec, err := incident.NewRecorder(n.opts.incidentDir, incident.WithTrigger(trigger), incident.WithWriteErrorHandler(func(err error) {
			n.logger.Warn("incident file not written", zap.Error(err))
		}))
		if err != nil {
			return err
		}
		n.rec = rec
		cores = append(cores, rec) // cheap and never blocking: inline
	}
	// What may be slow (the user's sink) or does real work (the log port's
	// encoding) goes behind Async, on its writer goroutine.
	var slow []zapcore.Core
	if n.opts.logger != nil {
		slow = append(slow, base.Core())
	}
	if n.opts.logPort != nil {
		popts := n.opts.logPort
		if n.rec != nil {
			popts = append([]logport.Option{logport.WithIncidents(n.rec)}, popts...)
		}
		n.port = logport.New(popts...)
		slow = append(slow, n.port.Core())
	}
	if len(slow) > 0 {
		n.async = incident.Async(zapcore.NewTee(slow...))
		cores = append(cores, n.async)
	}
	n.logger = base.WithOptions(zap.WrapCore(func(zapcore.Core) zapcore.Core { return zapcore.NewTee(cores...) }))
	return nil
}

// trigger opens an incident on Error and above, and on any entry marked
// with the incident field (the node's own actions, logged at Warn).
func trigger(ent zapcore.Entry, fields []zapcore.Field) bool {
	if ent.Level >= zapcore.ErrorLevel {
		return true
	}
	for _, f := range fields {
		if f.Key == incidentField && f.Type == zapcore.BoolType && f.Integer == 1 {
			return true
		}
	}
	return false
}

// stopLogging flushes the pipeline (within its bounds) and stops it.
func (n *Node) stopLogging() {
	if n.port != nil {
		n.port.Close()
	}
	if n.rec != nil {
		n.rec.Close()
	}
	if n.async != nil {
		n.async.Close()
	}
}

// Dial connects to addr and returns the peer's live reference, registered;
// if this node holds a live reference it dialed to addr already, it returns
// that one. addr is "host:port", or "ID@host:port" to refuse any peer but
// that one (authenticated with WithTLS).
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
	var d net.Dialer
	nc, err := d.DialContext(ctx, "tcp", hostport)
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

func (n *Node) acceptLoop() {
	defer n.wg.Done()
	for {
		nc, err := n.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			n.logger.Warn("accept failed", zap.Error(err))
			select {
			case <-time.After(10 * time.Millisecond): // e.g. out of file descriptors
			case <-n.ctx.Done():
				return
			}
			continue
		}
		if n.penalties.refused(nc.RemoteAddr(), time.Now()) {
			nc.Close()
			n.penaltyRefused.Add(1)
			continue
		}
		h := n.admitHandshake(nc)
		if h == nil {
			return // closing
		}
		n.wg.Add(1)
		go func() {
			defer n.wg.Done()
			n.serveConn(nc, h)
		}()
	}
}

// pendingHandshake is a connection whose handshake is in progress.
type pendingHandshake struct {
	nc      net.Conn
	start   time.Time
	evicted bool
}

// admitHandshake makes room for a new handshake. While the node handshakes
// maxPendingHandshakes connections, a new one waits (in the kernel's accept
// queue, for the dialers behind it) until a slot frees, or until the oldest
// handshake has taken so much longer than good ones lately take that it
// is stalled: that one is cut off. So a storm of good peers (thousands
// dialing a restarted node at once) is admitted steadily, each in turn,
// while dialers that hold handshakes open to exhaust the slots lose them
// to the next arrival within about staleHandshake. It returns nil if the
// node closes meanwhile.
func (n *Node) admitHandshake(nc net.Conn) *pendingHandshake {
	h := &pendingHandshake{nc: nc}
	var victim net.Conn
	n.hsMu.Lock()
	for n.hsLive >= maxPendingHandshakes {
		i := slices.IndexFunc(n.hsPending, func(o *pendingHandshake) bool { return !o.evicted })
		oldest := n.hsPending[i]
		stale := n.staleHandshake()
		age := time.Since(oldest.start)
		if age >= stale {
			oldest.evicted = true
			n.hsLive--
			victim = oldest.nc
			break
		}
		n.hsMu.Unlock()
		t := time.NewTimer(stale - age)
		select {
		case <-n.hsFreed:
		case <-t.C:
		case <-n.ctx.Done():
			t.Stop()
			nc.Close()
			return nil
		}
		t.Stop()
		n.hsMu.Lock()
	}
	h.start = time.Now()
	n.hsPending = append(n.hsPending, h)
	n.hsLive++
	n.hsMu.Unlock()
	if victim != nil {
		n.logger.Info("handshake slots full: the oldest, stalled handshake cut off", zap.Stringer("addr", victim.RemoteAddr()))
		victim.Close()
	}
	return h
}

// staleHandshake is how long a handshake may take before a new arrival
// may cut it off when every slot is taken: eight times what good handshakes
// took lately, within [minStaleHandshake, half the handshake timeout].
// Under hsMu.
func (n *Node) staleHandshake() time.Duration {
	timeout := n.rcfg.HandshakeTimeout
	if timeout <= 0 {
		timeout = rpc.DefaultHandshakeTimeout
	}
	return min(max(minStaleHandshake, 8*n.hsTook), timeout/2)
}

// minStaleHandshake: a good handshake on a quiet machine takes about a
// millisecond; 100 ms leaves room for a slow path and a busy node.
const minStaleHandshake = 100 * time.Millisecond

// firstHandshakeGuess is what good handshakes are taken to last before any
// has finished: when thousands of peers dial a node that just started, the
// first 512 share the CPU and none finishes within a few milliseconds;
// cutting them would only make their dialers come back.
const firstHandshakeGuess = 250 * time.Millisecond

// handshakeDone frees h's slot. ok says the handshake succeeded: its
// duration then feeds the average that tells stalled handshakes from slow
// ones (staleHandshake). It reports whether h may go on: not if it was cut
// off meanwhile, whose connection is closed already.
func (n *Node) handshakeDone(h *pendingHandshake, ok bool) bool {
	n.hsMu.Lock()
	defer n.hsMu.Unlock()
	if i := slices.Index(n.hsPending, h); i >= 0 {
		n.hsPending = slices.Delete(n.hsPending, i, i+1)
	}
	if ok {
		// An exponentially weighted average over about the last 16.
		n.hsTook += (time.Since(h.start) - n.hsTook) / 16
	}
	if h.evicted {
		return false
	}
	n.hsLive--
	select {
	case n.hsFreed <- struct{}{}:
	default:
	}
	return true
}

// serveConn handshakes with a peer that dialed in, frees its handshake
// slot, and registers it.
func (n *Node) serveConn(nc net.Conn, h *pendingHandshake) {
	cfg := *n.rcfg
	c, err := rpc.Server(n.ctx, nc, &cfg)
	if !n.handshakeDone(h, err == nil) {
		if c != nil {
			c.Abort(errHandshakeCut) // its transport is closed already
		}
		return
	}
	if err != nil {
		// Not yet a peer: a port scan, a stranger, an old version. Info, so
		// that strangers cannot trigger incidents.
		n.logger.Info("handshake refused", zap.Stringer("addr", nc.RemoteAddr()), zap.Error(err))
		return
	}
	tetheropts.AddIncoming(n.reg, c, nc.RemoteAddr().String()) // on error, c is closed
}

// errHandshakeCut ends a connection whose handshake finished just as it
// was cut off for taking too long.
var errHandshakeCut = errors.New("handshake cut off: the node's handshake slots were full")

// Close stops listening, says goodbye to every peer (so they evict this
// node at once), cancels the handlers still running, and waits for the
// node's goroutines. It leaks none.
func (n *Node) Close() error {
	n.closeOnce.Do(func() { n.shutdown(false) })
	return nil
}

// ErrAborted is the cause of death of a node's connections when the node
// is aborted (Node.Abort). It matches rpc.ErrClosed: this side ended them.
var ErrAborted = fmt.Errorf("node aborted: %w", rpc.ErrClosed)

// Abort closes the listener and resets every connection with no goodbye,
// as a crash would: peers see a reset (a TCP RST, over TLS too), not "peer
// left", and evict the node as they would a crashed one. On this side the
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
	n.ln.Close()
	n.wg.Wait() // handshakes in progress end with n.ctx
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

func (n *Node) String() string { return fmt.Sprintf("tether.Node(%s at %s)", n.ID(), n.Addr()) }
