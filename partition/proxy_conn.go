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

// segment is data read from one side, due to be written to the other.
type segment struct {
	data []byte
	due  time.Time
	err  error // the read's error, after the data; io.EOF for a clean end
}

// forward copies src to dst until src ends. A reader goroutine stamps each
// read with its due time so that a delay adds latency, not a pause per
// read; this goroutine writes each segment when due and while not
// blackholed. A clean end of src becomes a half-close of dst; any error
// aborts the whole connection.
func (p *Proxy) forward(pc *proxyConn, src, dst *net.TCPConn) {
	segs := make(chan segment, 16)
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		defer close(segs)
		for {
			if !p.waitOpen(pc) {
				return
			}
			buf := make([]byte, 32<<10)
			n, err := src.Read(buf)
			s := segment{data: buf[:n], due: time.Now().Add(p.currentDelay()), err: err}
			select {
			case segs <- s:
			case <-pc.done:
				return
			}
			if err != nil {
				return
			}
		}
	}()
	for s := range segs {
		if !sleepUntil(s.due, pc.done) || !p.waitOpen(pc) {
			break
		}
		if len(s.data) > 0 {
			if _, err := dst.Write(s.data); err != nil {
				pc.abort()
				break
			}
		}
		if s.err != nil {
			if errors.Is(s.err, io.EOF) {
				dst.CloseWrite() // a failure here shows up on the next read or write
			} else {
				pc.abort()
			}
			break
		}
	}
	for range segs { // let the reader finish; it ends when pc is done or src ends
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
