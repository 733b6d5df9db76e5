package rpc

import (
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/yamux"
	"go.uber.org/zap"

	"github.com/tetherrpc/tether/internal/tetheropts"
)

func init() { tetheropts.SetResumeConn((*Conn).resume) }

// Conn is one connection to a peer: a yamux session over TCP or TLS that
// carries calls in both directions on one control stream, and bulk data on
// streams of their own. Create one with Client or Server.
//
// A Conn is like a context: once dead it stays dead. Done is closed at the
// instant it dies, and from then on every call fails at once with a
// *DeadError (errors.Is(err, ErrDeadReference)), without any I/O.
type Conn struct {
	cfg      *Config
	remoteID string
	remote   limits // the peer's limits, from its hello
	server   bool

	wire *wireConn
	sess *yamux.Session
	ctrl *yamux.Stream
	base context.Context // parent of handler contexts; carries the Conn

	mu      sync.Mutex
	pending map[uint64]*call // our calls awaiting an answer
	// streamsWaiting counts the streams opened here that wrote since they
	// last read: requests awaiting an answer (see Outstanding).
	streamsWaiting atomic.Int32
	serving        map[uint64]*callCtx // the peer's calls and streams running here
	probes         []probe             // our pings awaiting a pong, oldest first
	nextID         uint64              // last call or stream ID issued
	refused        int                 // calls refused over the limit since refusedSince
	refusedSince   int64               // nanotime
	probeID        uint32              // last probe nonce issued
	dead           *DeadError

	closed     atomic.Bool
	leaving    atomic.Pointer[error] // Leave is saying goodbye: the end that follows is ours
	done       chan struct{}
	halted     chan struct{} // closed once death has stopped every goroutine's start
	resumed    chan struct{} // closed when the connection may serve
	resumeOnce sync.Once
	afterFns   []*afterFn // what the connection's Context runs at death (see connCtx)
	afterRan   bool       // they ran: done is closed
	failed     int        // outstanding calls failed at death

	wmu      sync.Mutex
	ctlq, wq []outFrame // control frames go first
	writing  bool       // the writer holds a batch
	writerUp bool       // a writer goroutine runs
	queued   int        // bytes queued and not yet written
	drained  *sync.Cond // on wmu: the queue fell below half of its bound
	wclosed  bool
	wake     chan struct{} // 1-buffered: frames are queued

	wg  sync.WaitGroup // reader, acceptor, writer
	acc acceptor       // runs a goroutine in Accept only while streams come
	rd  reader         // runs a goroutine reading the control stream while frames come

	stats connStats
}

type connStats struct {
	callsOut, callsIn       atomic.Uint64
	lateResponses           atomic.Uint64
	unsent, cancelsSent     atomic.Uint64
	rejected, handlerPanics atomic.Uint64
	readerPaused            atomic.Uint64
}

// Stats is a snapshot of a connection's counters and state. The counters
// (CallsOut to ReaderPaused, and BytesReceived) are cumulative over the
// connection's life; Outstanding, Serving, LastReceived and LastSent are
// current values, as of the snapshot; FailedAtDeath is set once, at death;
// RemoteMaxCalls and RemoteMaxSize are the peer's limits, from its hello.
type Stats struct {
	CallsOut       uint64        // calls made to the peer
	CallsIn        uint64        // calls and streams the peer made to us
	LateResponses  uint64        // answers that arrived after their caller gave up: dropped
	Unsent         uint64        // calls cancelled before their request was written: never sent
	CancelsSent    uint64        // "nevermind" frames sent for calls already written
	Rejected       uint64        // the peer's calls refused: unknown method, over a limit
	HandlerPanics  uint64        // handlers that panicked (answered with CodeInternal)
	ReaderPaused   uint64        // times reading stopped because answers piled up unsent (MaxWriteQueue)
	Outstanding    int           // our calls awaiting an answer now
	FailedAtDeath  int           // our calls failed at once when the connection died
	Serving        int           // the peer's calls and streams running here now
	BytesReceived  uint64        // bytes read from the transport
	LastReceived   time.Time     // when the peer last showed life (see Conn.LastReceived)
	LastSent       time.Time     // when bytes were last written to the transport
	RemoteMaxCalls int           // the peer's limit on our concurrent calls
	RemoteMaxSize  int           // the peer's limit on one message
	RecvWindow     int64         // bytes of receive window the streams hold now (see Config.MaxStreamWindow)
	WindowGrowths  uint64        // times a stream's window grew
	RTT            time.Duration // the path's round trip, near its least (handshake, probes)
}

