package partition

import (
	"io"
	"net"
	"os"
	"slices"
	"sync"
	"syscall"
	"time"
)

// conn is one end of a connection on a Network.
type conn struct {
	pr            *pair
	side          int
	local, remote Addr

	wmu sync.Mutex // serialises Writes so one call's bytes stay contiguous

	// guarded by pr.mu
	closed bool
	rdl    deadline
	wdl    deadline
}

// deadline is a read or write deadline: a time, and a timer that wakes the
// pair's waiters when it passes.
type deadline struct {
	at     time.Time
	timer  *time.Timer
	passed bool // the timer fired for the current deadline
}

func (d *deadline) expired() bool {
	return d.passed || (!d.at.IsZero() && !time.Now().Before(d.at))
}

func (d *deadline) stop() {
	if d.timer != nil {
		d.timer.Stop()
		d.timer = nil
	}
}

// Read reads what has arrived. It waits while nothing has: across a cut it
// waits with no error until the link heals, the read deadline passes
// (os.ErrDeadlineExceeded, a timeout net.Error) or the conn is closed
// (net.ErrClosed). After the peer's close has arrived and every byte before
// it is read, it returns io.EOF.
func (c *conn) Read(b []byte) (int, error) {
	pr := c.pr
	pr.mu.Lock()
	defer pr.mu.Unlock()
	p := pr.pipes[1-c.side]
	for {
		switch {
		case c.closed:
			return 0, c.opError("read", net.ErrClosed)
		case c.rdl.expired():
			return 0, c.opError("read", os.ErrDeadlineExceeded)
		case len(b) == 0:
			return 0, nil
		case p.recv.Len() > 0:
			n, _ := p.recv.Read(b)
			pr.broadcast() // room for the writer
			return n, nil
		case p.eof:
			return 0, io.EOF
		}
		pr.wait()
	}
}

// Write sends b, all of it unless it returns an error. It returns as soon
// as b fits in the direction's buffer, which is before the peer reads it,
// cut or not; when the buffer is full it waits for room, the write deadline
// (os.ErrDeadlineExceeded) or Close (net.ErrClosed). Once the peer's close
// has arrived, writes fail with an error matching syscall.EPIPE.
func (c *conn) Write(b []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	pr := c.pr
	pr.mu.Lock()
	defer pr.mu.Unlock()
	p := pr.pipes[c.side]
	n := 0
	for {
		switch {
		case c.closed:
			return n, c.opError("write", net.ErrClosed)
		case p.broken:
			return n, c.opError("write", syscall.EPIPE)
		case c.wdl.expired():
			return n, c.opError("write", os.ErrDeadlineExceeded)
		case len(b) == 0:
			return n, nil
		}
		if free := p.space(); free > 0 {
			k := min(free, len(b))
			p.send(chunk{data: slices.Clone(b[:k])}, time.Now())
			n += k
			b = b[k:]
			continue
		}
		pr.wait()
	}
}

// Close closes this end. Local calls blocked in Read or Write return
// net.ErrClosed, and unread bytes are discarded. The peer learns of it only
// when this end's FIN arrives: after every byte written before Close, and
// not while the link is cut. Then its reads return io.EOF and its writes
// fail.
func (c *conn) Close() error {
	pr := c.pr
	pr.mu.Lock()
	if c.closed {
		pr.mu.Unlock()
		return c.opError("close", net.ErrClosed)
	}
	c.closed = true
	c.rdl.stop()
	c.wdl.stop()
	in := pr.pipes[1-c.side]
	in.readerGone = true
	in.recv.Reset()
	pr.pipes[c.side].send(chunk{fin: true}, time.Now())
	pr.broadcast()
	done := pr.ends[0].closed && pr.ends[1].closed
	if done {
		pr.done = true
		pr.pipes[0].release()
		pr.pipes[1].release()
	}
	pr.mu.Unlock()
	if done {
		pr.net.forget(pr)
	}
	return nil
}

// LocalAddr returns this end's Addr.
func (c *conn) LocalAddr() net.Addr { return c.local }

// RemoteAddr returns the peer's Addr.
func (c *conn) RemoteAddr() net.Addr { return c.remote }

// SetDeadline sets both the read and the write deadline.
func (c *conn) SetDeadline(t time.Time) error {
	if err := c.SetReadDeadline(t); err != nil {
		return err
	}
	return c.SetWriteDeadline(t)
}

// SetReadDeadline sets the read deadline; a Read blocked now is woken to
// honour it. The zero time means none.
func (c *conn) SetReadDeadline(t time.Time) error { return c.setDeadline(&c.rdl, t) }

// SetWriteDeadline sets the write deadline; a Write blocked now is woken to
// honour it. The zero time means none.
func (c *conn) SetWriteDeadline(t time.Time) error { return c.setDeadline(&c.wdl, t) }

func (c *conn) setDeadline(d *deadline, t time.Time) error {
	pr := c.pr
	pr.mu.Lock()
	defer pr.mu.Unlock()
	if c.closed {
		return c.opError("set", net.ErrClosed)
	}
	d.stop()
	d.at, d.passed = t, false
	if !t.IsZero() {
		if wait := time.Until(t); wait > 0 {
			var timer *time.Timer
			timer = time.AfterFunc(wait, func() {
				pr.mu.Lock()
				defer pr.mu.Unlock()
				if d.timer == timer { // not replaced since
					d.passed = true
					pr.broadcast()
				}
			})
			d.timer = timer
		}
	}
	pr.broadcast()
	return nil
}

func (c *conn) opError(op string, err error) error {
	return &net.OpError{Op: op, Net: "mem", Source: c.local, Addr: c.remote, Err: err}
}
