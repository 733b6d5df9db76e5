package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/peer"
	"github.com/tetherrpc/tether/rpc"
)

// config is what a node needs; main fills it from flags, tests directly.
type config struct {
	listen    string
	advertise string        // the address peers should dial; default the listen address
	peers     []string      // addresses to keep connected from the start
	name      string        // shown as the origin of this node's messages; default the address
	minPeers  int           // below this many live peers, keep learnt addresses too
	heartbeat time.Duration // 0: tether's default, 250 ms
	out       io.Writer     // messages received
	events    io.Writer     // peer events
	logger    *zap.Logger   // tether's own log lines; nil for none
	notify    func(note)    // tests watch through it; may be nil
}

// note is something that happened, told to config.notify.
type note struct {
	kind  string     // "message", "event" or "learnt"
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
	methodPeers  = "p2p.peers"  // peerList -> peerList

	maxHops   = 16      // a message is not forwarded further
	maxSeen   = 1 << 16 // message IDs remembered for de-duplication
	callLimit = 5 * time.Second
)

// node is one gossip node: a tether node, the addresses it has learnt,
// and the message IDs it has seen.
type node struct {
	cfg  config
	tn   *tether.Node
	self string // advertised address

	ctx    context.Context // ends at close: cancels the calls in flight
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu     sync.Mutex
	closed bool
	seen   map[string]struct{}
	order  []string           // seen IDs, oldest first, to forget them in turn
	known  map[peer.ID]string // every node heard of: its advertised address
	kept   map[string]func()  // addresses this node keeps connected: Keep's stop
	up     map[peer.ID]bool   // peers shown as connected

	outMu sync.Mutex // one line at a time on out and events
}

// start starts a node and keeps cfg.peers connected.
func start(cfg config) (*node, error) {
	tn, err := tether.Listen(cfg.listen, tether.WithLogger(cfg.logger), tether.WithHeartbeat(cfg.heartbeat))
	if err != nil {
		return nil, err
	}
	g := &node{
		cfg:   cfg,
		tn:    tn,
		self:  cfg.advertise,
		seen:  make(map[string]struct{}),
		known: make(map[peer.ID]string),
		kept:  make(map[string]func()),
		up:    make(map[peer.ID]bool),
	}
	if g.self == "" {
		g.self = tn.Addr().String()
	}
	if g.cfg.name == "" {
		g.cfg.name = g.self
	}
	g.ctx, g.cancel = context.WithCancel(context.Background())
	tn.Handle(methodGossip, rpc.Typed(g.serveGossip))
	tn.Handle(methodPeers, rpc.Typed(g.servePeers))
	tn.Peers().Subscribe(g.onEvent)
	for _, a := range cfg.peers {
		g.keep(a)
	}
	return g, nil
}

// close says goodbye to every peer (they evict this node at once) and
// stops, cancelling the calls in flight.
func (g *node) close() {
	g.mu.Lock()
	g.closed = true
	g.mu.Unlock()
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

// onEvent shows peer events as they happen, exchanges addresses with each
// new peer, and looks for more peers when too few are left. It runs on the
// registry's event goroutine, so it only starts work, never waits for it.
func (g *node) onEvent(ev peer.Event) {
	if ev.ID == g.tn.ID() { // connected to itself: an address of its own in -peers
		if ev.Kind == peer.Connected && ev.Peer.Dialed() {
			g.printf(g.cfg.events, "* %s is this node's own address: not kept\n", ev.Peer.Addr())
			g.notSelf(ev.Peer.Addr())
		}
		return
	}
	who := g.who(ev.ID, ev.Peer.Addr())
	// When two nodes dial each other at once, both keep one connection
	// and close the other: a second Connected, and a Disconnected (cause
	// peer.ErrReplaced, or on the far side just EOF) for a peer that is
	// still connected. Those are not shown.
	cur, live := g.tn.Peers().Get(ev.ID)
	duplicate := ev.Kind == peer.Disconnected && live && cur != ev.Peer
	g.mu.Lock()
	wasUp := g.up[ev.ID]
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
		case ev.Reconnect:
			g.printf(g.cfg.events, "* %s reconnected\n", who)
		case !wasUp:
			g.printf(g.cfg.events, "* %s connected\n", who)
		}
		g.goFn(func(ctx context.Context) { g.exchange(ctx, ev.Peer) })
	case peer.Disconnected:
		switch {
		case duplicate, errors.Is(ev.Cause, peer.ErrReplaced):
		case errors.Is(ev.Cause, rpc.ErrClosed):
			g.printf(g.cfg.events, "* %s disconnected: this node is closing\n", who)
		case ev.Calls > 0:
			g.printf(g.cfg.events, "* %s evicted: %v (%d calls failed at once)\n", who, ev.Cause, ev.Calls)
		default:
			g.printf(g.cfg.events, "* %s evicted: %v\n", who, ev.Cause)
		}
		g.topUp("")
	case peer.Suspected:
		g.printf(g.cfg.events, "* %s suspected: overdue\n", who)
	case peer.Recovered:
		g.printf(g.cfg.events, "* %s answers again\n", who)
	}
	g.tell(note{kind: "event", event: ev})
}

// who names a peer in the output: the start of its ID, and the address it
// can be dialed at if known, else addr.
func (g *node) who(id peer.ID, addr string) string {
	g.mu.Lock()
	if a := g.known[id]; a != "" {
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
