package peer_test

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/peer"
	"github.com/tetherrpc/tether/rpc"
)

// A k-of-n read: three shares from five storage nodes, whichever answer
// first. Overdue peers get an alternate started beside them; the rest are
// cancelled once three have answered.
func ExampleFirstK() {
	ctx := context.Background()
	client, _ := tether.Listen("127.0.0.1:0")
	defer client.Close()
	var refs []*peer.Peer
	for i := range 5 {
		s, _ := tether.Listen("127.0.0.1:0")
		defer s.Close()
		s.Handle("storage.get", rpc.Func(func(ctx context.Context, key []byte) ([]byte, error) {
			return []byte{byte(i)}, nil
		}))
		p, err := client.Dial(ctx, s.Addr().String())
		if err != nil {
			panic(err)
		}
		refs = append(refs, p)
	}
	res, err := peer.FirstK(ctx, refs, 3, func(ctx context.Context, p *peer.Peer) (byte, error) {
		var share []byte
		err := p.Call(ctx, "storage.get", []byte("file-1"), &share)
		if err != nil {
			return 0, err
		}
		return share[0], nil
	})
	var got []byte
	for _, r := range res {
		got = append(got, r.Value)
	}
	slices.Sort(got)
	fmt.Println(err, len(slices.Compact(got)), "distinct shares")
	// Output: <nil> 3 distinct shares
}

// Subscribers hear of every connection and eviction, once each, with the
// cause and the number of calls that failed with it.
func ExampleRegistry_Subscribe() {
	ctx := context.Background()
	a, _ := tether.Listen("127.0.0.1:0")
	defer a.Close()
	b, _ := tether.Listen("127.0.0.1:0")
	defer b.Close()
	events := make(chan peer.Event, 2)
	a.Peers().Subscribe(func(ev peer.Event) { events <- ev })
	p, _ := a.Dial(ctx, b.Addr().String())
	fmt.Println((<-events).Kind)
	a.Peers().Evict(p.ID(), fmt.Errorf("operator's choice"))
	ev := <-events
	fmt.Println(ev.Kind, errors.Is(ev.Cause, rpc.ErrDeadReference), errors.Unwrap(ev.Cause), ev.Calls)
	// Output:
	// connected
	// disconnected true operator's choice 0
}
