package cluster_test

import (
	"context"
	"errors"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tetherrpc/tether/internal/ttest"
	"github.com/tetherrpc/tether/peer"
	"github.com/tetherrpc/tether/rpc"
)

// A member that crashes (its connections reset, its gossip silent) is
// evicted by tether at once, declared dead by the gossip seconds later, and
// from then on no longer redialed: a listener on its old port hears
// redials before the verdict and none after.
func TestClusterCrashedMemberIsLetGo(t *testing.T) {
	ms := startCluster(t, 6)
	allConnected(t, ms, 15*time.Second)
	// x: the member with the largest ID, which every other dials.
	x := ms[0]
	for _, m := range ms {
		if m.n.ID() > x.n.ID() {
			x = m
		}
	}
	rest := without(ms, x)
	addr := x.n.Addr().String()

	t0 := time.Now()
	x.c.Close()
	x.n.Abort()
	var redials atomic.Int64
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Skipf("the crashed member's port was taken at once: %v", err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			redials.Add(1)
			c.Close()
		}
	}()

	ttest.WaitFor(t, 5*time.Second, func() bool {
		for _, m := range rest {
			if _, ok := m.n.Peers().Get(x.n.ID()); ok {
				return false
			}
		}
		return true
	}, "every member to evict the crashed one")
	evicted := time.Since(t0)
	ttest.WaitFor(t, 30*time.Second, func() bool {
		for _, m := range rest {
			if !knowsAll(m, rest) {
				return false
			}
		}
		return true
	}, "every member to declare the crashed one dead")
	dead := time.Since(t0)
	before := redials.Load()
	time.Sleep(ttest.Scaled(200 * time.Millisecond)) // a redial under way when the verdict came
	settled := redials.Load()
	time.Sleep(5 * time.Second) // past the redials' backoff at that age
	after := redials.Load() - settled
	t.Logf("crashed member evicted by all in %v, declared dead by all in %v; %d redials before, %d after", evicted, dead, before, after)
	if before == 0 {
		t.Fatal("no member redialed the crashed one before its death was declared: the test proves nothing")
	}
	if after != 0 {
		t.Fatalf("%d redials of a member declared dead", after)
	}
	for _, m := range rest {
		if kept, _ := m.n.Peers().KeptReachable(); kept != dialsCount(m) {
			t.Fatalf("%s keeps %d addresses, dials %d members", m.n.ID(), kept, dialsCount(m))
		}
	}
	if !connected(rest[0], rest) {
		t.Fatal("the others lost each other")
	}
}

// A member that leaves is let go at once by the others, who hear its
// goodbye (rpc.ErrPeerLeft, not an eviction), and it is refused if it
// comes back without joining.
func TestClusterLeave(t *testing.T) {
	ms := startCluster(t, 5)
	allConnected(t, ms, 15*time.Second)
	x, rest := ms[2], without(ms, ms[2])
	causes := make(chan error, 16)
	for _, m := range rest {
		m.n.Peers().Subscribe(func(ev peer.Event) {
			if ev.Kind == peer.Disconnected && ev.ID == x.n.ID() && !retired(ev) {
				causes <- ev.Cause
			}
		})
	}
	t0 := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := x.c.Leave(ctx); err != nil {
		t.Fatal(err)
	}
	ttest.WaitFor(t, 5*time.Second, func() bool {
		for _, m := range rest {
			if !knowsAll(m, rest) {
				return false
			}
		}
		return true
	}, "every member to let the leaver go")
	t.Logf("the leaver let go by all in %v", time.Since(t0))
	for range rest {
		select {
		case err := <-causes:
			if !errors.Is(err, rpc.ErrPeerLeft) {
				t.Fatalf("the leaver's connection ended with %v; want its goodbye", err)
			}
		case <-time.After(ttest.Scaled(5 * time.Second)):
			t.Fatal("a member still holds the leaver's connection")
		}
	}
	ctx, cancel = context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := x.n.Dial(ctx, rest[0].n.Addr().String()); !errors.Is(err, rpc.ErrNotAdmitted) {
		t.Fatalf("the leaver dialing a member: %v; want rpc.ErrNotAdmitted", err)
	}
}
