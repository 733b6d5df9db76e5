package peer_test

import (
	"context"
	"fmt"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/peer"
	"github.com/tetherrpc/tether/rpc"
)

// A read from any three peers of a large registry: Sample picks five at
// random (the healthy first) without copying the registry, and FirstK
// keeps the two beyond k as alternates.
func ExampleRegistry_Sample() {
	ctx := context.Background()
	client, _ := tether.Listen("127.0.0.1:0")
	defer client.Close()
	for range 8 {
		s, _ := tether.Listen("127.0.0.1:0")
		defer s.Close()
		s.Handle("status", rpc.Func(func(ctx context.Context, _ []byte) ([]byte, error) {
			return []byte("ok"), nil
		}))
		if _, err := client.Dial(ctx, s.Addr().String()); err != nil {
			panic(err)
		}
	}
	const k = 3
	refs := client.Peers().Sample(k + 2)
	res, err := peer.FirstK(ctx, refs, k, func(ctx context.Context, p *peer.Peer) (string, error) {
		var status []byte
		err := p.Call(ctx, "status", nil, &status)
		return string(status), err
	})
	fmt.Println(len(refs), "sampled;", len(res), "answers;", err)
	// Output: 5 sampled; 3 answers; <nil>
}
