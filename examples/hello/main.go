// Command hello starts two tether nodes on loopback that call each other
// over one connection, then closes one and shows the other evict it at once.
//
//	go run ./examples/hello
package main

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/peer"
	"github.com/tetherrpc/tether/rpc"
)

func main() {
	if err := run(); err != nil {
		log.Fatal(err)
	}
}

func run() error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	alice, err := tether.Listen("127.0.0.1:0")
	if err != nil {
		return err
	}
	defer alice.Close()
	bob, err := tether.Listen("127.0.0.1:0")
	if err != nil {
		return err
	}
	defer bob.Close()

	greet := func(name string) rpc.Handler {
		return rpc.Func(func(ctx context.Context, req []byte) ([]byte, error) {
			return []byte("hello " + string(req) + ", this is " + name), nil
		})
	}
	alice.Handle("greet", greet("alice"))
	bob.Handle("greet", greet("bob"))

	left := make(chan peer.Event, 1)
	alice.Peers().Subscribe(func(ev peer.Event) {
		if ev.Kind == peer.Disconnected {
			left <- ev
		}
	})

	// Alice dials Bob; both can now call each other on the one connection.
	p, err := alice.Dial(ctx, bob.Addr().String())
	if err != nil {
		return err
	}
	var reply []byte
	if err := p.Call(ctx, "greet", []byte("alice"), &reply); err != nil {
		return err
	}
	fmt.Printf("alice -> bob: %s\n", reply)

	var q *peer.Peer
	for q == nil { // Bob registers Alice as soon as his side of the handshake ends
		q, _ = bob.Peers().Get(alice.ID())
		time.Sleep(time.Millisecond)
	}
	if err := q.Call(ctx, "greet", []byte("bob"), &reply); err != nil {
		return err
	}
	fmt.Printf("bob -> alice: %s\n", reply)

	// Bob leaves. He says goodbye, so Alice evicts him at once instead of
	// waiting for missed heartbeats; calls on the old reference fail
	// without any I/O.
	t0 := time.Now()
	bob.Close()
	ev := <-left
	fmt.Printf("alice evicted bob after %v: %v\n", time.Since(t0).Round(time.Microsecond), ev.Cause)
	fmt.Printf("a call on the evicted reference: %v\n", p.Call(ctx, "greet", []byte("alice"), &reply))
	return nil
}
