package main

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
	"go.uber.org/zap"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/cluster"
	"github.com/tetherrpc/tether/peer"
	"github.com/tetherrpc/tether/rpc"
)

// config is what a node needs; main fills it from flags, tests directly.
type config struct {
	listen    string
	advertise string        // the tether address other members dial; default the listen address
	gossip    string        // the cluster's gossip address, UDP and TCP
	seeds     []string      // gossip addresses of members to join through; none starts a cluster
	secret    []byte        // the cluster's key; none gossips in the clear
	name      string        // shown as the origin of this node's messages; default the address
	heartbeat time.Duration // 0: tether's default, 250 ms
	out       io.Writer     // messages received
	events    io.Writer     // peer events
	logger    *zap.Logger   // tether's own log lines; nil for none
	notify    func(note)    // tests watch through it; may be nil
	// memberlist, if not nil, is the gossip's configuration (its timings);
	// default memberlist's for one machine on a loopback -gossip address,
	// for a LAN otherwise.
	memberlist *memberlist.Config
	dial       func(ctx context.Context, addr string) (net.Conn, error) // tests: how the node dials; nil for TCP
	id         string                                                   // tests: the node's ID; "" for a random one
}

// note is something that happened, told to config.notify.
type note struct {
	kind  string     // "message" or "event"
	msg   message    // message: what arrived (first copy only)
	from  peer.ID    // message: the neighbour it came from
	event peer.Event // event
}

// message is one line of gossip.
type message struct {
	ID     string // random; a node handles each ID once
	Origin string // the name of the node that said it
	Hops   int    // links travelled: 1 at a neighbour of the origin
	Text   string
}

const (
	methodGossip = "p2p.gossip" // message -> struct{}

	maxHops   = 16      // a message is not forwarded further
	maxSeen   = 1 << 16 // message IDs remembered for de-duplication
	callLimit = 5 * time.Second
	leaveWait = 5 * time.Second // bound on telling the cluster this node leaves
)

// node is one gossip node: a tether node, its membership in the cluster,
// and the message IDs it has seen.
type node struct {
	cfg config
	tn  *tether.Node
	cl  atomic.Pointer[cluster.Cluster] // set once joined

	ctx    context.Context // ends at close: cancels the calls in flight
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu     sync.Mutex
	closed bool
	seen   map[string]struct{}
	order  []string           // seen IDs, oldest first, to forget them in turn
	up     map[peer.ID]bool   // peers shown as connected
	addrs  map[peer.ID]string // members' advertised addresses, as shown

	outMu sync.Mutex // one line at a time on out and events
}

// start starts a node and joins the cluster through cfg.seeds (none: it
// starts one). The cluster keeps the other members connected, and lets go
// of those that leave or that the gossip declares dead.
func start(ctx context.Context, cfg config) (*node, error) {
	opts := []tether.Option{tether.WithLogger(cfg.logger), tether.WithHeartbeat(cfg.heartbeat)}
	if cfg.dial != nil {
		opts = append(opts, tether.WithDialer(cfg.dial))
	}
	if cfg.id != "" {
		opts = append(opts, tether.WithID(cfg.id))
	}
	tn, err := tether.Listen(cfg.listen, opts...)
	if err != nil {
		return nil, err
	}
	g := &node{
		cfg:   cfg,
		tn:    tn,
		seen:  make(map[string]struct{}),
		up:    make(map[peer.ID]bool),
		addrs: make(map[peer.ID]string),
	}
	if g.cfg.name == "" {
		g.cfg.name = cmp.Or(cfg.advertise, tn.Addr().String())
	}
	g.ctx, g.cancel = context.WithCancel(context.Background())
	tn.Handle(methodGossip, rpc.Typed(g.serveGossip))
	tn.Peers().Subscribe(g.onEvent)
	cc := cluster.Config{
		Seeds:      cfg.seeds,
		BindAddr:   cfg.gossip,
		Advertise:  cfg.advertise,
		Secret:     cfg.secret,
		Insecure:   len(cfg.secret) == 0,
		Memberlist: cfg.memberlist,
	}
	if cc.Memberlist == nil && isLoopback(cfg.gossip) {
		cc.Memberlist = memberlist.DefaultLocalConfig()
	}
	cl, err := cluster.Join(ctx, tn, cc)
	if err != nil {
		g.cancel()
		tn.Close()
		return nil, err
	}
	g.cl.Store(cl)
	return g, nil
}

// isLoopback reports whether addr's host is a loopback address, where
// memberlist's timings for one machine fit.
func isLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	ip := net.ParseIP(host)
	return err == nil && ip != nil && ip.IsLoopback()
}

// close leaves the cluster (the other members let this node go at once,
// rather than after declaring it dead), says goodbye to every peer (they
// evict this node at once) and stops, cancelling the calls in flight. A
// second close does nothing.
func (g *node) close() {
	g.mu.Lock()
	was := g.closed
	g.closed = true
	g.mu.Unlock()
	if was {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), leaveWait)
	g.cl.Load().Leave(ctx)
	cancel()
	g.cancel()
	g.wg.Wait()
	g.tn.Close()
}

// goFn runs fn on a goroutine of its own, unless the node is closing; close
// cancels its context and waits for it.
func (g *node) goFn(fn func(ctx context.Context)) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return
	}
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		fn(g.ctx)
	}()
}

// say gossips text to every peer.
func (g *node) say(text string) message {
	var id [8]byte
	rand.Read(id[:])
	m := message{ID: hex.EncodeToString(id[:]), Origin: g.cfg.name, Text: text}
	g.firstSight(m.ID)
	g.forward(m, "")
	return m
}

