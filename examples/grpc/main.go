// Command grpc runs a gRPC service over tether: the server takes
// n.Listener("grpc") in place of a TCP listener, the client dials with
// grpc.WithContextDialer on n.DialConn. gRPC then keeps its API and gains
// tether's eviction: when the peer goes silent, its tether connection is
// evicted in about a second and every gRPC call to it fails at once, where
// grpc-go over TCP with its defaults waits about 15 minutes (and its
// keepalive cannot go below 10 s + 20 s without the server's consent).
//
//	go run ./examples/grpc
//
// The demo calls Echo, leaves a Hold call outstanding, then closes the
// server's node as a crash would (Abort) and shows the call fail.
package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/rpc"
)

func main() {
	if err := run(); err != nil {
		log.Fatal(err)
	}
}

func run() error {
	server, err := tether.Listen("127.0.0.1:0")
	if err != nil {
		return err
	}
	defer server.Close()
	client, err := tether.Listen("127.0.0.1:0")
	if err != nil {
		return err
	}
	defer client.Close()

	srv := newServer()
	served := make(chan error, 1)
	go func() { served <- Serve(server, srv) }()
	defer func() { srv.Stop(); <-served }()

	cc, err := Dial(client, server.Addr().String())
	if err != nil {
		return err
	}
	defer cc.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := call(ctx, cc, "Echo", []byte("hello over tether"))
	if err != nil {
		return err
	}
	fmt.Printf("Echo: %q\n", resp)

	held := make(chan error, 1)
	go func() {
		_, err := call(context.Background(), cc, "Hold", nil) // no deadline of its own
		held <- err
	}()
	time.Sleep(200 * time.Millisecond) // let the call reach the server (a demo, not a test)
	t0 := time.Now()
	server.Abort() // a crash: no goodbye
	err = <-held
	fmt.Printf("Hold failed %v after the server went: %v\n", time.Since(t0).Round(time.Millisecond), status.Code(err))
	if status.Code(err) != codes.Unavailable {
		return fmt.Errorf("the held call: %v", err)
	}
	p, ok := client.Peers().Get(server.ID())
	if ok && errors.Is(p.Err(), rpc.ErrDeadReference) {
		fmt.Println("the server's reference:", p.Err())
	}
	return nil
}
