package tether_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/rpc"
)

// A call to a draining node is refused with an error that matches
// tether.ErrDraining and rpc.ErrUnavailable, and still carries
// CodeUnavailable for errors.As.
func TestDrainingRefusalMatchesErrDraining(t *testing.T) {
	a, b := node(t), node(t)
	held, release := make(chan struct{}), make(chan struct{})
	b.Handle("hold", rpc.Func(func(ctx context.Context, _ []byte) ([]byte, error) {
		close(held)
		<-release
		return nil, nil
	}))
	b.Handle("work", rpc.Func(echo))
	p := dial(t, a, b)
	first := make(chan error, 1)
	go func() { first <- p.Call(context.Background(), "hold", nil, nil) }()
	<-held
	drained := make(chan error, 1)
	go func() { drained <- b.Drain(context.Background()) }() // waits for "hold"

	var err error
	waitFor(t, func() bool {
		err = p.Call(context.Background(), "work", nil, nil)
		return err != nil
	}, "a call to be refused by the draining node")
	var re *rpc.RemoteError
	if !errors.Is(err, tether.ErrDraining) || !errors.Is(err, rpc.ErrUnavailable) ||
		!errors.As(err, &re) || re.Code != rpc.CodeUnavailable || re.Method != "work" {
		t.Fatalf("a call to a draining node: %v; want ErrDraining, rpc.ErrUnavailable, CodeUnavailable", err)
	}
	if errors.Is(err, rpc.ErrDeadReference) {
		t.Fatalf("a refusal is not a dead reference: %v", err)
	}
	close(release)
	if err := <-first; err != nil {
		t.Fatalf("the call in flight: %v", err)
	}
	select {
	case err := <-drained:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the drain did not end")
	}
}
