package rpc

import (
	"errors"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/yamux"
)

// The reader of the control stream runs only while frames come. A node
// with thousands of peers has nearly all of them idle: each would keep a
// goroutine blocked in Read (with the stack it grew) for nothing. So a
// reader idle for parkAfter parks: it leaves, holding nothing, and the
// transport's reader (wireConn), which sees every yamux frame go by,
// starts a new one when bytes for the control stream arrive or the
// session ends. An idle connection costs the goroutines yamux needs, and
// no more.
type reader struct {
	mu      sync.Mutex
	running bool
	closed  bool        // the connection is dead: start no reader
	timer   *time.Timer // parks the reader once the control stream is idle

	consumed  atomic.Uint64 // control-stream bytes read, against wireConn.ctrlIn
	lastFrame atomic.Int64  // nanotime of the last frame read, or of the start
	cr        ctrlReader    // kept across parkings (it holds nothing then)
}

// parkAfter is how long the control stream must be quiet before its reader
// parks. Shorter than the kernel-keepalive interval of idle peers, longer
// than the gaps between a busy peer's calls.
const parkAfter = time.Second

// errIdle: the reader's wait for the next frame was interrupted to park it.
var errIdle = errors.New("rpc: control stream idle")

// startReader starts the reader if it is parked and the control stream has
// something for it: bytes not yet read, or its end. It is called by yamux's
// reader (through wireConn), so it never blocks.
func (c *Conn) startReader() {
	rd := &c.rd
	rd.mu.Lock()
	defer rd.mu.Unlock()
	if rd.running || rd.closed || (c.wire.ctrlIn.Load() == rd.consumed.Load() && !c.wire.ended.Load()) {
		return
	}
	c.runReader()
}

// runReader starts a reader goroutine. Under rd.mu.
func (c *Conn) runReader() {
	c.rd.running = true
	c.rd.lastFrame.Store(nanotime())
	c.wg.Add(1)
	go c.readLoop()
}

// stopReader is called at death, before the connection waits for its
// goroutines: no reader starts after it.
func (c *Conn) stopReader() {
	c.rd.mu.Lock()
	c.rd.closed = true
	if c.rd.timer != nil {
		c.rd.timer.Stop()
	}
	c.rd.mu.Unlock()
}

// parkIfIdle runs on the park timer: it interrupts the reader's wait if the
// control stream has been quiet for parkAfter, and otherwise looks again
// when it could be. (Probes do not count: they do not use the stream.)
func (c *Conn) parkIfIdle() {
	idle := time.Duration(nanotime() - c.rd.lastFrame.Load())
	rd := &c.rd
	rd.mu.Lock()
	defer rd.mu.Unlock()
	if !rd.running || rd.closed {
		return
	}
	if idle < parkAfter {
		rd.timer.Reset(parkAfter - idle)
		return
	}
	c.ctrl.SetReadDeadline(time.Unix(1, 0))
	rd.timer.Reset(parkAfter) // in case the reader does not park (see park)
}

// park decides, when the reader's wait was interrupted at a frame boundary,
// whether it leaves: only if every byte that arrived for the control stream
// was read and the stream has not ended. Otherwise it reads on.
func (c *Conn) park() bool {
	c.ctrl.SetReadDeadline(time.Time{})
	rd := &c.rd
	rd.mu.Lock()
	defer rd.mu.Unlock()
	if rd.closed {
		return true // dying: the abort finishes the rest
	}
	if c.wire.ctrlIn.Load() != rd.consumed.Load() || c.wire.ended.Load() {
		return false
	}
	rd.running = false
	rd.cr.release()
	if rd.timer != nil {
		// An idle connection keeps no timer: the next reader makes one.
		rd.timer.Stop()
		rd.timer = nil
	}
	return true
}

func (c *Conn) readLoop() {
	defer c.wg.Done()
	select {
	case <-c.resumed:
	case <-c.done:
		return
	}
	c.rd.mu.Lock()
	if c.rd.timer == nil {
		c.rd.timer = time.AfterFunc(parkAfter, c.parkIfIdle)
	} else {
		c.rd.timer.Reset(parkAfter)
	}
	c.rd.mu.Unlock()
	var hbuf [headerSize]byte
	for {
		c.waitForRoom()
		h, p, err := c.rd.cr.readFrame(hbuf[:], c.cfg.MaxMessageSize, c.cfg.HandshakeTimeout)
		if err == errIdle {
			if c.park() {
				return
			}
			continue
		}
		if err == nil {
			now := nanotime()
			c.wire.lastRecv.Store(now) // a whole frame: evidence of life
			c.rd.lastFrame.Store(now)
			err = c.handleFrame(h, p)
		} else if !errors.Is(err, ErrProtocolViolation) {
			err = c.transportCause(err)
		}
		if err != nil {
			c.Abort(err)
			return
		}
	}
}

