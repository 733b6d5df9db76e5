package rpc_test

import (
	"context"
	"errors"
	"fmt"
	"net"

	"github.com/tetherrpc/tether/rpc"
)

// A server and a client over one connection (net.Pipe here; TCP or TLS
// alike), with a raw handler and a typed one.
func Example() {
	mux := rpc.NewMux()
	mux.Handle("echo", rpc.Func(func(ctx context.Context, req []byte) ([]byte, error) {
		return req, nil
	}))
	type add struct{ A, B int }
	mux.Handle("add", rpc.Typed(func(ctx context.Context, x add) (int, error) { return x.A + x.B, nil }))

	ctx := context.Background()
	a, b := net.Pipe()
	served := make(chan *rpc.Conn, 1)
	go func() {
		s, err := rpc.Server(ctx, b, &rpc.Config{Mux: mux})
		if err != nil {
			panic(err)
		}
		served <- s
	}()
	c, err := rpc.Client(ctx, a, nil)
	if err != nil {
		panic(err)
	}
	defer c.Close()
	defer (<-served).Close()

	var raw []byte
	c.Call(ctx, "echo", []byte("hello"), &raw)
	var sum int
	c.Call(ctx, "add", add{2, 40}, &sum)
	err = c.Call(ctx, "nope", nil, nil)
	fmt.Println(string(raw), sum, errors.Is(err, rpc.ErrUnknownMethod))
	// Output: hello 42 true
}

// A dead connection fails calls at once, with the cause.
func ExampleConn_Abort() {
	ctx := context.Background()
	a, b := net.Pipe()
	go rpc.Server(ctx, b, nil)
	c, _ := rpc.Client(ctx, a, nil)
	c.Abort(errors.New("missed heartbeats"))
	err := c.Call(ctx, "anything", nil, nil)
	fmt.Println(errors.Is(err, rpc.ErrDeadReference))
	var de *rpc.DeadError
	errors.As(err, &de)
	fmt.Println(de.Cause)
	// Output:
	// true
	// missed heartbeats
}
