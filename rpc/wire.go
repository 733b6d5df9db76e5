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
	in      frameScanner

	// syns counts the streams the peer opened (yamux SYNs seen inbound, the
	// control stream aside); onSYN, once set, is told of each batch of them.
	syns  atomic.Uint64
	onSYN atomic.Pointer[func()]
	// ctrlIn counts the bytes that arrived for the control stream; ended
	// says the control stream or the session ended (a FIN or RST, a
	// GoAway, a transport error or close). onCtrl, once set, is told of
	// either (see Conn.startReader).
	ctrlIn atomic.Uint64
	ended  atomic.Bool
	onCtrl atomic.Pointer[func()]
	// onPong, once set, is told of each answer to one of our probes (a
	// yamux ping's ACK, carrying the probe's nonce), on yamux's reader.
	onPong atomic.Pointer[func(nonce uint32)]

	errMu sync.Mutex
	err   error // first transport error

	// win tunes the streams' receive windows: it rewrites yamux's window
	// updates on their way out and sends credit of its own (see windows).
	// Nil until the session starts.
	win *windows
	wmu sync.Mutex // one frame on the transport at a time: yamux's, or win's

	// Coalescing state, touched only by yamux's single send goroutine.
	held bool
	hdr  [yamuxHeaderSize]byte
	uhdr [yamuxHeaderSize]byte // a window update, rewritten
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
		sc := w.in.scan(p[:n], w.pong)
		if sc.pings > 0 {
			w.lastRecv.Store(nanotime()) // whole frames: evidence of life
		}
		if sc.syns > 0 {
			w.syns.Add(uint64(sc.syns))
			w.tell(&w.onSYN)
		}
		if sc.ctrlBytes > 0 || sc.ctrlEnd {
			w.ctrlIn.Add(sc.ctrlBytes)
			if sc.ctrlEnd {
				w.ended.Store(true)
			}
			w.tell(&w.onCtrl)
		}
	}
	if err != nil {
		w.noteErr(err)
		w.end()
	}
	return n, err
}

// Close closes the transport; the control stream's reader is told.
func (w *wireConn) Close() error {
	err := w.Conn.Close()
	w.end()
	return err
}

func (w *wireConn) end() {
	w.ended.Store(true)
	w.tell(&w.onCtrl)
}

func (w *wireConn) tell(f *atomic.Pointer[func()]) {
	if fn := f.Load(); fn != nil {
		(*fn)()
	}
}

func (w *wireConn) pong(nonce uint32) {
	// The answer is evidence of life: record it before the prober learns
	// of it, so whoever a probe wakes sees LastReceived already moved.
	w.lastRecv.Store(nanotime())
	if fn := w.onPong.Load(); fn != nil {
		(*fn)(nonce)
	}
}

// ping writes a liveness probe: a yamux ping whose opaque value is nonce.
// The peer's yamux answers it with an ACK carrying the same value, which
// Read hands to onPong. (tether never uses yamux's own Ping, so the values
// are all ours; yamux ignores an ACK it did not ask for.)
func (w *wireConn) ping(nonce uint32) error {
	var hdr [yamuxHeaderSize]byte
	hdr[1] = yamuxTypePing
	binary.BigEndian.PutUint16(hdr[2:4], yamuxFlagSYN)
	binary.BigEndian.PutUint32(hdr[8:12], nonce)
	return w.sendFrame(hdr[:])
}

