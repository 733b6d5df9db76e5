package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/tetherrpc/tether/internal/ttest"
	"github.com/tetherrpc/tether/internal/ttest/ttgossip"
	"github.com/tetherrpc/tether/liveness"
	"github.com/tetherrpc/tether/partition"
	"github.com/tetherrpc/tether/peer"
	"github.com/tetherrpc/tether/rpc"
)

// memberlist's Shutdown does not wait for a probe under way: it ends at
// the probe's timeout, up to a probe interval later, scaled up to eightfold
// by memberlist's health score (its awareness), which can outlast goleak's
// retries.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction("github.com/hashicorp/memberlist.(*Memberlist).probeNode"))
}

// Three nodes join a cluster as main joins them (-gossip, -seeds): A
// starts it, B and C join through A alone. Each comes to keep the other
// two connected, C and B included though neither was told the other's
// address, and a message from any node is shown once by each other one:
// the copy that arrives first, sent directly (1 hop) or forwarded by the
// third node (2 hops).
func TestCluster(t *testing.T) {
	g := newGroup()
	nodes := g.startAll(t, "A", "B", "C")
	for _, n := range nodes {
		members := n.g.cl.Load().Members()
		if len(members) != 2 {
			t.Fatalf("node %s has %d other members, want 2", n.name, len(members))
		}
		for _, m := range members {
			if !m.Kept {
				t.Errorf("node %s does not keep member %s", n.name, m.ID)
			}
		}
		if got := len(n.g.tn.Peers().List()); got != 2 {
			t.Errorf("node %s has %d peers, want 2", n.name, got)
		}
	}
	for i, from := range nodes {
		m := from.g.say("hello from " + from.name)
		for j, to := range nodes {
			if i == j {
				continue
			}
			if got := to.message(t, m.ID); got.Text != m.Text || got.Origin != from.name || got.Hops < 1 || got.Hops > 2 {
				t.Fatalf("node %s got %+v, want %q from %s in 1 or 2 hops", to.name, got, m.Text, from.name)
			}
		}
	}
	// A message is shown once, however many copies arrive: every node
	// forwards it once to every other, and here is one more from A to B.
	a, b := nodes[0], nodes[1]
	m := a.g.say("once")
	b.message(t, m.ID)
	pb, ok := a.g.tn.Peers().Get(b.g.tn.ID())
	if !ok {
		t.Fatal("A has no reference to B")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := pb.Call(ctx, methodGossip, message{ID: m.ID, Origin: "A", Hops: 1, Text: m.Text}, nil); err != nil {
		t.Fatal(err)
	}
	nodes[2].message(t, m.ID)
	for _, n := range nodes[1:] {
		if got := n.count(m.ID); got != 1 {
			t.Errorf("node %s showed the message %d times", n.name, got)
		}
	}
	for _, n := range nodes {
		t.Logf("node %s:\n%s", n.name, n.out.String())
	}
}

// B leaves, as on Ctrl-C: A and C evict it at once (its goodbye:
// rpc.ErrPeerLeft), the cluster lets it go (no one redials it), and
// gossip flows on between the two left. A node started afterwards through
// the same seed is connected to both.
func TestLeave(t *testing.T) {
	g := newGroup()
	nodes := g.startAll(t, "A", "B", "C")
	a, b, c := nodes[0], nodes[1], nodes[2]
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
	for _, n := range []*testNode{a, c} {
		ttest.WaitFor(t, 10*time.Second, func() bool {
			kept, live := n.g.tn.Peers().KeptReachable()
			return len(n.g.cl.Load().Members()) == 1 && kept == 1 && live == 1
		}, n.name+" to let B go")
		// The line comes with the event of B's current connection, which
		// may follow the registry's state (and, when a connection replaced
		// at start was still retiring, that connection's event). It is
		// printed before the event is told, so the wait needs no polling.
		n.waitFor(t, "node "+n.name+" to say B left", func([]note) bool { return strings.Contains(n.out.String(), "left") })
	}
	m := c.g.say("C, B gone")
	a.message(t, m.ID)

	d := g.start(t, "D", a.gossip())
	g.settle(t, []*testNode{a, c, d})
	m2 := d.g.say("D here")
	a.message(t, m2.ID)
	c.message(t, m2.ID)
}

// A node silenced for real (iptables drops every packet of its tether
// connections: no RST, no FIN, nothing; its gossip still flows) is evicted
// by its peers with a *liveness.Verdict within 2 s, the two left gossip
// on, and after the heal the silent node is reconnected: it is still a
// member, so they redial it with backoff meanwhile. Runs as root in a
// private network namespace; skips elsewhere, saying why.
func TestSilentPeer(t *testing.T) {
	if err := partition.KernelSupport(); err != nil {
		t.Skip(err)
	}
	if !partition.Isolated(t) {
		return
	}
	g := newGroup()
	a := g.start(t, "A")
	b := g.start(t, "B", a.gossip())
	// C's connections all use ports the partition can drop. Its ID is
	// larger than any random one, so that the connections A and B keep to
	// it are those they dialed, to its listening port (of two connections
	// a pair dialed, both keep the one the smaller ID dialed); and it
	// dials through a proxy of its own for each peer, so that its redials
	// during the partition are silent too.
	pd := &proxyDialer{proxies: make(map[string]*partition.Proxy)}
	t.Cleanup(pd.close) // after C's close
	c := g.startWith(t, "C", strings.Repeat("z", 26), pd.dial, a.gossip())
	g.settle(t, []*testNode{a, b, c})
	m := a.g.say("before")
	b.message(t, m.ID)
	c.message(t, m.ID)

	_, port, _ := net.SplitHostPort(c.addr())
	pn, _ := strconv.Atoi(port)
	var heals []func() error
	defer func() {
		for _, h := range heals {
			h()
		}
	}()
	cid := c.g.tn.ID()
	t0 := time.Now()
	for _, p := range append(pd.ports(), pn) {
		heal, err := partition.DropPort(p)
		if err != nil {
			t.Fatal(err)
		}
		heals = append(heals, heal)
	}
	for _, n := range []*testNode{a, b} {
		var ev peer.Event
		n.waitFor(t, n.name+" to evict C", func(notes []note) bool {
			return n.find(notes, func(e peer.Event) bool {
				ev = e
				// (not a duplicate connection retired late, after the
				// partition began)
				return e.Kind == peer.Disconnected && e.ID == cid && e.Time.After(t0) && !replaced(e.Cause)
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
	m2 := a.g.say("without C")
	b.message(t, m2.ID)

	t1 := time.Now()
	for _, h := range heals {
		if err := h(); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range []*testNode{a, b} {
		n.waitFor(t, n.name+" to reconnect C after the heal", func(notes []note) bool {
			return n.find(notes, func(ev peer.Event) bool {
				return ev.Kind == peer.Connected && ev.ID == cid && ev.Time.After(t1)
			})
		})
	}
	t.Logf("A and B reconnected C %v after the heal", time.Since(t1).Round(time.Millisecond))
	// Every keeper has reconnected, so that none is left dialing a port
	// that was silent when the nodes close (goleak would see it).
	g.settle(t, []*testNode{a, b, c})
	m3 := c.g.say("C is back")
	a.message(t, m3.ID)
	b.message(t, m3.ID)
	t.Logf("node A:\n%s", a.out.String())
}

// The command line: -h documents the flags, and a bad secret is refused.
func TestFlags(t *testing.T) {
	var out bytes.Buffer
	if _, err := parseFlags([]string{"-h"}, &out); !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("-h: %v", err)
	}
	for _, want := range []string{"-listen", "-gossip", "-seeds", "-secret", "-advertise", "-heartbeat"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("-h does not mention %s", want)
		}
	}
	c, err := parseFlags([]string{"-listen", ":7101", "-gossip", ":7201", "-seeds", "h:7202, h:7203", "-secret", strings.Repeat("ab", 16)}, &out)
	if err != nil || len(c.seeds) != 2 || c.gossip != ":7201" || len(c.secret) != 16 {
		t.Fatalf("%+v %v", c, err)
	}
	for _, bad := range []string{"xyz", "abcd"} {
		if _, err := parseFlags([]string{"-secret", bad}, io.Discard); err == nil {
			t.Errorf("-secret %s accepted", bad)
		}
	}
}

// proxyDialer dials every address through a proxy of its own on loopback,
// made at the first dial, so that all of a node's outgoing connections use
// the proxies' ports.
type proxyDialer struct {
	mu      sync.Mutex
	proxies map[string]*partition.Proxy
}

func (d *proxyDialer) dial(ctx context.Context, addr string) (net.Conn, error) {
	d.mu.Lock()
	p := d.proxies[addr]
	if p == nil {
		var err error
		if p, err = partition.NewProxy(addr); err != nil {
			d.mu.Unlock()
			return nil, err
		}
		d.proxies[addr] = p
	}
	d.mu.Unlock()
	var nd net.Dialer
	return nd.DialContext(ctx, "tcp", p.Addr())
}

// ports are the proxies' ports.
func (d *proxyDialer) ports() []int {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []int
	for _, p := range d.proxies {
		_, port, _ := net.SplitHostPort(p.Addr())
		n, _ := strconv.Atoi(port)
		out = append(out, n)
	}
	return out
}

func (d *proxyDialer) close() {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, p := range d.proxies {
		p.Close()
	}
}

// group is the test's nodes, and a signal raised whenever any of them
// tells something, so that a test can wait for a condition on several
// nodes without sleeping.
type group struct {
	mu      sync.Mutex
	changed chan struct{}
}

func newGroup() *group { return &group{changed: make(chan struct{})} }

// waitFor waits until cond holds, re-checking it whenever a node tells
// something.
func (c *group) waitFor(t *testing.T, what string, cond func() bool) {
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
	c    *group
	// notes are guarded by c.mu
	notes []note
}

// start starts a node on loopback, joined through seeds (none: it starts
// a cluster), as main starts one.
func (c *group) start(t *testing.T, name string, seeds ...string) *testNode {
	t.Helper()
	return c.startWith(t, name, "", nil, seeds...)
}

// startWith is start with the node's ID ("": a random one) and dialer
// (nil: TCP).
func (c *group) startWith(t *testing.T, name, id string, dial func(context.Context, string) (net.Conn, error), seeds ...string) *testNode {
	t.Helper()
	n := &testNode{name: name, out: new(syncBuffer), c: c}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	g, err := start(ctx, config{listen: "127.0.0.1:0", gossip: "127.0.0.1:0", seeds: seeds, name: name,
		out: n.out, events: n.out, notify: n.add, memberlist: ttgossip.Config(), dial: dial, id: id})
	if err != nil {
		t.Fatal(err)
	}
	n.g = g
	t.Cleanup(g.close) // a second close, after the test's own, does nothing
	return n
}

// startAll starts a node for each name, the first starting the cluster
// and the others joining through it, and waits until they have settled.
func (c *group) startAll(t *testing.T, names ...string) []*testNode {
	t.Helper()
	var nodes []*testNode
	for i, name := range names {
		var seeds []string
		if i > 0 {
			seeds = []string{nodes[0].gossip()}
		}
		nodes = append(nodes, c.start(t, name, seeds...))
	}
	c.settle(t, nodes)
	return nodes
}

// settle waits until each of nodes keeps every other connected, over one
// connection per pair.
func (c *group) settle(t *testing.T, nodes []*testNode) {
	t.Helper()
	for i, n := range nodes {
		ttest.WaitFor(t, 10*time.Second, func() bool {
			kept, live := n.g.tn.Peers().KeptReachable()
			return kept == len(nodes)-1 && live == kept
		}, "node "+n.name+" to keep the others connected")
		for _, o := range nodes[i+1:] {
			ttest.WaitFor(t, 10*time.Second, func() bool { return linked(n, o) }, fmt.Sprintf("%s and %s to settle on one connection", n.name, o.name))
		}
	}
}

func (n *testNode) addr() string { return n.g.tn.Addr().String() }

func (n *testNode) gossip() string { return n.g.cl.Load().GossipAddr() }

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

// linked reports whether a and b hold live references to each other over
// one and the same connection: when both dialed, each has settled on the
// same one of the two, which one of them dialed and the other accepted.
// (The connection's addresses do not tell: a proxy may stand between.)
func linked(a, b *testNode) bool {
	pa, ok := a.g.tn.Peers().Get(b.g.tn.ID())
	if !ok || pa.Err() != nil {
		return false
	}
	pb, ok := b.g.tn.Peers().Get(a.g.tn.ID())
	return ok && pb.Err() == nil && pa.Dialed() != pb.Dialed()
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
