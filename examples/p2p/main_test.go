package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/tetherrpc/tether/liveness"
	"github.com/tetherrpc/tether/partition"
	"github.com/tetherrpc/tether/peer"
	"github.com/tetherrpc/tether/rpc"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// Four nodes in a line, A - B - C - D, each keeping the next connected
// (as with -peers), with -min-peers 1 so that they stay a line while every
// node has a peer. A message from A crosses the line, shown once by each
// node with its hop count; a copy sent again is dropped. Then B leaves: A
// and C evict it at once (its goodbye: rpc.ErrPeerLeft), A, alone, keeps
// an address it learnt by peer exchange connected, and gossip flows again
// between all three.
func TestGossipLine(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	cl := newCluster()
	nodes := make([]*testNode, 4)
	for i, name := range []string{"A", "B", "C", "D"} {
		nodes[i] = cl.start(t, name, 1)
	}
	a, b, c, d := nodes[0], nodes[1], nodes[2], nodes[3]
	for i := range 3 {
		nodes[i].g.keep(nodes[i+1].addr())
	}
	for _, n := range nodes {
		n.waitFor(t, "peer exchange: every node learns the three others", func([]note) bool {
			return n.g.knownCount() == 3
		})
	}
	for i, want := range []int{1, 2, 2, 1} {
		if got := len(nodes[i].g.tn.Peers().List()); got != want {
			t.Fatalf("node %s has %d peers, want %d: not a line", nodes[i].name, got, want)
		}
	}

	m := a.g.say("hello from A")
	for i, n := range nodes[1:] {
		got := n.message(t, m.ID)
		if got.Hops != i+1 || got.Text != m.Text || got.Origin != "A" {
			t.Fatalf("node %s got %+v, want %d hops", n.name, got, i+1)
		}
	}
	// The same message again, from A to B: dropped, not shown nor forwarded.
	pb, ok := a.g.tn.Peers().Get(b.g.tn.ID())
	if !ok {
		t.Fatal("A has no reference to B")
	}
	if err := pb.Call(ctx, methodGossip, message{ID: m.ID, Origin: "A", Hops: 1, Text: m.Text}, nil); err != nil {
		t.Fatal(err)
	}
	if got := b.count(m.ID); got != 1 {
		t.Fatalf("B showed the message %d times", got)
	}

	// B leaves.
	bid := b.g.tn.ID()
	t0 := time.Now()
	b.g.close()
	for _, n := range []*testNode{a, c} {
		n.waitFor(t, n.name+" to evict B with rpc.ErrPeerLeft", func(notes []note) bool {
			return n.find(notes, func(ev peer.Event) bool {
				return ev.Kind == peer.Disconnected && ev.ID == bid && errors.Is(ev.Cause, rpc.ErrPeerLeft)
			})
		})
	}
	t.Logf("A and C evicted B %v after it left", time.Since(t0))
	// A has no peer left: it keeps C's or D's address, learnt from B.
	a.waitFor(t, "A to connect to C or D", func(notes []note) bool {
		return a.find(notes, func(ev peer.Event) bool {
			return ev.Kind == peer.Connected && (ev.ID == c.g.tn.ID() || ev.ID == d.g.tn.ID())
		})
	})
	m2 := a.g.say("A again, B gone")
	c.message(t, m2.ID)
	d.message(t, m2.ID)
	m3 := d.g.say("D to A")
	a.message(t, m3.ID)
	c.message(t, m3.ID)
	for _, n := range []*testNode{a, c, d} {
		for _, id := range []string{m.ID, m2.ID, m3.ID} {
			if got := n.count(id); got > 1 {
				t.Errorf("node %s showed message %s %d times", n.name, id, got)
			}
		}
	}
	for _, n := range nodes {
		t.Logf("node %s:\n%s", n.name, n.out.String())
	}
}