// ctrlReader reads the control stream in batches, like a bufio.Reader, but
// holds its buffer only while frames are arriving: between frames, with
// nothing buffered, it waits for the next header straight from the stream,
// holding no buffer. An idle connection so keeps no 4 KiB read buffer; a
// busy one reads many frames per read of the stream, as before.
type ctrlReader struct {
	src      *yamux.Stream
	consumed *atomic.Uint64 // bytes read from src
	win      *windows       // told of every read, to send the stream's credit
	buf      *[]byte        // from ctrlBufs while bytes are buffered, else nil
	r, w     int
	boundary bool // the next Read starts a frame: wait without a buffer
}

const ctrlBufSize = 4 << 10

var ctrlBufs = sync.Pool{New: func() any { b := make([]byte, ctrlBufSize); return &b }}

// minFrameRate is the slowest a frame of the control stream may arrive,
// in bytes a second, after a grace of the handshake timeout: a peer that
// announces a frame and trickles it holds the frame's buffer (up to
// MaxMessageSize) and the reader, so it must deliver. A live peer on the
// slowest path delivers far faster: at this rate a 4 MiB frame may take
// 17 minutes. (Probes do not catch a trickler: its yamux answers them.)
const minFrameRate = 4 << 10

// readFrame reads the next frame (see readFrame). It returns errIdle if
// the wait for a frame was interrupted (the park timer set a deadline)
// before any of it came; an interruption within a frame is ignored. A
// frame that is not whole within grace plus its length at minFrameRate,
// from its first byte, is a protocol violation.
func (cr *ctrlReader) readFrame(hbuf []byte, maxPayload int, grace time.Duration) (header, []byte, error) {
	var began, due time.Time // set once the frame has begun and a read may wait
	defer func() {
		if !due.IsZero() {
			cr.src.SetReadDeadline(time.Time{})
		}
	}()
	// wait sets the frame's deadline, for a frame of length bytes so far
	// as its header tells, before a read that may block: one that asks
	// for more than is buffered.
	wait := func(length uint32, want int) {
		if cr.w-cr.r >= want {
			return
		}
		if began.IsZero() {
			began = time.Now()
		}
		if d := began.Add(grace + time.Duration(length)*time.Second/minFrameRate); !d.Equal(due) {
			due = d
			cr.src.SetReadDeadline(due)
		}
	}
	// stalled says whether a read's timeout is the frame's, rather than
	// the park timer's (which is ignored within a frame).
	stalled := func() bool {
		if due.IsZero() || time.Now().Before(due) {
			cr.src.SetReadDeadline(due)
			return false
		}
		return true
	}
	n := 0
	for n < headerSize {
		cr.boundary = n == 0
		if n > 0 {
			wait(0, headerSize-n)
		}
		k, err := cr.Read(hbuf[n:headerSize])
		n += k
		switch {
		case err == nil:
		case errors.Is(err, yamux.ErrTimeout) && n == 0:
			return header{}, nil, errIdle
		case errors.Is(err, yamux.ErrTimeout):
			if stalled() {
				return header{}, nil, violation("a frame header incomplete after %v: the peer trickles it", time.Since(began).Round(time.Millisecond))
			}
		case n > 0 && err == io.EOF:
			return header{}, nil, io.ErrUnexpectedEOF
		default:
			return header{}, nil, err
		}
	}
	h, err := parseHeader(hbuf, maxPayload)
	if err != nil || h.length == 0 {
		return h, nil, err
	}
	p := make([]byte, h.length)
	for n = 0; n < len(p); {
		wait(h.length, len(p)-n)
		k, err := cr.Read(p[n:])
		n += k
		switch {
		case err == nil:
		case errors.Is(err, yamux.ErrTimeout):
			if stalled() {
				return h, nil, violation("%v frame of %d bytes has %d after %v: the peer trickles it",
					h.kind, h.length, n, time.Since(began).Round(time.Millisecond))
			}
		case err == io.EOF:
			return h, nil, io.ErrUnexpectedEOF
		default:
			return h, nil, err
		}
	}
	return h, p, nil
}

func (cr *ctrlReader) Read(p []byte) (int, error) {
	if cr.r < cr.w {
		n := copy(p, (*cr.buf)[cr.r:cr.w])
		if cr.r += n; cr.r == cr.w {
			cr.release()
		}
		cr.boundary = false
		return n, nil
	}
	if cr.boundary || len(p) >= ctrlBufSize {
		cr.boundary = false
		n, err := cr.src.Read(p)
		cr.consumed.Add(uint64(n))
		cr.win.read(cr.src.StreamID(), n)
		return n, err
	}
	cr.buf = ctrlBufs.Get().(*[]byte)
	n, err := cr.src.Read(*cr.buf)
	cr.consumed.Add(uint64(n))
	cr.win.read(cr.src.StreamID(), n)
	if n == 0 {
		cr.release()
		return 0, err
	}
	// (An error with bytes comes back on the next read of the stream.)
	cr.r, cr.w = 0, n
	return cr.Read(p)
}

func (cr *ctrlReader) release() {
	if cr.buf != nil {
		ctrlBufs.Put(cr.buf)
		cr.buf = nil
	}
	cr.r, cr.w = 0, 0
}
