package rpc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/yamux"
	"go.uber.org/zap"
)

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
	remote   hello // the peer's limits
	server   bool

	wire *wireConn
	sess *yamux.Session
	ctrl *yamux.Stream
	base context.Context // parent of handler contexts; carries the Conn

	mu           sync.Mutex
	pending      map[uint64]*call    // our calls awaiting an answer
	serving      map[uint64]*callCtx // the peer's calls and streams running here
	probes       map[uint64]probe    // our pings awaiting a pong
	nextID       uint64              // last call or stream ID issued
	refused      int                 // calls refused over the limit since refusedSince
	refusedSince int64               // nanotime
	probeID      uint64              // last ping nonce issued
	dead         *DeadError

	closed     atomic.Bool
	leaving    atomic.Pointer[error] // Leave is saying goodbye: the end that follows is ours
	done       chan struct{}
	resumed    chan struct{} // closed when the connection may serve
	resumeOnce sync.Once
	ctx        context.Context // ends at death, with the *DeadError as cause
	kill       context.CancelCauseFunc
	failed     int // outstanding calls failed at death

	wmu      sync.Mutex
	ctlq, wq []outFrame // control frames go first
	spareCtl []outFrame
	spareQ   []outFrame
	writing  bool       // the writer holds a batch
	writerUp bool       // a writer goroutine runs
	queued   int        // bytes queued and not yet written
	drained  *sync.Cond // on wmu: the queue fell below half of its bound
	wclosed  bool
	wake     chan struct{} // 1-buffered: frames are queued
	batch    []byte

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
	CallsOut       uint64    // calls made to the peer
	CallsIn        uint64    // calls and streams the peer made to us
	LateResponses  uint64    // answers that arrived after their caller gave up: dropped
	Unsent         uint64    // calls cancelled before their request was written: never sent
	CancelsSent    uint64    // "nevermind" frames sent for calls already written
	Rejected       uint64    // the peer's calls refused: unknown method, over a limit
	HandlerPanics  uint64    // handlers that panicked (answered with CodeInternal)
	ReaderPaused   uint64    // times reading stopped because answers piled up unsent (MaxWriteQueue)
	Outstanding    int       // our calls awaiting an answer now
	FailedAtDeath  int       // our calls failed at once when the connection died
	Serving        int       // the peer's calls and streams running here now
	BytesReceived  uint64    // bytes read from the transport
	LastReceived   time.Time // when the peer last showed life (see Conn.LastReceived)
	LastSent       time.Time // when bytes were last written to the transport
	RemoteMaxCalls int       // the peer's limit on our concurrent calls
	RemoteMaxSize  int       // the peer's limit on one message
}

// call is one outgoing call. Calls are pooled; a call whose caller gave up
// is left to the garbage collector, because the writer may still hold it.
type call struct {
	state atomic.Uint32
	buf   []byte // the whole request frame
	resp  []byte
	err   error
	done  chan struct{} // buffered: the reader never blocks on it
}

const (
	stateQueued    = 0 // in the writer's queue
	stateSent      = 1 // the writer took it: on the wire or about to be
	stateCancelled = 2 // the caller gave up before the writer took it
)

var callPool = sync.Pool{New: func() any { return &call{done: make(chan struct{}, 1)} }}

func getCall() *call {
	cl := callPool.Get().(*call)
	cl.state.Store(stateQueued)
	return cl
}

func putCall(cl *call) {
	cl.resp, cl.err = nil, nil
	if cap(cl.buf) > 64<<10 {
		cl.buf = nil
	}
	callPool.Put(cl)
}

type probe struct {
	sent int64
	fn   func(time.Duration)
}

// outFrame is one frame waiting for the writer.
type outFrame struct {
	kind kind
	id   uint64
	buf  []byte        // a whole request frame (call != nil), or a payload
	call *call         // for requests: skipped unless still queued
	sent chan struct{} // for goaway: closed once written
}

