package rpc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/yamux"
	"go.uber.org/zap"
)

// Stream is a bidirectional byte stream for bulk data, with yamux flow
// control: a writer blocks while the reader's window is full, so neither side
// buffers more than a window. It follows the rules of calls: the opener's
// context bounds it (cancelling it ends the handler's context too), and it
// dies with its connection, after which Read and Write return a *DeadError.
type Stream struct {
	c      *Conn
	ys     *yamux.Stream
	id     uint64
	ctx    context.Context
	client bool
	stop   func() bool // stops the AfterFunc that interrupts on ctx's end

	mu      sync.Mutex
	sawEOF  bool // the peer closed its side
	closed  bool
	stopped bool // interrupted: ctx ended

	// waiting: opened here, it wrote since it last read (see
	// Conn.Outstanding).
	waiting atomic.Bool
}

// wrote notes a write on a stream opened here: it now awaits an answer.
func (s *Stream) wrote() {
	if s.client && !s.waiting.Load() && s.waiting.CompareAndSwap(false, true) {
		s.c.streamsWaiting.Add(1)
	}
}

// answered notes that the stream read something, or ended.
func (s *Stream) answered() {
	if s.waiting.Load() && s.waiting.CompareAndSwap(true, false) {
		s.c.streamsWaiting.Add(-1)
	}
}

