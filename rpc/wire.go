package rpc

import (
	"encoding/binary"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// epoch is the origin of the package's monotonic nanosecond clock.
var epoch = time.Now()

// nanotime is monotonic nanoseconds since epoch: cheap to store atomically.
func nanotime() int64 { return int64(time.Since(epoch)) }

// monoTime turns a nanotime back into a time.Time.
func monoTime(ns int64) time.Time { return epoch.Add(time.Duration(ns)) }

// wireConn sits between yamux and the transport. It records evidence of
// life (see progressBytes) and the first transport error
// (yamux hides it behind "session shutdown"), and it coalesces yamux's
// frame writes: yamux writes a data frame's 12-byte header and its body in
// two calls, which on a TCP socket with Nagle off is two segments and two
// wake-ups of the peer. Holding the header back and writing it together with
// the body halves the syscalls of a small call (see BENCHMARKS.md).
type wireConn struct {
	net.Conn
	lastRecv atomic.Int64 // nanotime of the last evidence of life (see account)
	lastSend atomic.Int64 // nanotime of the last Write
	recvd    atomic.Uint64

	partial int // inbound bytes since the last evidence; yamux's reader only

	errMu sync.Mutex
	err   error // first transport error

	// Coalescing state, touched only by yamux's single send goroutine.
	held bool
	hdr  [yamuxHeaderSize]byte
	wbuf []byte
}

const (
	yamuxHeaderSize = 12
	coalesceMax     = 64 << 10
)

func newWireConn(c net.Conn) *wireConn {
	w := &wireConn{Conn: c}
	now := nanotime()
	w.lastRecv.Store(now)
	w.lastSend.Store(now)
	return w
}

func (w *wireConn) Read(p []byte) (int, error) {
	n, err := w.Conn.Read(p)
	if n > 0 {
		if w.partial += n; w.partial >= progressBytes {
			w.partial = 0
			w.lastRecv.Store(nanotime())
		}
		w.recvd.Add(uint64(n))
	}
	if err != nil {
		w.noteErr(err)
	}
	return n, err
}

func (w *wireConn) Write(p []byte) (int, error) {
	// A yamux data frame header (version 0, type 0) announcing a body: hold it.
	if !w.held && len(p) == yamuxHeaderSize && p[0] == 0 && p[1] == 0 && binary.BigEndian.Uint32(p[8:12]) > 0 {
		copy(w.hdr[:], p)
		w.held = true
		return len(p), nil
	}
	w.lastSend.Store(nanotime())
	if !w.held {
		return w.write(p)
	}
	w.held = false
	if len(p) > coalesceMax {
		if _, err := w.write(w.hdr[:]); err != nil {
			return 0, err
		}
		return w.write(p)
	}
	w.wbuf = append(append(w.wbuf[:0], w.hdr[:]...), p...)
	n, err := w.write(w.wbuf)
	n -= yamuxHeaderSize
	if n < 0 {
		n = 0
	}
	return n, err
}

// progressBytes is how many inbound bytes count as evidence of life on
// their own, without a whole frame: a bulk stream crawling over a slow link
// shows progress, a peer that drips a byte a second to look alive
// (slowloris) does not. Whole control frames are evidence too; the reader
// notes them (Conn.readLoop).
const progressBytes = 4 << 10

func (w *wireConn) write(p []byte) (int, error) {
	n, err := w.Conn.Write(p)
	if err != nil {
		w.noteErr(err)
	}
	return n, err
}

func (w *wireConn) noteErr(err error) {
	w.errMu.Lock()
	if w.err == nil {
		w.err = err
	}
	w.errMu.Unlock()
}

// transportErr returns the first error the transport reported, if any.
func (w *wireConn) transportErr() error {
	w.errMu.Lock()
	defer w.errMu.Unlock()
	return w.err
}