// A node silenced for real (iptables drops its port's packets: no RST, no
// FIN, nothing) is evicted by its peers with a *liveness.Verdict within
// 2 s; the two left find each other and gossip on; after the heal, the
// silent node is reconnected. Runs as root in a private network namespace;
// skips elsewhere, saying why.
func TestSilentPeer(t *testing.T) {
	if err := partition.KernelSupport(); err != nil {
		t.Skip(err)
	}
	if !partition.Isolated(t) {
		return
	}
	cl := newCluster()
	a := cl.start(t, "A", 1)
	b := cl.start(t, "B", 1)
	c := cl.start(t, "C", 0) // dials nobody: all its connections use its own port
	a.g.keep(c.addr())
	b.g.keep(c.addr())
	for _, n := range []*testNode{a, b} {
		n.waitFor(t, n.name+" to learn the two others", func([]note) bool { return n.g.knownCount() == 2 })
	}
	m := a.g.say("through C")
	if got := b.message(t, m.ID); got.Hops != 2 {
		t.Fatalf("B got %+v, want 2 hops (through C)", got)
	}

	_, port, _ := net.SplitHostPort(c.addr())
	pn, _ := strconv.Atoi(port)
	cid := c.g.tn.ID()
	t0 := time.Now()
	heal, err := partition.DropPort(pn)
	if err != nil {
		t.Fatal(err)
	}
	defer heal()
	for _, n := range []*testNode{a, b} {
		var ev peer.Event
		n.waitFor(t, n.name+" to evict C", func(notes []note) bool {
			return n.find(notes, func(e peer.Event) bool {
				ev = e
				return e.Kind == peer.Disconnected && e.ID == cid
			})
		})
		var v *liveness.Verdict
		if !errors.As(ev.Cause, &v) {
			t.Fatalf("%s evicted C with %v, want a *liveness.Verdict", n.name, ev.Cause)
		}
		took := ev.Time.Sub(t0)
		t.Logf("%s evicted C %v after the partition: %v", n.name, took.Round(time.Millisecond), ev.Cause)
		if took > 2*time.Second {
			t.Errorf("%s took %v to evict a silent peer, bound 2 s", n.name, took)
		}
	}
	// Both dial each other (each has too few peers): wait until they have
	// settled on one connection.
	cl.waitFor(t, "A and B to connect", func() bool { return linked(a, b) })
	m2 := a.g.say("around C")
	if got := b.message(t, m2.ID); got.Hops != 1 {
		t.Fatalf("B got %+v, want 1 hop", got)
	}

	if err := heal(); err != nil {
		t.Fatal(err)
	}
	// Both reconnect C. (Waiting for both matters: a Keep still dialing
	// the silent port when its node closes outlives the close, for up to
	// its 5 s dial timeout, and goleak would see it.)
	t1 := time.Now()
	for _, n := range []*testNode{a, b} {
		n.waitFor(t, n.name+" to reconnect C after the heal", func(notes []note) bool {
			return n.find(notes, func(ev peer.Event) bool { return ev.Kind == peer.Connected && ev.ID == cid && ev.Reconnect })
		})
	}
	t.Logf("A and B reconnected C %v after the heal", time.Since(t1).Round(time.Millisecond))
	t.Logf("node A:\n%s", a.out.String())
}

// The command line: -h documents the flags.
func TestFlags(t *testing.T) {
	var out bytes.Buffer
	if _, err := parseFlags([]string{"-h"}, &out); !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("-h: %v", err)
	}
	for _, want := range []string{"-listen", "-peers", "-min-peers", "-advertise", "-heartbeat"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("-h does not mention %s", want)
		}
	}
	c, err := parseFlags([]string{"-listen", ":7101", "-peers", "h:7102, h:7103"}, &out)
	if err != nil || len(c.peers) != 2 || c.minPeers != 3 {
		t.Fatalf("%+v %v", c, err)
	}
}

