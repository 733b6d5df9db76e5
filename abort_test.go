package tether_test

import (
	"context"
	"errors"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.uber.org/zap/zapcore"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/peer"
	"github.com/tetherrpc/tether/rpc"
)

// Abort imitates a crash: the peer evicts the node for a reset (over TCP;
// on the in-memory network a close), not for a goodbye, and logs it at
// Warn; calls outstanding on both sides fail; and nothing of the aborted
// node is left running.
func TestAbortLooksLikeACrash(t *testing.T) {
	for _, tr := range []string{"mem", "tcp", "tls"} {
		t.Run(tr, func(t *testing.T) {
			defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
			var aOpts, bOpts []tether.Option
			if tr == "tls" {
				ca, err := rpc.NewCertificate()
				if err != nil {
					t.Fatal(err)
				}
				cb, _ := rpc.NewCertificate()
				aOpts = append(aOpts, tether.WithTLS(rpc.TLSConfig(ca)))
				bOpts = append(bOpts, tether.WithTLS(rpc.TLSConfig(cb)))
			}
			start := func(opts ...tether.Option) *tether.Node {
				if tr == "mem" {
					return node(t, opts...)
				}
				n, err := tether.Listen("127.0.0.1:0", opts...)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { n.Close() })
				return n
			}
			zl, logs := observed()
			a := start(aOpts...)
			b := start(append(bOpts, tether.WithLogger(zl))...)
			held := make(chan struct{}, 2)
			hold := rpc.Func(func(ctx context.Context, _ []byte) ([]byte, error) {
				held <- struct{}{}
				<-ctx.Done()
				return nil, ctx.Err()
			})
			a.Handle("hold", hold)
			b.Handle("hold", hold)
			evB := make(chan peer.Event, 16)
			cancel := b.Peers().Subscribe(func(ev peer.Event) {
				if ev.Kind == peer.Disconnected {
					evB <- ev
				}
			})
			defer cancel()

			p := dial(t, b, a)
			aSide := waitPeer(t, a, b.ID())
			callB, callA := make(chan error, 1), make(chan error, 1)
			go func() { callB <- p.Call(context.Background(), "hold", nil, nil) }()
			go func() { callA <- aSide.Call(context.Background(), "hold", nil, nil) }()
			<-held
			<-held

			a.Abort()

			var ev peer.Event
			select {
			case ev = <-evB:
			case <-time.After(5 * time.Second):
				t.Fatal("the peer did not evict the aborted node")
			}
			reset := tr != "mem" // no resets in memory: a closed conn
			if errors.Is(ev.Cause, rpc.ErrPeerLeft) || reset && !errors.Is(ev.Cause, syscall.ECONNRESET) {
				t.Fatalf("the peer evicted the aborted node for %v; want a connection reset, not a goodbye", ev.Cause)
			}
			if err := <-callB; !errors.Is(err, rpc.ErrDeadReference) || reset && !errors.Is(err, syscall.ECONNRESET) {
				t.Fatalf("the peer's call to the aborted node: %v", err)
			}
			if err := <-callA; !errors.Is(err, rpc.ErrDeadReference) || !errors.Is(err, tether.ErrAborted) {
				t.Fatalf("the aborted node's own call: %v", err)
			}
			waitFor(t, func() bool {
				for _, e := range logs.FilterMessage("peer evicted").All() {
					if e.Level == zapcore.WarnLevel {
						return true
					}
				}
				return false
			}, "the peer to log the eviction at Warn")
			if n := logs.FilterMessage("peer disconnected").Len(); n != 0 {
				t.Fatalf("the peer logged a crash as a disconnection: %v", logs.FilterMessage("peer disconnected").All())
			}
			a.Close() // after Abort: nothing more to do
			b.Close()
		})
	}
}

// waitPeer waits until n holds a live reference to id.
func waitPeer(t testing.TB, n *tether.Node, id peer.ID) *peer.Peer {
	t.Helper()
	var p *peer.Peer
	waitFor(t, func() bool {
		var ok bool
		p, ok = n.Peers().Get(id)
		return ok
	}, "the peer to be registered")
	return p
}
