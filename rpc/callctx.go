package rpc

import (
	"context"
	"sync"
	"time"
)

// callCtx is the context of a handler serving one of the peer's calls or
// streams, and the record of that call while it runs. One allocation stands
// for what context.WithCancel and a tracking struct would cost three of.
// Its parent (the connection's base context) carries values only and is
// never done: the connection cancels each callCtx itself when it dies.
type callCtx struct {
	parent   context.Context
	deadline time.Time

	mu        sync.Mutex
	done      chan struct{} // made on first use
	err       error
	abandoned bool // the caller sent a cancel: no answer is wanted
	timer     *time.Timer
	afters    []func() // children (context.WithCancel and AfterFunc on us)
}

var closedChan = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

func newCallCtx(parent context.Context, timeout time.Duration) *callCtx {
	c := &callCtx{parent: parent}
	if timeout > 0 {
		c.deadline = time.Now().Add(timeout)
		c.mu.Lock() // the timer may fire before the assignment is done
		c.timer = time.AfterFunc(timeout, c.expire)
		c.mu.Unlock()
	}
	return c
}

func (c *callCtx) expire() { c.cancel(context.DeadlineExceeded) }

func (c *callCtx) Deadline() (time.Time, bool) { return c.deadline, !c.deadline.IsZero() }

func (c *callCtx) Done() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.done == nil {
		if c.err != nil {
			c.done = closedChan
		} else {
			c.done = make(chan struct{})
		}
	}
	return c.done
}

func (c *callCtx) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

func (c *callCtx) Value(key any) any { return c.parent.Value(key) }

// AfterFunc lets the context package attach children (context.WithCancel,
// context.AfterFunc) without a goroutine each.
func (c *callCtx) AfterFunc(f func()) (stop func() bool) {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		go f()
		return func() bool { return false }
	}
	c.afters = append(c.afters, f)
	i := len(c.afters) - 1
	c.mu.Unlock()
	return func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		if c.err != nil || c.afters[i] == nil {
			return false
		}
		c.afters[i] = nil
		return true
	}
}

// cancel ends the context with err; only the first call counts.
func (c *callCtx) cancel(err error) {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return
	}
	c.err = err
	if c.done == nil {
		c.done = closedChan
	} else {
		close(c.done)
	}
	if c.timer != nil {
		c.timer.Stop()
	}
	afters := c.afters
	c.afters = nil
	c.mu.Unlock()
	for _, f := range afters {
		if f != nil {
			f()
		}
	}
}

// abandon records the caller's cancel; it reports whether it was news.
func (c *callCtx) abandon() bool {
	c.mu.Lock()
	was := c.abandoned
	c.abandoned = true
	c.mu.Unlock()
	if !was {
		c.cancel(context.Canceled)
	}
	return !was
}

func (c *callCtx) wanted() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return !c.abandoned
}

func (c *callCtx) String() string { return "rpc.callCtx" }