// Write takes yamux's frames, from its one send goroutine. That goroutine
// sleeps with the stack it grew, for as long as the connection lives: the
// paths below keep their frames few and small, so that it never needs more
// than the 2 KiB it starts with (see BENCHMARKS.md, memory per idle peer).
func (w *wireConn) Write(p []byte) (int, error) {
	if !w.held && len(p) == yamuxHeaderSize && p[0] == 0 && p[1] == yamuxTypeWindow && w.win != nil {
		// One of yamux's window updates: passed on as the stream's tuned
		// window allows (see windows.outbound), or dropped.
		delta, send := w.win.outbound(binary.BigEndian.Uint32(p[4:8]), binary.BigEndian.Uint16(p[2:4]), binary.BigEndian.Uint32(p[8:12]))
		if !send {
			return len(p), nil
		}
		copy(w.uhdr[:], p)
		binary.BigEndian.PutUint32(w.uhdr[8:12], delta)
		w.lastSend.Store(nanotime())
		return w.write(w.uhdr[:])
	}
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
		return w.writeSplit(w.hdr[:], p)
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

// sendFrame writes a frame of the transport's own (a window update, a
// probe) between yamux's frames. A data frame's header held back for
// coalescing has not been written yet, so the transport is at a frame
// boundary whenever the write lock is free.
func (w *wireConn) sendFrame(hdr []byte) error {
	w.lastSend.Store(nanotime())
	_, err := w.write(hdr)
	return err
}

// write writes p, a whole frame or a frame's body: yamux's, or one of the
// transport's own. No defer: the send goroutine's stack stays small.
func (w *wireConn) write(p []byte) (int, error) {
	w.wmu.Lock()
	n, err := w.Conn.Write(p)
	w.wmu.Unlock()
	if err != nil {
		w.noteErr(err)
	}
	return n, err
}

// writeSplit writes a header and its body as one frame: nothing else is
// written between them. It returns what it wrote of the body.
func (w *wireConn) writeSplit(hdr, body []byte) (int, error) {
	w.wmu.Lock()
	_, err := w.Conn.Write(hdr)
	n := 0
	if err == nil {
		n, err = w.Conn.Write(body)
	}
	w.wmu.Unlock()
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

// frameScanner follows yamux's frame boundaries in the bytes read from the
// transport, to take the answers to our probes, and to see the peer open a
// stream (a SYN) before yamux queues it for Accept. That lets a connection
// run no goroutine in Accept while no stream is opened, which is nearly
// always: an idle connection costs the goroutines yamux needs, no more. Garbage makes it count
// nonsense only until yamux, reading the same bytes, kills the session.
type frameScanner struct {
	hdr  [yamuxHeaderSize]byte
	n    int    // header bytes held
	skip uint32 // data frame body bytes still to pass over
}

// yamux's frame types and flags (its spec.md).
const (
	yamuxTypeData   = 0
	yamuxTypeWindow = 1
	yamuxTypePing   = 2
	yamuxTypeGoAway = 3
	yamuxFlagSYN    = 1
	yamuxFlagACK    = 2
	yamuxFlagFIN    = 4
	yamuxFlagRST    = 8
	yamuxCtrlStream = 1 // the client's first stream: ours, accepted at the handshake
)

// scanned is what one read brought.
type scanned struct {
	syns      int    // streams opened
	pings     int    // pings and their answers
	ctrlBytes uint64 // bytes for the control stream
	ctrlEnd   bool   // the control stream or the session ends
}

// scan passes over p and says what it brings; each answer to a ping, it
// hands to pong.
func (f *frameScanner) scan(p []byte, pong func(nonce uint32)) (s scanned) {
	for len(p) > 0 {
		if f.skip > 0 {
			k := uint32(min(len(p), int(min(f.skip, 1<<30))))
			f.skip -= k
			p = p[k:]
			continue
		}
		k := copy(f.hdr[f.n:], p)
		f.n += k
		p = p[k:]
		if f.n < yamuxHeaderSize {
			return s
		}
		f.n = 0
		typ, flags := f.hdr[1], binary.BigEndian.Uint16(f.hdr[2:4])
		id, length := binary.BigEndian.Uint32(f.hdr[4:8]), binary.BigEndian.Uint32(f.hdr[8:12])
		if typ == yamuxTypeData {
			f.skip = length
		}
		switch {
		case typ == yamuxTypeGoAway:
			s.ctrlEnd = true
		case typ == yamuxTypePing:
			s.pings++
			if flags&yamuxFlagACK != 0 {
				pong(length) // a ping's opaque value travels in the length field
			}
		case typ != yamuxTypeData && typ != yamuxTypeWindow:
		case id == yamuxCtrlStream:
			if typ == yamuxTypeData {
				s.ctrlBytes += uint64(length)
			}
			s.ctrlEnd = s.ctrlEnd || flags&(yamuxFlagFIN|yamuxFlagRST) != 0
		case flags&yamuxFlagSYN != 0:
			s.syns++
		}
	}
	return s
}