// An advertised address with no host takes the one the connection came from.
func TestDialable(t *testing.T) {
	remote := &net.TCPAddr{IP: net.ParseIP("10.1.2.3"), Port: 50000}
	for in, want := range map[string]string{
		":7101":          "10.1.2.3:7101",
		"0.0.0.0:7101":   "10.1.2.3:7101",
		"[::]:7101":      "10.1.2.3:7101",
		"192.0.2.1:7101": "192.0.2.1:7101",
		"host:7101":      "host:7101",
		"nonsense":       "",
		"127.0.0.1:0":    "",
	} {
		if got := dialable(in, remote); got != want {
			t.Errorf("dialable(%q) = %q, want %q", in, got, want)
		}
	}
}

// cluster is the test's nodes, and a signal raised whenever any of them
// tells something, so that a test can wait for a condition on several
// nodes without sleeping.
type cluster struct {
	mu      sync.Mutex
	changed chan struct{}
}

func newCluster() *cluster { return &cluster{changed: make(chan struct{})} }

// waitFor waits until cond holds, re-checking it whenever a node tells
// something.
func (c *cluster) waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		c.mu.Lock()
		ch := c.changed
		c.mu.Unlock()
		if cond() {
			return
		}
		select {
		case <-ch:
		case <-timeout:
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// testNode is a node with what it printed and what it told.
type testNode struct {
	name string
	g    *node
	out  *syncBuffer
	c    *cluster
	// notes are guarded by c.mu
	notes []note
}

func (c *cluster) start(t *testing.T, name string, minPeers int) *testNode {
	t.Helper()
	n := &testNode{name: name, out: new(syncBuffer), c: c}
	g, err := start(config{listen: "127.0.0.1:0", name: name, minPeers: minPeers,
		out: n.out, events: n.out, notify: n.add})
	if err != nil {
		t.Fatal(err)
	}
	n.g = g
	t.Cleanup(g.close) // a second close, after the test's own, does nothing
	return n
}

func (n *testNode) addr() string { return n.g.tn.Addr().String() }

func (n *testNode) add(x note) {
	n.c.mu.Lock()
	n.notes = append(n.notes, x)
	close(n.c.changed)
	n.c.changed = make(chan struct{})
	n.c.mu.Unlock()
}

// waitFor waits until cond holds for the node's notes.
func (n *testNode) waitFor(t *testing.T, what string, cond func([]note) bool) {
	t.Helper()
	ok := false
	defer func() {
		if !ok {
			t.Logf("node %s printed:\n%s", n.name, n.out.String())
		}
	}()
	n.c.waitFor(t, what, func() bool {
		n.c.mu.Lock()
		notes := n.notes
		n.c.mu.Unlock()
		return cond(notes)
	})
	ok = true
}

func (n *testNode) find(notes []note, match func(peer.Event) bool) bool {
	for _, x := range notes {
		if x.kind == "event" && match(x.event) {
			return true
		}
	}
	return false
}

// message waits for the message with id and returns it.
func (n *testNode) message(t *testing.T, id string) message {
	t.Helper()
	var m message
	n.waitFor(t, fmt.Sprintf("node %s to get message %s", n.name, id), func(notes []note) bool {
		for _, x := range notes {
			if x.kind == "message" && x.msg.ID == id {
				m = x.msg
				return true
			}
		}
		return false
	})
	return m
}

// count is how many times the node showed the message with id.
func (n *testNode) count(id string) int {
	n.c.mu.Lock()
	defer n.c.mu.Unlock()
	c := 0
	for _, x := range n.notes {
		if x.kind == "message" && x.msg.ID == id {
			c++
		}
	}
	return c
}

// linked reports whether a and b hold references to each other over one
// and the same connection: when both dialed, each has settled on the same
// one of the two.
func linked(a, b *testNode) bool {
	pa, ok := a.g.tn.Peers().Get(b.g.tn.ID())
	if !ok {
		return false
	}
	pb, ok := b.g.tn.Peers().Get(a.g.tn.ID())
	return ok && pa.Conn().LocalAddr().String() == pb.Conn().RemoteAddr().String()
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