func newConn(cfg *Config, w *wireConn, sess *yamux.Session, ctrl *yamux.Stream, remote *hello, server bool) *Conn {
	c := &Conn{
		cfg:      cfg,
		remoteID: remote.id,
		remote:   *remote,
		server:   server,
		wire:     w,
		sess:     sess,
		ctrl:     ctrl,
		pending:  make(map[uint64]*call),
		serving:  make(map[uint64]*callCtx),
		probes:   make(map[uint64]probe),
		done:     make(chan struct{}),
		wake:     make(chan struct{}, 1),
		resumed:  make(chan struct{}),
	}
	c.drained = sync.NewCond(&c.wmu)
	if !cfg.StartPaused {
		c.Resume()
	}
	c.base = context.WithValue(context.Background(), connKey{}, c)
	c.ctx, c.kill = context.WithCancelCause(context.Background())
	c.rd.cr = ctrlReader{src: ctrl, consumed: &c.rd.consumed}
	c.rd.mu.Lock()
	c.runReader()
	c.rd.mu.Unlock()
	arrived, start := c.streamArrived, c.startReader
	w.onSYN.Store(&arrived)
	w.onCtrl.Store(&start)
	c.streamArrived() // for streams opened before onSYN was set
	return c
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
func (c *Conn) Context() context.Context { return c.ctx }

// LastReceived is when the peer last showed life: a whole frame on the
// control stream (a call, an answer, a probe's answer...), or another 4 KiB
// of anything (a bulk stream crawling over a slow link). A peer that drips
// bytes without completing frames shows none.
func (c *Conn) LastReceived() time.Time { return monoTime(c.wire.lastRecv.Load()) }

// LastSent is when bytes were last written to the transport.
func (c *Conn) LastSent() time.Time { return monoTime(c.wire.lastSend.Load()) }

// Outstanding is the number of our calls awaiting an answer.
func (c *Conn) Outstanding() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.pending)
}

// Stats returns the connection's counters.
func (c *Conn) Stats() Stats {
	c.mu.Lock()
	out, serving, failed := len(c.pending), len(c.serving), c.failed
	c.mu.Unlock()
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
	}
}

func (c *Conn) deadErr() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.dead
}