func newConn(cfg *Config, w *wireConn, sess *yamux.Session, ctrl *yamux.Stream, remote *hello, server bool) *Conn {
	c := &Conn{
		cfg:      cfg,
		remoteID: remote.id,
		remote:   limits{maxMessage: remote.maxMessage, maxCalls: remote.maxCalls},
		server:   server,
		wire:     w,
		sess:     sess,
		ctrl:     ctrl,
		done:     make(chan struct{}),
		halted:   make(chan struct{}),
		wake:     make(chan struct{}, 1),
		resumed:  make(chan struct{}),
	}
	c.drained = sync.NewCond(&c.wmu)
	if !tetheropts.Paused(&cfg.Internal) {
		c.resume()
	}
	c.base = context.WithValue(context.Background(), connKey{}, c)
	c.rd.cr = ctrlReader{src: ctrl, consumed: &c.rd.consumed, win: w.win}
	arrived, start := c.streamArrived, c.startReader
	pong := c.finishProbe
	w.onPong.Store(&pong)
	w.onSYN.Store(&arrived)
	w.onCtrl.Store(&start)
	c.streamArrived() // for streams opened before onSYN was set
	c.startReader()   // for control frames that came before onCtrl was set
	return c
}

// limits are what the peer said in its hello that a connection keeps.
type limits struct {
	maxMessage uint32 // the largest payload the peer accepts
	maxCalls   uint32 // how many concurrent calls it serves
}

type connKey struct{}

// FromContext returns the connection a handler's call came in on, or nil.
func FromContext(ctx context.Context) *Conn {
	c, _ := ctx.Value(connKey{}).(*Conn)
	return c
}

// RemoteID is the peer's node ID, as told in the handshake (and, with TLS,
// derived from its certificate).
func (c *Conn) RemoteID() string { return c.remoteID }

// LocalID is this node's ID.
func (c *Conn) LocalID() string { return c.cfg.ID }

// RemoteAddr is the peer's network address.
func (c *Conn) RemoteAddr() net.Addr { return c.wire.RemoteAddr() }

// LocalAddr is this side's network address.
func (c *Conn) LocalAddr() net.Addr { return c.wire.LocalAddr() }

// NetConn returns the transport under yamux (a *tls.Conn with TLS), for
// kernel-level evidence such as TCP_INFO.
func (c *Conn) NetConn() net.Conn {
	if r, ok := c.wire.Conn.(*replayConn); ok {
		return r.Conn
	}
	return c.wire.Conn
}

// Done is closed when the connection dies.
func (c *Conn) Done() <-chan struct{} { return c.done }

// Err is nil while the connection lives; then a *DeadError.
func (c *Conn) Err() error {
	if !c.closed.Load() {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.dead
}

// Context ends when the connection dies; context.Cause is then its
// *DeadError. Use context.AfterFunc on it to learn of a death without a
// goroutine per connection.
func (c *Conn) Context() context.Context { return connCtx{c} }

// LastReceived is when the peer last showed life: a whole frame on the
// control stream (a call, an answer, a probe's answer...), or another 4 KiB
// of anything (a bulk stream crawling over a slow link). A peer that drips
// bytes without completing frames shows none.
func (c *Conn) LastReceived() time.Time { return monoTime(c.wire.lastRecv.Load()) }

// LastSent is when bytes were last written to the transport.
func (c *Conn) LastSent() time.Time { return monoTime(c.wire.lastSend.Load()) }

// Outstanding is the number of our calls awaiting an answer, plus the
// streams opened here that wrote since they last read (a request sent over
// a stream, by gRPC or HTTP over tether, awaits its answer as a call does).
// Liveness checks a peer with anything outstanding at full rate.
func (c *Conn) Outstanding() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.pending) + int(c.streamsWaiting.Load())
}

// Stats returns the connection's counters.
func (c *Conn) Stats() Stats {
	c.mu.Lock()
	out, serving, failed := len(c.pending), len(c.serving), c.failed
	c.mu.Unlock()
	win, _ := c.wire.win.usage()
	return Stats{
		CallsOut:       c.stats.callsOut.Load(),
		CallsIn:        c.stats.callsIn.Load(),
		LateResponses:  c.stats.lateResponses.Load(),
		Unsent:         c.stats.unsent.Load(),
		CancelsSent:    c.stats.cancelsSent.Load(),
		Rejected:       c.stats.rejected.Load(),
		HandlerPanics:  c.stats.handlerPanics.Load(),
		ReaderPaused:   c.stats.readerPaused.Load(),
		Outstanding:    out,
		FailedAtDeath:  failed,
		Serving:        serving,
		BytesReceived:  c.wire.recvd.Load(),
		LastReceived:   c.LastReceived(),
		LastSent:       c.LastSent(),
		RemoteMaxCalls: int(c.remote.maxCalls),
		RemoteMaxSize:  int(c.remote.maxMessage),
		RecvWindow:     win,
		WindowGrowths:  c.wire.win.grown.Load(),
		RTT:            time.Duration(c.wire.win.rtt.Load()),
	}
}

func (c *Conn) deadErr() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.dead
}

