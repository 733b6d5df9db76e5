package tether_test

import (
	"context"
	"errors"
	"fmt"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/partition"
	"github.com/tetherrpc/tether/peer"
	"github.com/tetherrpc/tether/rpc"
)

// Two nodes on loopback: one serves, the other dials and calls; then the
// server leaves and the caller's reference dies at once.
func Example() {
	ctx := context.Background()
	server, _ := tether.Listen("127.0.0.1:0")
	server.Handle("storage.get", rpc.Func(func(ctx context.Context, key []byte) ([]byte, error) {
		return append([]byte("share of "), key...), nil
	}))
	client, _ := tether.Listen("127.0.0.1:0")
	defer client.Close()

	gone := make(chan peer.Event, 1)
	client.Peers().Subscribe(func(ev peer.Event) {
		if ev.Kind == peer.Disconnected {
			gone <- ev
		}
	})
	p, err := client.Dial(ctx, server.Addr().String())
	if err != nil {
		panic(err)
	}
	var share []byte
	p.Call(ctx, "storage.get", []byte("k1"), &share)
	fmt.Println(string(share))

	server.Close()
	ev := <-gone
	fmt.Println(ev.Kind, errors.Unwrap(ev.Cause)) // ev.Cause is p.Err(), a *rpc.DeadError
	<-p.Done()
	fmt.Println(p.Call(ctx, "storage.get", []byte("k1"), &share) != nil)
	// Output:
	// share of k1
	// disconnected peer left: "connection closed"
	// true
}

// A node over any listener and dialer: here two hosts of an in-memory
// network (package partition), as in tests; a Unix socket, a listener
// handed over by systemd or a TLS listener serve the same way.
func ExampleNew() {
	ctx := context.Background()
	network := partition.NewNetwork()
	defer network.Close()

	ln, _ := network.Host("server").Listen(":7000")
	server, _ := tether.New()
	defer server.Close()
	server.Handle("echo", rpc.Func(func(_ context.Context, req []byte) ([]byte, error) { return req, nil }))
	served := make(chan error, 1)
	go func() { served <- server.Serve(ln) }() // until server.Close

	client, _ := tether.New(tether.WithDialer(network.Host("client").Dial))
	defer client.Close()
	p, err := client.Dial(ctx, "server:7000")
	if err != nil {
		panic(err)
	}
	var reply []byte
	p.Call(ctx, "echo", []byte("over memory"), &reply)
	fmt.Println(string(reply))

	server.Close()
	fmt.Println(<-served)
	// Output:
	// over memory
	// <nil>
}
