package logport

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/tetherrpc/tether/rpc"
)

// serveSubscribe serves one subscription: the handshake, then a reader
// goroutine taking credit grants and this goroutine sending entries within
// the credit. It returns when the subscriber leaves or misbehaves, its
// connection dies, or the port closes.
func (p *Port) serveSubscribe(ctx context.Context, st *rpc.Stream) error {
	if !p.enter() {
		p.mu.Lock()
		p.refused++
		p.mu.Unlock()
		return p.farewell(st, &Error{Code: CodeClosed, Message: "the port is closed"})
	}
	defer p.wg.Done()

	st.SetReadDeadline(time.Now().Add(handshakeTimeout))
	var buf [maxClientFrame]byte
	t, payload, err := readFrame(st, buf[:], maxClientFrame)
	var req subscribeReq
	if err == nil {
		req, err = parseSubscribe(t, payload)
	}
	if err != nil {
		return p.handshakeFailed(st, peerOf(ctx), err, "subscribe")
	}
	st.SetReadDeadline(time.Time{})

	s, h, err := p.addSub(peerOf(ctx), st, req)
	if err != nil {
		return p.farewell(st, err)
	}
	defer func() {
		final := p.removeSub(s)
		if p.cfg.onEnd != nil {
			p.cfg.onEnd(final, err)
		}
	}()
	if _, err = st.Write(appendHello(nil, h)); err != nil {
		return err
	}

	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		p.readGrants(st, s)
	}()
	defer wg.Wait()
	defer st.SetReadDeadline(time.Unix(1, 0)) // ends the reader

	err = p.sendLoop(ctx, st, s)
	switch {
	case errors.Is(err, ErrProtocol):
		p.misbehaved(st, s.peer, err)
	case errors.Is(err, ErrClosed):
		p.farewell(st, &Error{Code: CodeClosed, Message: "the port is closed"})
	}
	return err
}

// readGrants reads the subscriber's frames: credit grants only. A frame that
// is anything else ends the subscription with a protocol error; the end of
// the subscriber's side ends it quietly.
func (p *Port) readGrants(st *rpc.Stream, s *sub) {
	var buf [maxClientFrame]byte
	for {
		t, payload, err := readFrame(st, buf[:], maxClientFrame)
		if err == nil {
			err = p.grant(s, t, payload)
		}
		if err == nil {
			continue
		}
		p.mu.Lock()
		switch {
		case errors.Is(err, ErrProtocol):
			s.err = err
		case err == io.EOF:
			s.eof = true
		case errors.Is(err, io.ErrUnexpectedEOF):
			s.err = protocolf("the subscriber's side ended in the middle of a frame")
		default: // the stream or its connection failed, or the handler is leaving
			s.gone = err
		}
		p.mu.Unlock()
		s.poke()
		return
	}
}

// grant applies a GRANT frame.
func (p *Port) grant(s *sub, t byte, payload []byte) error {
	if t != frameGrant {
		return protocolf("unexpected %s frame: only grants may come", frameName(t))
	}
	if len(payload) != grantLen {
		return protocolf("a grant frame of %d bytes, not %d", len(payload), grantLen)
	}
	n := binary.BigEndian.Uint64(payload)
	p.mu.Lock()
	defer p.mu.Unlock()
	if n == 0 {
		return protocolf("a grant of 0 entries")
	}
	if n > p.cfg.maxCredit || s.credit > p.cfg.maxCredit-n {
		return protocolf("a grant of %d entries on top of %d exceeds the limit of %d in hand", n, s.credit, p.cfg.maxCredit)
	}
	s.credit += n
	if s.waiting {
		s.waiting = false
		s.poke()
	}
	return nil
}

// work is what the sender takes out under the lock.
type work struct {
	loss  Loss
	c     *chunk // pinned while b, n entries from it, is written
	b     []byte
	n     int
	err   error
	quiet bool // the subscriber left: end without a word
}

// sendLoop sends loss notices and entries within the credit until the
// subscription ends.
func (p *Port) sendLoop(ctx context.Context, st *rpc.Stream, s *sub) error {
	var lossBuf []byte
	for {
		w, err := p.take(ctx, s)
		if err != nil {
			return err
		}
		if w.quiet {
			return nil
		}
		if w.loss.First != 0 {
			lossBuf = appendLoss(lossBuf[:0], w.loss)
			if _, err := st.Write(lossBuf); err != nil {
				return err
			}
			continue
		}
		_, err = st.Write(w.b)
		p.mu.Lock()
		p.unpinLocked(w.c)
		if err == nil {
			s.delivered += uint64(w.n)
		} else {
			s.dropped += uint64(w.n)
		}
		s.sending, s.sendBytes = 0, 0
		p.mu.Unlock()
		if err != nil {
			return err
		}
	}
}