// Call calls method on the peer and waits for its answer.
//
// args may be []byte, passed raw, or any value the Config's Codec encodes;
// reply may be *[]byte, which receives the raw answer, nil to discard it, or
// a pointer the Codec decodes into. The request is copied before it is
// queued, so args may be reused as soon as Call returns.
//
// ctx's deadline travels with the request as a relative timeout and bounds
// the handler's context. When ctx ends first, Call returns ctx.Err() at once;
// a request not yet written is never written, and one already written is
// followed by a cancel frame that ends the handler's context.
//
// Errors: a *DeadError when the connection is or goes dead; a *RemoteError
// when the handler fails or the peer refuses the call; ErrMessageTooLarge and
// ErrTooManyCalls, before any I/O, when the peer's limits forbid the call.
func (c *Conn) Call(ctx context.Context, method string, args, reply any) error {
	if c.closed.Load() {
		return c.deadErr()
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if len(method) == 0 || len(method) > maxMethodLen {
		return fmt.Errorf("rpc: method name of %d bytes: it must be 1 to %d", len(method), maxMethodLen)
	}
	a, err := encodeArgs(c.cfg.Codec, args)
	if err != nil {
		return err
	}
	if len(a) > int(c.remote.maxMessage) {
		return fmt.Errorf("rpc: %w: a %d-byte request to %s exceeds the peer's limit of %d bytes",
			ErrMessageTooLarge, len(a), method, c.remote.maxMessage)
	}
	var timeout time.Duration
	if dl, ok := ctx.Deadline(); ok {
		if timeout = time.Until(dl); timeout <= 0 {
			return context.DeadlineExceeded
		}
	}

	cl := getCall()
	c.mu.Lock()
	if c.dead != nil {
		c.mu.Unlock()
		callPool.Put(cl)
		return c.deadErr()
	}
	if len(c.pending) >= int(c.remote.maxCalls) {
		n := len(c.pending)
		c.mu.Unlock()
		callPool.Put(cl)
		return fmt.Errorf("rpc: %w: %d calls outstanding to %s, its limit", ErrTooManyCalls, n, c.remoteID)
	}
	c.nextID++
	id := c.nextID
	c.pending[id] = cl
	c.mu.Unlock()

	cl.buf = appendRequest(cl.buf[:0], kindRequest, id, timeout, method, a)
	c.stats.callsOut.Add(1)
	c.enqueue(outFrame{kind: kindRequest, id: id, buf: cl.buf, call: cl}, false)

	select {
	case <-cl.done:
		resp, err := cl.resp, cl.err
		if _, died := err.(*DeadError); !died {
			// (A call failed by the connection's death may still be in the
			// writer's hands, its request being copied: the GC takes it.)
			putCall(cl)
		}
		if err != nil {
			if re, ok := err.(*RemoteError); ok {
				re.Method = method
			}
			return err
		}
		return decodeReply(c.cfg.Codec, resp, reply)
	case <-ctx.Done():
		c.abandon(id, cl)
		return ctx.Err()
	}
}

// abandon takes back a call whose caller gave up.
func (c *Conn) abandon(id uint64, cl *call) {
	c.mu.Lock()
	_, mine := c.pending[id]
	delete(c.pending, id)
	c.mu.Unlock()
	if !mine {
		return // answered or failed meanwhile
	}
	if cl.state.CompareAndSwap(stateQueued, stateCancelled) {
		c.stats.unsent.Add(1) // "nevermind" before it went out: nothing to tell
		return
	}
	c.stats.cancelsSent.Add(1)
	c.enqueue(outFrame{kind: kindCancel, id: id}, true)
}

// Probe sends a liveness probe. fn gets the round trip when the answer
// arrives; it runs on the connection's reader and must not block. If the
// connection dies first, fn is never called. Probe never blocks. The answer
// comes from the peer's dispatcher, so a hung process does not answer even
// when its kernel still acknowledges our bytes.
func (c *Conn) Probe(fn func(rtt time.Duration)) error {
	c.mu.Lock()
	if c.dead != nil {
		c.mu.Unlock()
		return c.deadErr()
	}
	c.probeID++
	nonce := c.probeID
	c.probes[nonce] = probe{sent: nanotime(), fn: fn}
	if len(c.probes) > maxProbes {
		delete(c.probes, nonce-maxProbes) // forget the oldest unanswered
	}
	c.mu.Unlock()
	c.enqueue(outFrame{kind: kindPing, id: nonce}, true)
	return nil
}

const maxProbes = 64

// Ping sends a probe and waits for its answer.
func (c *Conn) Ping(ctx context.Context) (time.Duration, error) {
	ch := make(chan time.Duration, 1)
	if err := c.Probe(func(d time.Duration) { ch <- d }); err != nil {
		return 0, err
	}
	select {
	case d := <-ch:
		return d, nil
	case <-ctx.Done():
		return 0, ctx.Err()
	case <-c.done:
		return 0, c.deadErr()
	}
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
	c.kill(c.dead)
	c.stopAccepting()
	c.stopReader()
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
	c.Resume()            // goroutines held by StartPaused must run to end
	c.wg.Wait()
	return nil
}

// Resume lets a connection made with Config.StartPaused serve: until then
// it reads nothing, so no handler runs before its owner is ready (a peer
// registry, for one, registers the connection first). It does nothing on a
// connection not paused, or already resumed.
func (c *Conn) Resume() {
	c.resumeOnce.Do(func() { close(c.resumed) })
}

// goAwayWait bounds how long Leave waits for its goodbye to be written and
// for the peer to hang up after reading it.
const goAwayWait = 250 * time.Millisecond

// enqueue hands a frame to the writer. It returns false when the connection
// is dead.
func (c *Conn) enqueue(f outFrame, control bool) bool {
	c.wmu.Lock()
	if c.wclosed {
		c.wmu.Unlock()
		return false
	}
	if control {
		c.ctlq = append(c.ctlq, f)
	} else {
		c.wq = append(c.wq, f)
	}
	c.queued += len(f.buf) + headerSize
	start := !c.writerUp
	if start {
		c.writerUp = true
		c.wg.Add(1)
	}
	c.wmu.Unlock()
	if start {
		go c.writeLoop()
		return true
	}
	select {
	case c.wake <- struct{}{}:
	default: // already woken
	}
	return true
}

// writerIdle is how long the writer waits for work before it exits: less
// than a probe interval, so a connection that only carries probes keeps no
// writer between them. The writer is a goroutine of its own (not the
// caller's), so that a write blocked in the kernel never holds up a caller
// whose context ends; it lives on while calls keep coming, because starting
// a goroutine costs an allocation, and it leaves an idle connection,
// because 10,000 idle peers should not keep 10,000 writers.
const writerIdle = 100 * time.Millisecond

// writeLoop is the connection's one writer. Everything queued at once goes
// out in one write, control frames first.
func (c *Conn) writeLoop() {
	defer c.wg.Done()
	idle := time.NewTimer(writerIdle)
	defer idle.Stop()
	for {
		for {
			c.wmu.Lock()
			if c.wclosed || (len(c.ctlq) == 0 && len(c.wq) == 0) {
				c.writing = false
				c.wmu.Unlock()
				break
			}
			c.writing = true
			ctl, q := c.ctlq, c.wq
			c.ctlq, c.wq = c.spareCtl[:0], c.spareQ[:0]
			c.wmu.Unlock()

			err := c.writeBatch(ctl, q)
			n := 0
			for _, f := range ctl {
				n += len(f.buf) + headerSize
			}
			for _, f := range q {
				n += len(f.buf) + headerSize
			}
			clear(ctl)
			clear(q)

			c.wmu.Lock()
			c.spareCtl, c.spareQ = ctl[:0], q[:0]
			if c.queued -= n; c.queued <= c.cfg.MaxWriteQueue/2 {
				c.drained.Broadcast()
			}
			c.wmu.Unlock()
			if err != nil {
				c.Abort(c.transportCause(err))
				return
			}
		}
		idle.Reset(writerIdle)
		select {
		case <-c.wake:
		case <-c.done:
			return
		case <-idle.C:
			c.wmu.Lock()
			if len(c.ctlq) == 0 && len(c.wq) == 0 {
				c.writerUp = false // the next enqueue starts a writer
				c.wmu.Unlock()
				return
			}
			c.wmu.Unlock()
		}
	}
}

// directWrite is the size above which a frame is written on its own rather
// than copied into the batch.
const directWrite = 32 << 10

func (c *Conn) writeBatch(ctl, q []outFrame) error {
	b := c.batch[:0]
	var sent []chan struct{}
	for _, f := range ctl {
		b = appendHeader(b, f.kind, len(f.buf), f.id)
		b = append(b, f.buf...)
		if f.sent != nil {
			sent = append(sent, f.sent)
		}
	}
	for _, f := range q {
		if f.call != nil && !f.call.state.CompareAndSwap(stateQueued, stateSent) {
			continue // the caller gave up: never written
		}
		if f.call == nil { // a response, error or goaway: header here, payload in buf
			b = appendHeader(b, f.kind, len(f.buf), f.id)
		}
		if f.sent != nil {
			sent = append(sent, f.sent)
		}
		if len(f.buf) < directWrite {
			b = append(b, f.buf...)
			continue
		}
		if len(b) > 0 {
			if _, err := c.ctrl.Write(b); err != nil {
				return err
			}
			b = b[:0]
		}
		if _, err := c.ctrl.Write(f.buf); err != nil {
			return err
		}
	}
	if len(b) > 0 {
		if _, err := c.ctrl.Write(b); err != nil {
			return err
		}
	}
	if cap(b) <= 1<<20 {
		c.batch = b[:0]
	} else {
		c.batch = nil
	}
	for _, s := range sent {
		close(s)
	}
	return nil
}

// transportCause explains why the transport failed, preferring what the
// socket said over what yamux made of it.
func (c *Conn) transportCause(err error) error {
	if cause := c.leaving.Load(); cause != nil {
		return *cause
	}
	if terr := c.wire.transportErr(); terr != nil {
		err = terr
	}
	if errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("connection closed by the peer in the middle of a frame: %w", err)
	}
	if errors.Is(err, io.EOF) || errors.Is(err, yamux.ErrStreamClosed) || errors.Is(err, yamux.ErrSessionShutdown) {
		return fmt.Errorf("connection closed by the peer: %w", io.EOF)
	}
	return err
}

