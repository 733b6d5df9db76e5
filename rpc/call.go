package rpc

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

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
	if c.pending == nil {
		c.pending = make(map[uint64]*call) // made by the first call: most idle peers never call
	}
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
