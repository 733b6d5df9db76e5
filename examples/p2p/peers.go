package main

import (
	"context"
	"net"

	"github.com/tetherrpc/tether/peer"
	"github.com/tetherrpc/tether/rpc"
)

// Peer exchange: on every new connection both ends send each other their
// own address and every address they know, and whenever a node learns of a
// node it did not know, it tells its other peers. So every node comes to
// know every other one reachable, and a node left with fewer than
// config.minPeers live peers keeps learnt addresses connected until it has
// enough again: a line whose middle node dies heals itself.

// peerList is what p2p.peers carries, each way.
type peerList struct {
	Addr  string     // the sender's advertised address (an empty or unspecified host: the one the receiver sees)
	Known []peerAddr // the nodes the sender knows of
}

type peerAddr struct {
	ID   peer.ID
	Addr string
}

const maxKnown = 1000 // sent in one exchange, and remembered

// keep keeps addr connected for as long as the node runs, redialling with
// backoff whenever it is lost.
func (g *node) keep(addr string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.kept[addr] != nil || addr == g.self {
		return
	}
	g.kept[addr] = g.tn.Peers().Keep(addr)
}

// notSelf stops keeping addr, found to be this node's own address under
// another name (":7101" and "127.0.0.1:7101", say): tether would connect
// the node to itself, and redial it each time the loop closes.
func (g *node) notSelf(addr string) {
	g.mu.Lock()
	stop := g.kept[addr]
	g.kept[addr] = func() {} // never again
	g.mu.Unlock()
	if stop != nil {
		stop()
	}
}

// exchange sends p what this node knows and learns what p knows.
func (g *node) exchange(ctx context.Context, p *peer.Peer) {
	ctx, cancel := context.WithTimeout(ctx, callLimit)
	defer cancel()
	var reply peerList
	if err := p.Call(ctx, methodPeers, g.list(), &reply); err != nil {
		return // the peer is gone or going: its eviction is shown
	}
	g.learn(p.ID(), p.Conn().RemoteAddr(), reply)
}

// servePeers answers an exchange.
func (g *node) servePeers(ctx context.Context, req peerList) (peerList, error) {
	c := rpc.FromContext(ctx)
	g.learn(peer.ID(c.RemoteID()), c.RemoteAddr(), req)
	return g.list(), nil
}

func (g *node) list() peerList {
	g.mu.Lock()
	defer g.mu.Unlock()
	l := peerList{Addr: g.self}
	for id, a := range g.known {
		if len(l.Known) == maxKnown {
			break
		}
		l.Known = append(l.Known, peerAddr{ID: id, Addr: a})
	}
	return l
}

// learn takes in what peer from (at remote) says: its own address, first
// hand, and the nodes it knows of, second hand (they never override what
// this node knows already). News is passed on to the other peers.
func (g *node) learn(from peer.ID, remote net.Addr, l peerList) {
	me := g.tn.ID()
	var news []peerAddr
	g.mu.Lock()
	if a := dialable(l.Addr, remote); a != "" && g.known[from] != a && from != me {
		g.known[from] = a
		news = append(news, peerAddr{from, a})
	}
	for _, k := range l.Known {
		if _, ok := g.known[k.ID]; !ok && k.ID != me && k.ID != "" && k.Addr != "" && len(g.known) < maxKnown {
			g.known[k.ID] = k.Addr
			news = append(news, k)
		}
	}
	g.mu.Unlock()
	if len(news) == 0 {
		return
	}
	g.tell(note{kind: "learnt"})
	for _, p := range g.tn.Peers().List() {
		if p.ID() != from {
			g.goFn(func(ctx context.Context) { g.exchange(ctx, p) })
		}
	}
	g.topUp(from)
}

// topUp keeps learnt addresses connected while the node has fewer than
// minPeers live peers. talking, if not empty, is a peer this node is
// talking to now, so live whether or not the registry has it yet (a peer's
// call can arrive before this side's registry has added its connection).
// It counts live peers only, so a burst of calls may start a dial or two
// more than needed: minPeers is a floor.
func (g *node) topUp(talking peer.ID) {
	reg := g.tn.Peers()
	live := len(reg.List())
	if _, ok := reg.Get(talking); talking != "" && !ok {
		live++
	}
	need := g.cfg.minPeers - live
	if need <= 0 {
		return
	}
	var add []string
	g.mu.Lock()
	if g.closed {
		g.mu.Unlock()
		return
	}
	for id, a := range g.known {
		if len(add) == need {
			break
		}
		if g.kept[a] != nil {
			continue
		}
		if _, ok := reg.Get(id); ok {
			continue
		}
		add = append(add, a)
	}
	g.mu.Unlock()
	for _, a := range add {
		g.printf(g.cfg.events, "* too few peers (want %d): keeping %s connected\n", g.cfg.minPeers, a)
		g.keep(a)
	}
}

// knownCount is how many other nodes this node knows the address of.
func (g *node) knownCount() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.known)
}

// dialable turns an advertised address into one to dial: an empty or
// unspecified host (a node listening on ":7101") becomes the host the
// connection came from. It returns "" for an address that is no address.
func dialable(advertised string, remote net.Addr) string {
	host, port, err := net.SplitHostPort(advertised)
	if err != nil || port == "" || port == "0" {
		return ""
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		ta, ok := remote.(*net.TCPAddr)
		if !ok {
			return ""
		}
		host = ta.IP.String()
	}
	return net.JoinHostPort(host, port)
}