// take waits for something to send: a loss notice first, then a run of
// entries from one chunk within the credit.
func (p *Port) take(ctx context.Context, s *sub) (work, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for {
		switch {
		case s.err != nil:
			return work{}, s.err
		case s.gone != nil:
			return work{}, s.gone
		case p.closed:
			return work{}, ErrClosed
		case s.eof:
			return work{quiet: true}, nil
		}
		// A loss notice goes out just before the entries that follow the
		// loss, so it too waits for credit: a stalled subscriber gets one
		// notice for the whole range when it resumes, not one per chunk.
		if s.loss.First != 0 && s.credit > 0 {
			l := s.loss
			s.loss = Loss{}
			s.losses++
			return work{loss: l}, nil
		}
		if s.credit > 0 {
			if c := p.chunkNo(s.cur); c != nil {
				if s.off < len(c.buf) {
					return p.takeRunLocked(s, c), nil
				}
				if c != p.tail() { // sealed and done: on to the next
					s.cur, s.off = c.no+1, 0
					p.trimLocked()
					continue
				}
			}
		}
		s.waiting = true
		p.mu.Unlock()
		select {
		case <-s.wake:
		case <-ctx.Done():
		case <-p.closing:
		}
		p.mu.Lock()
		s.waiting = false
		if ctx.Err() != nil {
			return work{}, ctx.Err()
		}
	}
}

// maxRun bounds one write, so that a grant of thousands of entries still
// goes out in pieces that let the port's lock and yamux breathe.
const maxRun = 32 << 10

// takeRunLocked takes the entries from the cursor to the credit, the end of
// the chunk or maxRun bytes (at least one entry), and pins the chunk.
func (p *Port) takeRunLocked(s *sub, c *chunk) work {
	w := work{c: c}
	from, to := s.off, s.off
	for to < len(c.buf) && uint64(w.n) < s.credit && (w.n == 0 || to-from < maxRun) {
		to += frameLen(c.buf[to:])
		w.n++
	}
	w.b = c.buf[from:to]
	c.pins++
	s.off = to
	s.next += uint64(w.n)
	s.credit -= uint64(w.n)
	s.sending, s.sendBytes = w.n, to-from
	return w
}

// handshakeFailed explains a failure to read the first frame: silence or a
// broken frame is the subscriber's misbehaviour, a stream that died is not.
func (p *Port) handshakeFailed(st *rpc.Stream, peer string, err error, want string) error {
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		err = protocolf("no %s frame within %v", want, handshakeTimeout)
	case errors.Is(err, io.ErrUnexpectedEOF):
		err = protocolf("the subscriber's side ended in the middle of a frame")
	case !errors.Is(err, ErrProtocol):
		return err // gone before it said anything
	}
	return p.misbehaved(st, peer, err)
}

// misbehaved ends a subscription or fetch for a protocol violation: one
// Warn line, an error frame, the stream closed.
func (p *Port) misbehaved(st *rpc.Stream, peer string, err error) error {
	p.mu.Lock()
	p.misbehave++
	p.mu.Unlock()
	p.cfg.logger.Warn("log subscriber misbehaved: stream closed", zap.String("peer", peer), zap.Error(err))
	return p.farewell(st, &Error{Code: CodeProtocol, Message: strings.TrimPrefix(err.Error(), ErrProtocol.Error()+": ")})
}

// farewell writes an error frame, waiting at most closeGrace for the
// subscriber to take it, and returns the error for the rpc layer's log.
func (p *Port) farewell(st *rpc.Stream, e error) error {
	var pe *Error
	if !errors.As(e, &pe) {
		pe = &Error{Code: CodeInternal, Message: e.Error()}
	}
	st.SetWriteDeadline(time.Now().Add(closeGrace))
	st.Write(appendError(nil, pe.Code, pe.Message))
	return e
}

// peerOf names the subscriber: its node ID, from the rpc connection.
func peerOf(ctx context.Context) string {
	if c := rpc.FromContext(ctx); c != nil {
		return c.RemoteID()
	}
	return ""
}
