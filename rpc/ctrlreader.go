package rpc

import (
	"io"
	"sync"
)

// ctrlReader reads the control stream in batches, like a bufio.Reader, but
// holds its buffer only while frames are arriving: between frames, with
// nothing buffered, it waits for the next header straight from the stream,
// holding no buffer. An idle connection (nearly every connection of a node
// with thousands of peers) so keeps no 4 KiB read buffer; a busy one reads
// many frames per read of the stream, as before.
type ctrlReader struct {
	src      io.Reader
	buf      *[]byte // from ctrlBufs while bytes are buffered, else nil
	r, w     int
	boundary bool // the next Read starts a frame: wait without a buffer
}

const ctrlBufSize = 4 << 10

var ctrlBufs = sync.Pool{New: func() any { b := make([]byte, ctrlBufSize); return &b }}

// readFrame reads the next frame (see readFrame).
func (cr *ctrlReader) readFrame(hbuf []byte, maxPayload int) (header, []byte, error) {
	cr.boundary = true
	return readFrame(cr, hbuf, maxPayload)
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
		return cr.src.Read(p)
	}
	cr.buf = ctrlBufs.Get().(*[]byte)
	n, err := cr.src.Read(*cr.buf)
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
