package rpc

import (
	"context"
	"errors"
	"testing"
	"time"
)

// The connection's Context ends at death with the *DeadError as its cause,
// for itself, for contexts derived from it and for context.AfterFunc, and
// a stopped AfterFunc never runs.
func TestConnContext(t *testing.T) {
	c, _ := pair(t, "tcp", nil, nil)
	ctx := c.Context()
	if ctx.Err() != nil || context.Cause(ctx) != nil {
		t.Fatalf("a live connection's context: Err %v, Cause %v", ctx.Err(), context.Cause(ctx))
	}
	child, cancel := context.WithCancel(ctx)
	defer cancel()
	ran := make(chan struct{})
	context.AfterFunc(ctx, func() { close(ran) })
	stopped := make(chan struct{})
	stop := context.AfterFunc(ctx, func() { close(stopped) })
	if !stop() {
		t.Fatal("stop: the func had not run yet, so stop should report true")
	}
	// Registered and stopped again: the connection keeps nothing of it.
	_, cancel2 := context.WithCancel(ctx)
	cancel2()

	cause := errors.New("gone")
	c.Abort(cause)
	for _, x := range []context.Context{ctx, child} {
		select {
		case <-x.Done():
		case <-time.After(5 * time.Second):
			t.Fatal("the context did not end at death")
		}
		if !errors.Is(x.Err(), context.Canceled) {
			t.Errorf("Err = %v, want context.Canceled", x.Err())
		}
		var de *DeadError
		if err := context.Cause(x); !errors.As(err, &de) || !errors.Is(err, cause) {
			t.Errorf("Cause = %v, want the *DeadError wrapping %v", err, cause)
		}
	}
	select {
	case <-ran:
	case <-time.After(5 * time.Second):
		t.Fatal("context.AfterFunc did not run at death")
	}
	select {
	case <-stopped:
		t.Fatal("a stopped AfterFunc ran")
	default:
	}
	// Registered after death: runs at once.
	late := make(chan struct{})
	context.AfterFunc(ctx, func() { close(late) })
	select {
	case <-late:
	case <-time.After(5 * time.Second):
		t.Fatal("context.AfterFunc registered after death did not run")
	}
	c.mu.Lock()
	n := len(c.afterFns)
	c.mu.Unlock()
	if n != 0 {
		t.Errorf("%d funcs still registered after death", n)
	}
}