// serveGossip takes a message from a neighbour: the first copy is shown
// and forwarded once to every other neighbour; later copies are dropped.
func (g *node) serveGossip(ctx context.Context, m message) (struct{}, error) {
	from := peer.ID(rpc.FromContext(ctx).RemoteID())
	if !g.firstSight(m.ID) {
		return struct{}{}, nil
	}
	hops := "hops"
	if m.Hops == 1 {
		hops = "hop"
	}
	g.printf(g.cfg.out, "%s (%d %s, via %s): %s\n", m.Origin, m.Hops, hops, g.who(from, ""), m.Text)
	g.tell(note{kind: "message", msg: m, from: from})
	if m.Hops < maxHops {
		g.forward(m, from)
	}
	return struct{}{}, nil
}

// forward sends m, one hop further, to every live peer but except. It
// does not wait: a slow or dead peer holds up nobody, and a dead one's
// eviction is shown when it happens.
func (g *node) forward(m message, except peer.ID) {
	m.Hops++
	for _, p := range g.tn.Peers().List() {
		if p.ID() == except {
			continue
		}
		g.goFn(func(ctx context.Context) {
			ctx, cancel := context.WithTimeout(ctx, callLimit)
			defer cancel()
			err := p.Call(ctx, methodGossip, m, nil)
			// Two nodes that dial each other at once keep one connection
			// of the two: a call on the other fails, and goes again on
			// the one kept.
			if errors.Is(err, rpc.ErrDeadReference) {
				if q, ok := g.tn.Peers().Get(p.ID()); ok && q != p {
					q.Call(ctx, methodGossip, m, nil)
				}
			}
		})
	}
}

// firstSight records id and reports whether it is new.
func (g *node) firstSight(id string) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if _, ok := g.seen[id]; ok {
		return false
	}
	g.seen[id] = struct{}{}
	g.order = append(g.order, id)
	if len(g.order) > maxSeen {
		delete(g.seen, g.order[0])
		g.order = g.order[1:]
	}
	return true
}

// onEvent shows peer events as they happen. It runs on the registry's
// event goroutine, so it only prints, never waits.
func (g *node) onEvent(ev peer.Event) {
	who := g.who(ev.ID, ev.Peer.Addr())
	// When two members dial each other at once, both keep one connection
	// and close the other: a second Connected, and a Disconnected for a
	// connection replaced by another to the same peer (cause
	// peer.ErrReplaced, or on the far side its goodbye, or just EOF),
	// which may come before this side has the other connection. Those are
	// not shown.
	cur, live := g.tn.Peers().Get(ev.ID)
	duplicate := ev.Kind == peer.Disconnected && (live && cur != ev.Peer || replaced(ev.Cause))
	g.mu.Lock()
	wasUp, seen := g.up[ev.ID]
	switch {
	case ev.Kind == peer.Connected:
		g.up[ev.ID] = true
	case ev.Kind == peer.Disconnected && !duplicate:
		g.up[ev.ID] = false
	}
	g.mu.Unlock()

	switch ev.Kind {
	case peer.Connected:
		switch {
		case wasUp:
		case seen:
			g.printf(g.cfg.events, "* %s reconnected\n", who)
		default:
			g.printf(g.cfg.events, "* %s connected\n", who)
		}
	case peer.Disconnected:
		switch {
		case duplicate:
		case errors.Is(ev.Cause, rpc.ErrClosed), errors.Is(ev.Cause, cluster.ErrLeft):
			g.printf(g.cfg.events, "* %s disconnected: this node is leaving\n", who)
		case errors.Is(ev.Cause, rpc.ErrPeerLeft):
			g.printf(g.cfg.events, "* %s left\n", who)
		case ev.Calls > 0:
			g.printf(g.cfg.events, "* %s evicted: %v (%d calls failed at once)\n", who, ev.Cause, ev.Calls)
		default:
			g.printf(g.cfg.events, "* %s evicted: %v\n", who, ev.Cause)
		}
	case peer.Suspected:
		g.printf(g.cfg.events, "* %s suspected: overdue\n", who)
	case peer.Recovered:
		g.printf(g.cfg.events, "* %s answers again\n", who)
	}
	g.tell(note{kind: "event", event: ev})
}

// replaced reports whether a connection ended because another to the same
// peer replaced it, here (peer.ErrReplaced) or at the peer: its goodbye
// (rpc.ErrPeerLeft) carries its cause as text only.
func replaced(cause error) bool {
	return errors.Is(cause, peer.ErrReplaced) ||
		errors.Is(cause, rpc.ErrPeerLeft) && strings.Contains(cause.Error(), peer.ErrReplaced.Error())
}

// who names a peer in the output: the start of its ID, and the address it
// advertises in the cluster (remembered after it is gone), else addr.
func (g *node) who(id peer.ID, addr string) string {
	if _, a, ok := strings.Cut(addr, "@"); ok { // the address a member is dialed at, "ID@host:port"
		addr = a
	}
	if cl := g.cl.Load(); cl != nil {
		for _, m := range cl.Members() {
			if m.ID == id {
				g.mu.Lock()
				g.addrs[id] = m.Addr
				g.mu.Unlock()
				break
			}
		}
	}
	g.mu.Lock()
	if a := g.addrs[id]; a != "" {
		addr = a
	}
	g.mu.Unlock()
	s := string(id)
	if len(s) > 8 {
		s = s[:8]
	}
	if addr == "" {
		return "peer " + s
	}
	return fmt.Sprintf("peer %s (%s)", s, addr)
}

func (g *node) printf(w io.Writer, format string, args ...any) {
	if w == nil {
		return
	}
	g.outMu.Lock()
	defer g.outMu.Unlock()
	fmt.Fprintf(w, time.Now().Format("15:04:05.000 ")+format, args...)
}

func (g *node) tell(n note) {
	if g.cfg.notify != nil {
		g.cfg.notify(n)
	}
}
