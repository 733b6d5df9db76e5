package cluster_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/tetherrpc/tether/peer"
	"github.com/tetherrpc/tether/rpc"
)

// Eight nodes, each joining through the first, form a cluster in which
// every node holds a live reference to every other, and calls work.
func TestClusterForms(t *testing.T) {
	ms := startCluster(t, 8)
	took := allConnected(t, ms, 15*time.Second)
	t.Logf("8 members connected pairwise %v after the last joined", took)
	for _, m := range ms {
		kept := 0
		for _, o := range m.c.Members() {
			if o.Kept {
				kept++
			}
		}
		if got := len(m.c.Members()); got != 7 {
			t.Fatalf("%s knows %d members", m.n.ID(), got)
		}
		_ = kept
	}
	var out []byte
	p, _ := ms[3].n.Peers().Get(ms[5].n.ID())
	if err := p.Call(context.Background(), "echo", []byte("hi"), &out); err != nil || string(out) != "hi" {
		t.Fatalf("a call between members: %q %v", out, err)
	}
}

// A stranger with a valid certificate, not in the cluster, is refused by
// every member; members' connections are untouched.
func TestClusterRefusesStrangers(t *testing.T) {
	ms := startCluster(t, 3)
	allConnected(t, ms, 15*time.Second)
	stranger := start(t, nil) // a cluster of its own, with another Gate
	for _, m := range ms {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := stranger.n.Dial(ctx, m.n.Addr().String())
		cancel()
		if !errors.Is(err, rpc.ErrNotAdmitted) {
			t.Fatalf("a stranger dialing a member: %v; want rpc.ErrNotAdmitted", err)
		}
	}
	for _, m := range ms {
		if _, ok := m.n.Peers().Get(stranger.n.ID()); ok {
			t.Fatal("a member holds a reference to the stranger")
		}
	}
	if !connected(ms[0], ms) {
		t.Fatal("the members lost each other")
	}
	_ = peer.Connected
}