// OpenStream opens a stream to the peer's stream handler for method and
// waits for the peer to accept it (one round trip), so that an unknown method
// or a refusal is an error here rather than on the first Read.
func (c *Conn) OpenStream(ctx context.Context, method string) (*Stream, error) {
	if c.closed.Load() {
		return nil, c.deadErr()
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if len(method) == 0 || len(method) > maxMethodLen {
		return nil, fmt.Errorf("rpc: method name of %d bytes: it must be 1 to %d", len(method), maxMethodLen)
	}
	var timeout time.Duration
	if dl, ok := ctx.Deadline(); ok {
		if timeout = time.Until(dl); timeout <= 0 {
			return nil, context.DeadlineExceeded
		}
	}
	c.mu.Lock()
	if c.dead != nil {
		c.mu.Unlock()
		return nil, c.deadErr()
	}
	c.nextID++
	id := c.nextID
	c.mu.Unlock()

	ys, err := c.sess.OpenStream()
	if err != nil {
		if c.closed.Load() {
			return nil, c.deadErr()
		}
		return nil, fmt.Errorf("rpc: opening a stream: %w", err)
	}
	s := &Stream{c: c, ys: ys, id: id, ctx: ctx, client: true}
	s.stop = context.AfterFunc(ctx, s.interrupt)
	if _, err := ys.Write(appendRequest(nil, kindStreamOpen, id, timeout, method, nil)); err != nil {
		s.Close()
		return nil, s.mapErr(err)
	}
	var hb [headerSize]byte
	h, p, err := readFrame(ys, hb[:], 0)
	c.wire.win.read(ys.StreamID(), headerSize+len(p))
	if err != nil {
		s.Close()
		if errors.Is(err, ErrProtocolViolation) {
			c.Abort(err)
		}
		return nil, s.mapErr(err)
	}
	switch {
	case h.kind == kindResponse && h.id == id:
		c.stats.callsOut.Add(1)
		return s, nil
	case h.kind == kindError && h.id == id:
		s.mu.Lock()
		s.sawEOF = true // refused: the peer runs nothing to cancel
		s.mu.Unlock()
		s.Close()
		re, err := parseError(p)
		if err != nil {
			c.Abort(err)
			return nil, c.deadErr()
		}
		re.Method = method
		return nil, re
	}
	s.Close()
	err = violation("%v frame %d in answer to stream-open %d", h.kind, h.id, id)
	c.Abort(err)
	return nil, c.deadErr()
}

// acceptor runs a goroutine in yamux's Accept only while the peer opens
// streams: the transport's reader tells it of each SYN (wireConn.onSYN),
// and the goroutine leaves after acceptIdle without one.
type acceptor struct {
	mu      sync.Mutex
	running bool
	closed  bool // the connection is dead: start no goroutine
}

// acceptIdle is how long the accepting goroutine waits for another stream
// before it leaves.
const acceptIdle = time.Second

// streamArrived starts the accepting goroutine if the peer opened a stream
// and none runs. It is called by yamux's reader, so it never blocks.
func (c *Conn) streamArrived() {
	a := &c.acc
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.running || a.closed || c.wire.syns.Load() == 0 {
		return
	}
	a.running = true
	c.wg.Add(1)
	go c.acceptLoop()
}

// stopAccepting is called at death, before the connection waits for its
// goroutines: no accepting goroutine starts after it.
func (c *Conn) stopAccepting() {
	c.acc.mu.Lock()
	c.acc.closed = true
	c.acc.mu.Unlock()
}

// acceptLoop serves the streams the peer opens, until none comes for
// acceptIdle.
func (c *Conn) acceptLoop() {
	defer c.wg.Done()
	select {
	case <-c.resumed:
	case <-c.done:
		return
	}
	for {
		seen := c.wire.syns.Load()
		ctx, cancel := context.WithTimeout(c.Context(), acceptIdle)
		ys, err := c.sess.AcceptStreamWithContext(ctx)
		cancel()
		if err == nil {
			go c.serveStream(ys)
			continue
		}
		if !errors.Is(err, context.DeadlineExceeded) || c.Context().Err() != nil {
			return // the session is closed; the reader reports why
		}
		c.acc.mu.Lock()
		if c.wire.syns.Load() == seen { // none opened meanwhile: leave
			c.acc.running = false
			c.acc.mu.Unlock()
			return
		}
		c.acc.mu.Unlock()
	}
}

// streamRefusalCost is what a stream refused past the limit counts for
// against the allowance of refusals before a connection is cut off.
const streamRefusalCost = 4

func (c *Conn) serveStream(ys *yamux.Stream) {
	ys.SetReadDeadline(time.Now().Add(c.cfg.HandshakeTimeout))
	var hb [headerSize]byte
	h, p, err := readFrame(ys, hb[:], 0)
	c.wire.win.read(ys.StreamID(), headerSize+len(p))
	if err == nil && h.kind != kindStreamOpen {
		err = violation("a stream must start with a stream-open frame, not %v", h.kind)
	}
	var timeout time.Duration
	var method []byte
	if err == nil {
		var args []byte
		timeout, method, args, err = parseRequest(p)
		if err == nil && len(args) > 0 {
			err = violation("stream-open frame with %d bytes of arguments", len(args))
		}
	}
	if err != nil {
		c.wire.win.forget(ys.StreamID())
		ys.Close()
		if errors.Is(err, ErrProtocolViolation) {
			c.Abort(err)
		}
		return
	}
	ys.SetReadDeadline(time.Time{})
	c.stats.callsIn.Add(1)

	refuse := func(code Code, msg string) {
		c.stats.rejected.Add(1)
		ys.Write(appendError(nil, h.id, code, msg))
		c.wire.win.forget(ys.StreamID())
		ys.Close()
	}
	handler := c.cfg.Mux.lookup(method).stream
	if handler == nil {
		refuse(CodeUnknownMethod, "no stream handler for "+string(method))
		return
	}
	cc, code, err := c.admit(h.id, timeout, streamRefusalCost)
	if code == CodeResourceExhausted {
		refuse(code, fmt.Sprintf("%d calls and streams running, the limit per connection", c.cfg.MaxConcurrentCalls))
		return
	}
	if err != nil || code != 0 {
		c.wire.win.forget(ys.StreamID())
		ys.Close()
		if errors.Is(err, ErrProtocolViolation) {
			c.Abort(err)
		}
		return
	}
	s := &Stream{c: c, ys: ys, id: h.id, ctx: cc}
	s.stop = context.AfterFunc(cc, s.interrupt)
	if _, err := ys.Write(appendHeader(nil, kindResponse, 0, h.id)); err == nil {
		if err := c.invokeStream(cc, handler, s, method); err != nil {
			c.cfg.Logger.Debug("stream handler failed", zap.ByteString("method", method),
				zap.String("peer", c.remoteID), zap.Error(err))
		}
	}
	c.release(h.id, cc)
	s.Close()
}

func (c *Conn) invokeStream(ctx context.Context, h StreamHandler, s *Stream, method []byte) (err error) {
	defer func() {
		if r := recover(); r != nil {
			c.stats.handlerPanics.Add(1)
			c.cfg.Logger.Error("stream handler panicked", zap.ByteString("method", method),
				zap.String("peer", c.remoteID), zap.Any("panic", r), zap.ByteString("stack", debug.Stack()))
			err = fmt.Errorf("stream handler panicked: %v", r)
		}
	}()
	return h.ServeStream(ctx, s)
}

// interrupt runs when the stream's context ends: blocked Reads and Writes
// return, and the handler on the other side is told.
func (s *Stream) interrupt() {
	s.mu.Lock()
	s.stopped = true
	tell := s.client && !s.sawEOF && !s.closed
	s.mu.Unlock()
	s.ys.SetDeadline(time.Unix(1, 0))
	s.answered()
	if tell {
		s.c.stats.cancelsSent.Add(1)
		s.c.enqueue(outFrame{kind: kindCancel, id: s.id}, true)
	}
	s.fin()
}

// fin half-closes the yamux stream with a FIN, unless the connection is
// dead (then it returns the death and sends nothing): the transport's
// reset ends the stream on the other side, and a FIN sent now could get
// there first and read as a clean end (io.EOF) rather than the death it is.
func (s *Stream) fin() error {
	if s.c.closed.Load() {
		return s.c.deadErr()
	}
	return s.mapErr(s.ys.Close())
}

// Read reads from the stream. It returns io.EOF once the peer has closed its
// side and everything before has been read.
func (s *Stream) Read(p []byte) (int, error) {
	n, err := s.ys.Read(p)
	if n > 0 {
		s.c.wire.win.read(s.ys.StreamID(), n)
	}
	if n > 0 || err != nil {
		s.answered()
	}
	if err == io.EOF {
		s.mu.Lock()
		s.sawEOF = true
		s.mu.Unlock()
		if s.c.dying() {
			return n, s.c.deadErr() // the session died under us: not a clean end
		}
		if cerr := ctxErr(s.ctx); cerr != nil {
			return n, cerr // the peer's side of the deadline came first
		}
		return n, err
	}
	return n, s.mapErr(err)
}

// Write writes to the stream, blocking while the peer's window is full.
func (s *Stream) Write(p []byte) (int, error) {
	// In frames of at most maxStreamFrame: yamux sends one frame per call
	// of up to the whole window, which would keep calls and other streams
	// waiting behind it, and grow yamux's send buffer to its size.
	n := 0
	for n < len(p) {
		k, err := s.ys.Write(p[n:min(len(p), n+maxStreamFrame)])
		n += k
		if k > 0 {
			s.wrote()
		}
		if err != nil {
			return n, s.mapErr(err)
		}
	}
	return n, nil
}

// maxStreamFrame bounds the data one stream frame carries: at 100 MiB/s,
// 64 KiB is 0.6 ms of a link, so calls and other streams interleave.
const maxStreamFrame = 64 << 10

// CloseWrite closes the writing side: the peer reads io.EOF after what was
// written. Reading goes on.
func (s *Stream) CloseWrite() error { return s.fin() }

// Close ends the stream. On the opening side, closing a stream whose peer
// has not finished also cancels the handler's context.
func (s *Stream) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	tell := s.client && !s.sawEOF && !s.stopped
	s.mu.Unlock()
	s.stop()
	if tell {
		s.c.stats.cancelsSent.Add(1)
		s.c.enqueue(outFrame{kind: kindCancel, id: s.id}, true)
	}
	s.c.wire.win.forget(s.ys.StreamID())
	s.answered()
	if s.c.closed.Load() {
		return nil // closing a stream of a dead connection is no error (see fin)
	}
	return s.fin()
}

