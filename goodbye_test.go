package tether_test

import (
	"bytes"
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/peer"
	"github.com/tetherrpc/tether/rpc"
)

// A node that closes right after its callers gave up on their calls, while
// the peer is still sending the answers, says goodbye: over mutual TLS the
// peer sees rpc.ErrPeerLeft and logs no eviction, every time.
func TestCloseAfterCancelledCallsSaysGoodbye(t *testing.T) {
	ca, err := rpc.NewCertificate()
	if err != nil {
		t.Fatal(err)
	}
	cb, _ := rpc.NewCertificate()
	reply := bytes.Repeat([]byte("x"), 64<<10)
	for i := range 10 {
		zl, logs := observed()
		a := node(t, tether.WithTLS(rpc.TLSConfig(ca)))
		b := node(t, tether.WithTLS(rpc.TLSConfig(cb)), tether.WithLogger(zl))
		release := make(chan struct{})
		b.Handle("big", rpc.Func(func(ctx context.Context, _ []byte) ([]byte, error) {
			<-release
			return reply, nil // answered even if the caller gave up: a late answer
		}))
		gone := make(chan peer.Event, 1)
		cancelSub := b.Peers().Subscribe(func(ev peer.Event) {
			if ev.Kind == peer.Disconnected {
				gone <- ev
			}
		})
		p := dial(t, a, b)
		ctx, cancel := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		for range 32 {
			wg.Add(1)
			go func() { defer wg.Done(); p.Call(ctx, "big", nil, nil) }()
		}
		waitFor(t, func() bool { return b.Peers().Stats().Serving == 32 }, "the calls to run")
		cancel()
		wg.Wait()      // the callers gave up
		close(release) // and the answers flow back
		a.Close()
		select {
		case ev := <-gone:
			if !errors.Is(ev.Cause, rpc.ErrPeerLeft) {
				t.Fatalf("round %d: the peer of a closed node saw %v, want rpc.ErrPeerLeft", i, ev.Cause)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("round %d: the peer did not see the close", i)
		}
		cancelSub()
		if n := logs.FilterMessage("peer evicted").Len(); n != 0 {
			t.Fatalf("round %d: a clean close logged as an eviction: %v", i, logs.FilterMessage("peer evicted").All())
		}
		b.Close()
	}
}