// waitForRoom holds the reader while more than MaxWriteQueue bytes wait to
// be written: a peer that does not read what it asked for gets no more of
// its requests served, so it cannot make us hold answers without bound.
// (If it stays stuck, it answers no probe either, and liveness evicts it.)
func (c *Conn) waitForRoom() {
	c.wmu.Lock()
	for c.queued > c.cfg.MaxWriteQueue && !c.wclosed {
		c.stats.readerPaused.Add(1)
		c.drained.Wait()
	}
	c.wmu.Unlock()
}

func (c *Conn) handleFrame(h header, p []byte) error {
	switch h.kind {
	case kindRequest:
		return c.serveCall(h.id, p)
	case kindResponse, kindError:
		return c.finishCall(h, p)
	case kindCancel:
		c.mu.Lock()
		cc := c.serving[h.id]
		c.mu.Unlock()
		if cc != nil {
			cc.abandon()
		}
	case kindPing:
		c.enqueue(outFrame{kind: kindPong, id: h.id}, true)
	case kindPong:
		return c.finishProbe(h.id)
	case kindGoAway:
		return fmt.Errorf("%w: %q", ErrPeerLeft, p)
	default:
		return violation("%v frame on the control stream", h.kind)
	}
	return nil
}

func (c *Conn) finishCall(h header, p []byte) error {
	c.mu.Lock()
	cl, ok := c.pending[h.id]
	if ok && cl.state.Load() == stateQueued {
		c.mu.Unlock()
		return violation("answer to call %d before it was sent", h.id)
	}
	delete(c.pending, h.id)
	issued := c.nextID
	c.mu.Unlock()
	if !ok {
		if h.id == 0 || h.id > issued {
			return violation("answer to call %d, which was never made", h.id)
		}
		c.stats.lateResponses.Add(1) // its caller gave up: drop, never log one by one
		return nil
	}
	if h.kind == kindError {
		re, err := parseError(p)
		if err != nil {
			cl.err = err
			cl.done <- struct{}{}
			return err
		}
		cl.err = re
	} else {
		cl.resp = p
	}
	cl.done <- struct{}{}
	return nil
}

