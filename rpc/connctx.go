package rpc

import (
	"context"
	"slices"
	"time"
)

// connCtx is a connection's Context: it ends when the connection dies, and
// context.Cause is then its *DeadError. It costs the connection nothing
// until used: its Done is the connection's done channel, and what
// context.AfterFunc and the derived contexts register (a node watches every
// connection's death so) is a func in a slice, not a child in a cancelCtx's
// map and a channel of its own, a few hundred bytes per idle peer. A
// context that carries the cause is made only once the connection is dead,
// when asked for (see Value).
type connCtx struct{ c *Conn }

var _ interface{ AfterFunc(func()) func() bool } = connCtx{}

func (x connCtx) Deadline() (time.Time, bool) { return time.Time{}, false }
func (x connCtx) Done() <-chan struct{}       { return x.c.done }

func (x connCtx) Err() error {
	select {
	case <-x.c.done:
		return context.Canceled
	default:
		return nil
	}
}

// Value answers for the context that carries the cause once the
// connection is dead (context.Cause asks it); before that there is no
// cause, and no value.
func (x connCtx) Value(key any) any {
	if x.Err() == nil {
		return nil
	}
	ctx, cancel := context.WithCancelCause(context.Background())
	cancel(x.c.deadErr())
	return ctx.Value(key)
}

func (x connCtx) String() string { return "rpc.Conn.Context" }

// AfterFunc arranges for f to run once the connection is dead, on the
// goroutine that killed it, or at once in a goroutine of its own if it is
// dead already. The stop
// function it returns unregisters f; it reports whether it did so before
// f ran. context.AfterFunc and the contexts derived from this one use it;
// f must be quick.
func (x connCtx) AfterFunc(f func()) func() bool {
	c := x.c
	c.mu.Lock()
	if c.afterRan {
		c.mu.Unlock()
		// Not on this goroutine: context's callers hold locks f takes.
		go f()
		return func() bool { return false }
	}
	e := &afterFn{f: f}
	c.afterFns = append(c.afterFns, e)
	c.mu.Unlock()
	return func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		i := slices.Index(c.afterFns, e)
		if i < 0 {
			return false
		}
		if c.afterFns = slices.Delete(c.afterFns, i, i+1); len(c.afterFns) == 0 {
			c.afterFns = nil
		}
		return true
	}
}

type afterFn struct{ f func() }

// runAfterFns runs what the connection's Context has registered, once done
// is closed.
func (c *Conn) runAfterFns() {
	c.mu.Lock()
	c.afterRan = true
	fns := c.afterFns
	c.afterFns = nil
	c.mu.Unlock()
	for _, e := range fns {
		e.f()
	}
}
