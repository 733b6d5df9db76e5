package tether_test

import (
	"context"
	"errors"
	netrpc "net/rpc"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/internal/ttest"
	"github.com/tetherrpc/tether/liveness"
	"github.com/tetherrpc/tether/rpc"
)

// net/rpc over tether: rpc.Server.Accept on b.Listener("netrpc"),
// rpc.NewClient on a conn from a.DialConn.

// Arith is a net/rpc service.
type Arith struct {
	holding atomic.Int64
	release chan struct{}
}

// Add answers with the sum of its arguments.
func (*Arith) Add(args [2]int, sum *int) error { *sum = args[0] + args[1]; return nil }

// Hold answers at the end of the test: net/rpc gives its handlers no
// context to end them by.
func (a *Arith) Hold(int, *int) error {
	a.holding.Add(1)
	defer a.holding.Add(-1)
	<-a.release
	return nil
}

func startNetRPC(t *testing.T, b *tether.Node) *Arith {
	t.Helper()
	srv := netrpc.NewServer()
	arith := &Arith{release: make(chan struct{})}
	if err := srv.Register(arith); err != nil {
		t.Fatal(err)
	}
	ln := b.Listener("netrpc")
	served := make(chan struct{})
	go func() { srv.Accept(ln); close(served) }() // logs the listener's closing
	t.Cleanup(func() { ln.Close(); <-served; close(arith.release) })
	return arith
}

func netRPCClient(t *testing.T, a *tether.Node, addr string) *netrpc.Client {
	t.Helper()
	c, err := a.DialConn(context.Background(), addr, "netrpc")
	if err != nil {
		t.Fatal(err)
	}
	cl := netrpc.NewClient(c)
	t.Cleanup(func() { cl.Close() })
	return cl
}

// Many clients, each on a conn of its own, calling at once.
func TestNetRPCConcurrentConns(t *testing.T) {
	const n = 100
	a, b := node(t), node(t)
	startNetRPC(t, b)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		cl := netRPCClient(t, a, b.Addr().String())
		wg.Go(func() {
			var sum int
			err := cl.Call("Arith.Add", [2]int{i, 1}, &sum)
			if err == nil && sum != i+1 {
				err = errors.New("a wrong sum")
			}
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
}

// Calls in flight when the peer is evicted fail at once with
// ErrDeadReference and the cause; a net/rpc client knows of no deadline
// of its own, so over TCP they would wait for the kernel.
func TestNetRPCEvictedMidCall(t *testing.T) {
	a, b := node(t), node(t)
	arith := startNetRPC(t, b)
	cl := netRPCClient(t, a, b.Addr().String())
	calls := make([]*netrpc.Call, 10)
	for i := range calls {
		calls[i] = cl.Go("Arith.Hold", 0, new(int), make(chan *netrpc.Call, 1))
	}
	waitFor(t, func() bool { return arith.holding.Load() == int64(len(calls)) }, "the calls to reach the server")
	cause := errors.New("evicted by the test")
	a.Peers().Evict(b.ID(), cause)
	for _, c := range calls {
		done, ok := ttest.Within(c.Done, ttest.Scaled(2*time.Second))
		if !ok {
			t.Fatal("a call outlived the eviction")
		}
		if !errors.Is(done.Error, rpc.ErrDeadReference) || !errors.Is(done.Error, cause) {
			t.Fatalf("call: %v", done.Error)
		}
	}
	if err := cl.Call("Arith.Add", [2]int{1, 2}, new(int)); !errors.Is(err, netrpc.ErrShutdown) {
		t.Fatalf("a call after the eviction: %v", err)
	}
}

// A silent partition: a call outstanding fails within 2 s (see
// TestHTTPSilentPartition), and a client dialing again after the heal
// calls on a new tether connection.
func TestNetRPCSilentPartition(t *testing.T) {
	a, b, addr, nw := memPair(t)
	arith := startNetRPC(t, b)
	cl := netRPCClient(t, a, addr)
	call := cl.Go("Arith.Hold", 0, new(int), make(chan *netrpc.Call, 1))
	waitFor(t, func() bool { return arith.holding.Load() == 1 }, "the call to reach the server")
	time.Sleep(time.Second) // the call waits a while: the connection is quiet
	nw.Cut("a", "b")
	t0 := time.Now()
	done, ok := ttest.Within(call.Done, 10*time.Second)
	if !ok {
		t.Fatal("the call outlived the partition by 10 s")
	}
	took := time.Since(t0)
	var v *liveness.Verdict
	if !errors.Is(done.Error, rpc.ErrDeadReference) || !errors.As(done.Error, &v) {
		t.Fatalf("the call: %v", done.Error)
	}
	t.Logf("the outstanding call failed %v after the partition: %v", took, done.Error)
	if took > ttest.Scaled(2*time.Second) {
		t.Errorf("took %v, floor 2 s", took)
	}
	nw.HealAll()
	cl2 := netRPCClient(t, a, addr)
	var sum int
	if err := cl2.Call("Arith.Add", [2]int{2, 3}, &sum); err != nil || sum != 5 {
		t.Fatalf("a call after the heal: %d, %v", sum, err)
	}
}