func (c *Conn) finishProbe(nonce uint64) error {
	c.mu.Lock()
	pr, ok := c.probes[nonce]
	delete(c.probes, nonce)
	issued := c.probeID
	c.mu.Unlock()
	if !ok {
		if nonce == 0 || nonce > issued {
			return violation("pong %d for a ping never sent", nonce)
		}
		return nil // forgotten: too old
	}
	pr.fn(time.Duration(nanotime() - pr.sent))
	return nil
}

// admit registers one of the peer's calls or streams, or says why not. Its
// context ends at the timeout, if any, on the caller's cancel, when the
// connection dies, or when released.
//
// Refusals past the limit are allowed for a while, since a call the peer
// cancelled may still run here; a refused stream counts as streamRefusalCost
// refused calls, as it cost a yamux stream, a goroutine and a timer.
func (c *Conn) admit(id uint64, timeout time.Duration, cost int) (*callCtx, Code, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.dead != nil {
		return nil, CodeUnavailable, c.dead
	}
	if _, dup := c.serving[id]; dup {
		return nil, 0, violation("call %d while a call with that ID is running", id)
	}
	if len(c.serving) >= c.cfg.MaxConcurrentCalls {
		// Our limit is in our hello: a peer of ours never calls past it but
		// in a race (a call it cancelled still running here). One that keeps
		// calling past it ignores it, and costs us work for each refusal.
		now := nanotime()
		if now-c.refusedSince > int64(time.Second) {
			c.refusedSince, c.refused = now, 0
		}
		if c.refused += cost; c.refused > 2*c.cfg.MaxConcurrentCalls+16 {
			return nil, 0, violation("%d calls past the advertised limit of %d concurrent calls within a second", c.refused, c.cfg.MaxConcurrentCalls)
		}
		return nil, CodeResourceExhausted, nil
	}
	cc := newCallCtx(c.base, timeout)
	c.serving[id] = cc
	return cc, 0, nil
}

