package partition

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"time"
)

// proxyConn is one proxied connection: the client's socket and, once
// dialed, the target's.
type proxyConn struct {
	client *net.TCPConn
	ctx    context.Context // ends the target dial when the connection ends
	cancel context.CancelFunc
	done   chan struct{} // closed when the connection ends

	links [2]*linkQueue // what the link holds, up and down

	mu     sync.Mutex
	server *net.TCPConn
	ended  bool
}

// setServer records the target's socket; false if the connection ended
// meanwhile (then the socket is closed).
func (pc *proxyConn) setServer(c *net.TCPConn) bool {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	if pc.ended {
		c.Close()
		return false
	}
	pc.server = c
	return true
}

// end marks the connection finished once and returns its sockets, or
// nothing if it had already ended.
func (pc *proxyConn) end() []*net.TCPConn {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	if pc.ended {
		return nil
	}
	pc.ended = true
	close(pc.done)
	pc.cancel()
	socks := []*net.TCPConn{pc.client}
	if pc.server != nil {
		socks = append(socks, pc.server)
	}
	return socks
}

// close closes both sockets normally.
func (pc *proxyConn) close() {
	for _, c := range pc.end() {
		c.Close()
	}
}

// abort closes both sockets with a RST.
func (pc *proxyConn) abort() {
	for _, c := range pc.end() {
		c.SetLinger(0) // fails only on a closed socket, which Close then reports
		c.Close()
	}
}

// forward copies src to dst until src ends, through the link of
// direction dir. A reader goroutine stamps each read with its due time (see
// Link) and queues it; this goroutine writes each segment when due and
// while not blackholed. A clean end of src becomes a half-close of dst;
// any error aborts the whole connection.
func (p *Proxy) forward(pc *proxyConn, dir int, src, dst *net.TCPConn) {
	q := pc.links[dir]
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			if !p.waitOpen(pc) {
				return
			}
			l := p.link(dir)
			free, ok := q.waitRoom(l.queue(), pc.done)
			if !ok {
				return
			}
			buf := bufs.Get().(*[]byte)
			n, err := src.Read((*buf)[:min(free, l.readSize())])
			q.push(buf, n, err, p.link(dir), time.Now()) // the link now, not when the read began
			if err != nil {
				return
			}
		}
	}()
	for {
		s, ok := q.next(pc.done)
		if !ok || !sleepUntil(s.due, pc.done) || !p.waitOpen(pc) {
			return
		}
		if len(s.data) > 0 {
			if _, err := dst.Write(s.data); err != nil {
				pc.abort()
				return
			}
			q.release(len(s.data))
		}
		if s.buf != nil {
			bufs.Put(s.buf)
		}
		if s.err != nil {
			if errors.Is(s.err, io.EOF) {
				dst.CloseWrite() // a failure here shows up on the next read or write
			} else {
				pc.abort()
			}
			return
		}
	}
}

// sleepUntil waits until t; false if done closed first.
func sleepUntil(t time.Time, done <-chan struct{}) bool {
	d := time.Until(t)
	if d <= 0 {
		select {
		case <-done:
			return false
		default:
			return true
		}
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
		return true
	case <-done:
		return false
	}
}