// SetDeadline sets the read and write deadlines, as net.Conn's.
func (s *Stream) SetDeadline(t time.Time) error { return s.ys.SetDeadline(t) }

// SetReadDeadline sets the read deadline, as net.Conn's.
func (s *Stream) SetReadDeadline(t time.Time) error { return s.ys.SetReadDeadline(t) }

// SetWriteDeadline sets the write deadline, as net.Conn's.
func (s *Stream) SetWriteDeadline(t time.Time) error { return s.ys.SetWriteDeadline(t) }

// Conn returns the connection the stream belongs to.
func (s *Stream) Conn() *Conn { return s.c }

// mapErr explains a stream error in the package's terms: a dead connection
// is a *DeadError, an ended context is the context's error, and a deadline
// is os.ErrDeadlineExceeded (a net.Error whose Timeout is true).
func (s *Stream) mapErr(err error) error {
	if err == nil || err == io.EOF {
		return err
	}
	if s.c.dying() {
		return s.c.deadErr()
	}
	if cerr := ctxErr(s.ctx); cerr != nil {
		return cerr
	}
	if errors.Is(err, yamux.ErrTimeout) {
		return os.ErrDeadlineExceeded
	}
	if errors.Is(err, yamux.ErrStreamClosed) {
		return fmt.Errorf("rpc: stream closed: %w", err)
	}
	return err
}

// ctxErr is ctx.Err(), and DeadlineExceeded from the deadline's instant on,
// before the context's own timer has fired.
func ctxErr(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if dl, ok := ctx.Deadline(); ok && !time.Now().Before(dl) {
		return context.DeadlineExceeded
	}
	return nil
}

// dying reports whether the connection is dead or its session has just
// ended (the reader may not have noticed yet): in that case it aborts the
// connection itself, so that stream errors say ErrDeadReference at once
// rather than a raw "connection reset".
func (c *Conn) dying() bool {
	if c.closed.Load() {
		return true
	}
	if !c.sess.IsClosed() {
		return false
	}
	c.Abort(c.transportCause(io.EOF))
	return true
}