// release unregisters a call and ends its context.
func (c *Conn) release(id uint64, cc *callCtx) {
	c.mu.Lock()
	if c.serving[id] == cc {
		delete(c.serving, id)
	}
	c.mu.Unlock()
	cc.cancel(context.Canceled)
}

func (c *Conn) serveCall(id uint64, p []byte) error {
	timeout, method, args, err := parseRequest(p)
	if err != nil {
		return err
	}
	c.stats.callsIn.Add(1)
	h := c.cfg.Mux.lookup(method).call
	if h == nil {
		c.stats.rejected.Add(1)
		c.replyError(id, CodeUnknownMethod, "no handler for "+string(method))
		return nil
	}
	cc, code, err := c.admit(id, timeout, 1)
	if err != nil || code != 0 {
		if code == CodeResourceExhausted {
			c.stats.rejected.Add(1)
			c.replyError(id, code, fmt.Sprintf("%d calls running, the limit per connection", c.cfg.MaxConcurrentCalls))
			return nil
		}
		if errors.Is(err, ErrProtocolViolation) {
			return err
		}
		return nil // dead
	}
	go c.runHandler(cc, id, h, method, args)
	return nil
}

func (c *Conn) runHandler(cc *callCtx, id uint64, h Handler, method, args []byte) {
	resp, err := c.invoke(cc, h, method, args)
	// Queue the answer before releasing the call, so that a call counts as
	// serving until its answer is on its way (a drain waits for that), and
	// a goodbye queued after it goes out after it.
	switch {
	case !cc.wanted(): // the caller gave up, or the connection died: nobody to answer
	case err != nil:
		code, msg := remoteErrorOf(err)
		c.replyError(id, code, msg)
	case len(resp) > int(c.remote.maxMessage):
		c.replyError(id, CodeMessageTooLarge, fmt.Sprintf("a %d-byte reply exceeds the caller's limit of %d bytes", len(resp), c.remote.maxMessage))
	default:
		c.enqueue(outFrame{kind: kindResponse, id: id, buf: resp}, false)
	}
	c.release(id, cc)
}

// invoke runs a handler, turning a panic into CodeInternal.
func (c *Conn) invoke(ctx context.Context, h Handler, method, args []byte) (resp []byte, err error) {
	defer func() {
		if r := recover(); r != nil {
			c.stats.handlerPanics.Add(1)
			c.cfg.Logger.Error("handler panicked", zap.ByteString("method", method),
				zap.String("peer", c.remoteID), zap.Any("panic", r), zap.ByteString("stack", debug.Stack()))
			resp, err = nil, Errorf(CodeInternal, "handler panicked: %v", r)
		}
	}()
	return h.ServeRPC(ctx, args)
}

func (c *Conn) replyError(id uint64, code Code, msg string) {
	c.enqueue(outFrame{kind: kindError, id: id, buf: errorPayload(code, msg)}, false)
}
