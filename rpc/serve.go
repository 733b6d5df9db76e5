package rpc

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"time"

	"go.uber.org/zap"
)

func (c *Conn) handleFrame(h header, p []byte) error {
	switch h.kind {
	case kindRequest:
		return c.serveCall(h.id, p)
	case kindResponse, kindError:
		return c.finishCall(h, p)
	case kindCancel:
		c.mu.Lock()
		cc := c.serving[h.id]
		c.mu.Unlock()
		if cc != nil {
			cc.abandon()
		}
	case kindGoAway:
		return fmt.Errorf("%w: %q", ErrPeerLeft, p)
	default:
		return violation("%v frame on the control stream", h.kind)
	}
	return nil
}

// admit registers one of the peer's calls or streams, or says why not. Its
// context ends at the timeout, if any, on the caller's cancel, when the
// connection dies, or when released.
//
// Refusals past the limit are allowed for a while, since a call the peer
// cancelled may still run here; a refused stream counts as streamRefusalCost
// refused calls, as it cost a yamux stream, a goroutine and a timer.
func (c *Conn) admit(id uint64, timeout time.Duration, cost int) (*callCtx, Code, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.dead != nil {
		return nil, CodeUnavailable, c.dead
	}
	if _, dup := c.serving[id]; dup {
		return nil, 0, violation("call %d while a call with that ID is running", id)
	}
	if len(c.serving) >= c.cfg.MaxConcurrentCalls {
		// Our limit is in our hello: a peer of ours never calls past it but
		// in a race (a call it cancelled still running here). One that keeps
		// calling past it ignores it, and costs us work for each refusal.
		now := nanotime()
		if now-c.refusedSince > int64(time.Second) {
			c.refusedSince, c.refused = now, 0
		}
		if c.refused += cost; c.refused > 2*c.cfg.MaxConcurrentCalls+16 {
			return nil, 0, violation("%d calls past the advertised limit of %d concurrent calls within a second", c.refused, c.cfg.MaxConcurrentCalls)
		}
		return nil, CodeResourceExhausted, nil
	}
	cc := newCallCtx(c.base, timeout)
	if c.serving == nil {
		c.serving = make(map[uint64]*callCtx) // made by the first call served
	}
	c.serving[id] = cc
	return cc, 0, nil
}

// release unregisters a call and ends its context.
func (c *Conn) release(id uint64, cc *callCtx) {
	c.mu.Lock()
	if c.serving[id] == cc {
		delete(c.serving, id)
	}
	c.mu.Unlock()
	cc.cancel(context.Canceled)
}

func (c *Conn) serveCall(id uint64, p []byte) error {
	timeout, method, args, err := parseRequest(p)
	if err != nil {
		return err
	}
	c.stats.callsIn.Add(1)
	h := c.cfg.Mux.lookup(method).call
	if h == nil {
		c.stats.rejected.Add(1)
		c.replyError(id, CodeUnknownMethod, "no handler for "+string(method))
		return nil
	}
	cc, code, err := c.admit(id, timeout, 1)
	if err != nil || code != 0 {
		if code == CodeResourceExhausted {
			c.stats.rejected.Add(1)
			c.replyError(id, code, fmt.Sprintf("%d calls running, the limit per connection", c.cfg.MaxConcurrentCalls))
			return nil
		}
		if errors.Is(err, ErrProtocolViolation) {
			return err
		}
		return nil // dead
	}
	go c.runHandler(cc, id, h, method, args)
	return nil
}

func (c *Conn) runHandler(cc *callCtx, id uint64, h Handler, method, args []byte) {
	resp, err := c.invoke(cc, h, method, args)
	// Queue the answer before releasing the call, so that a call counts as
	// serving until its answer is on its way (a drain waits for that), and
	// a goodbye queued after it goes out after it.
	switch {
	case !cc.wanted(): // the caller gave up, or the connection died: nobody to answer
	case err != nil:
		code, msg := remoteErrorOf(err)
		c.replyError(id, code, msg)
	case len(resp) > int(c.remote.maxMessage):
		c.replyError(id, CodeMessageTooLarge, fmt.Sprintf("a %d-byte reply exceeds the caller's limit of %d bytes", len(resp), c.remote.maxMessage))
	default:
		c.enqueue(outFrame{kind: kindResponse, id: id, buf: resp}, false)
	}
	c.release(id, cc)
}

// invoke runs a handler, turning a panic into CodeInternal.
func (c *Conn) invoke(ctx context.Context, h Handler, method, args []byte) (resp []byte, err error) {
	defer func() {
		if r := recover(); r != nil {
			c.stats.handlerPanics.Add(1)
			c.cfg.Logger.Error("handler panicked", zap.ByteString("method", method),
				zap.String("peer", c.remoteID), zap.Any("panic", r), zap.ByteString("stack", debug.Stack()))
			resp, err = nil, Errorf(CodeInternal, "handler panicked: %v", r)
		}
	}()
	return h.ServeRPC(ctx, args)
}

func (c *Conn) replyError(id uint64, code Code, msg string) {
	c.enqueue(outFrame{kind: kindError, id: id, buf: errorPayload(code, msg)}, false)
}