// Abort kills the connection at once with cause: every outstanding call
// fails with a *DeadError wrapping cause, every handler serving the peer has
// its context cancelled, and the transport is reset (a TCP RST, not a FIN).
// It returns how many outstanding calls it failed. Only the first Abort (or
// Close) counts.
//
// Why a reset: Abort is for a peer judged dead or hostile. A FIN would wait
// behind our unacknowledged segments, which the kernel would go on
// retransmitting for minutes; a reset goes out at once, frees the socket,
// and where the path still works one way (a one-way partition) tells the
// peer at once, rather than after its own heartbeats fail.
func (c *Conn) Abort(cause error) int { return c.abort(cause, true) }

func (c *Conn) abort(cause error, reset bool) int {
	if cause == nil {
		cause = ErrClosed
	}
	c.mu.Lock()
	if c.dead != nil {
		c.mu.Unlock()
		return 0
	}
	c.dead = &DeadError{Peer: c.remoteID, Cause: cause}
	c.closed.Store(true)
	pending, serving := c.pending, c.serving
	c.pending, c.serving, c.probes = nil, nil, nil
	c.failed = len(pending)
	c.mu.Unlock()
	if errors.Is(cause, ErrProtocolViolation) {
		// Before anyone hears of the death: the cause comes first in the log.
		c.cfg.Logger.Error("protocol violation: connection closed",
			zap.String("peer", c.remoteID), zap.Stringer("addr", c.RemoteAddr()), zap.Error(cause))
	}

	c.wmu.Lock()
	c.wclosed = true
	c.ctlq, c.wq = nil, nil
	c.drained.Broadcast()
	c.wmu.Unlock()

	for _, cl := range pending {
		cl.err = c.dead
		cl.done <- struct{}{}
	}
	for _, cc := range serving {
		cc.cancel(context.Canceled)
	}
	close(c.done)
	c.runAfterFns()
	c.wire.win.close()
	c.stopAccepting()
	c.stopReader()
	close(c.halted) // (the writer stopped with wclosed)
	// Interrupt the reader's wait now: yamux's Stream.Read spins between
	// the session's shutdown and the closing of its streams, which with
	// thousands of connections aborted at once (a mass failure) takes the
	// CPU the rest of the node needs.
	c.ctrl.SetReadDeadline(time.Unix(1, 0))
	if tc := tcpConn(c.wire.Conn); reset && tc != nil {
		// The socket itself first: over TLS, closing the session would
		// send a close_notify alert ahead of the reset, which the peer
		// reads as an orderly end, and which waits behind unacknowledged
		// bytes on a dead path.
		tc.SetLinger(0)
		tc.Close()
	}
	c.sess.Close()
	return len(pending)
}

// Close says goodbye to the peer and closes the connection: Leave with
// ErrClosed.
func (c *Conn) Close() error { return c.Leave(ErrClosed) }

// Leave says goodbye to the peer (so it evicts this connection at once,
// with ErrPeerLeft, rather than waiting for missed heartbeats), then aborts
// the connection with cause and waits for its goroutines. The goodbye goes
// after the answers already queued. Handlers still running are cancelled
// but not waited for.
//
// Once the goodbye is written, Leave waits (up to goAwayWait) for the peer
// to hang up, reading and answering meanwhile, and only then closes the
// transport. Closing it sooner, with bytes of the peer's unread, would make
// the kernel answer them with a reset, and a peer whose write meets that
// reset before its reader reaches the goodbye would take the close for a
// crash. Nor does Leave half-close: after a half-close (or TLS's
// close_notify) the next write (a window update, a probe's answer) fails,
// and that tears the connection down, reset and all, just the same.
func (c *Conn) Leave(cause error) error {
	if cause == nil {
		cause = ErrClosed
	}
	c.leaving.Store(&cause)
	sent := make(chan struct{})
	reason := cause.Error()
	if len(reason) > maxErrorMessage {
		reason = reason[:maxErrorMessage]
	}
	if c.enqueue(outFrame{kind: kindGoAway, buf: []byte(reason), sent: sent}, false) {
		t := time.NewTimer(goAwayWait)
		select {
		case <-sent:
			select {
			case <-c.done: // the peer read the goodbye and hung up
			case <-c.sess.CloseChan(): // (the same, seen by yamux while paused)
			case <-t.C:
			}
		case <-t.C:
		case <-c.done:
		}
		t.Stop()
	}
	c.abort(cause, false) // a reset could overtake the goodbye
	c.resume()            // goroutines held paused must run to end
	// Another death may be under way (abort returned at once): no
	// goroutine may start once the wait begins.
	<-c.halted
	c.wg.Wait()
	return nil
}

// resume lets a connection made paused (tetheropts.SetPaused) serve: until
// then it reads nothing, so no handler runs before its owner is ready (a
// peer registry, for one, registers the connection first). It does nothing
// on a connection not paused, or already resumed.
func (c *Conn) resume() {
	c.resumeOnce.Do(func() { close(c.resumed) })
}

// goAwayWait bounds how long Leave waits for its goodbye to be written and
// for the peer to hang up after reading it.
const goAwayWait = 250 * time.Millisecond
