package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/incident/logport"
	"github.com/tetherrpc/tether/peer"
)

// gatherer is one run: a tether node of its own that keeps the given
// addresses connected and gathers from each node behind them.
type gatherer struct {
	cfg    config
	n      *tether.Node
	ctx    context.Context // ends at close
	cancel context.CancelFunc
	unsub  func()
	stops  []func()

	mu       sync.Mutex
	nodes    map[peer.ID]*node
	stopped  bool
	overload *os.File       // DIR/overload.log, opened at the first notice
	wg       sync.WaitGroup // gather goroutines and the flusher
}

// node is what the gatherer knows of one node: its log file, where its
// stream got to, its incidents.
type node struct {
	id  string
	dir string // incidents go here

	sub sync.Mutex // one subscription at a time, across reconnections
	pos logport.Position

	mu       sync.Mutex // the file and the counters
	f        *os.File
	w        *bufio.Writer
	entries  uint64
	lost     uint64
	fetched  map[string]bool
	failures int
}

func newGatherer(cfg config) (*gatherer, error) {
	if err := os.MkdirAll(filepath.Join(cfg.out, "incidents"), 0o755); err != nil {
		return nil, err
	}
	n, err := tether.Listen(cfg.listen)
	if err != nil {
		return nil, err
	}
	g := &gatherer{cfg: cfg, n: n, nodes: make(map[peer.ID]*node)}
	g.ctx, g.cancel = context.WithCancel(context.Background())
	// The gatherer is an overload gatherer too: nodes may send it their
	// overload notices (logport.SendNotice).
	logport.HandleNotices(n, g.onNotice)
	// Every connection to a node we keep, the first and each reconnection,
	// arrives as a Connected event.
	g.unsub = n.Peers().Subscribe(g.onEvent)
	for _, addr := range cfg.addrs {
		g.stops = append(g.stops, n.Peers().Keep(addr))
	}
	g.wg.Add(1)
	go g.flusher()
	fmt.Fprintf(cfg.stderr, "gatherer: node %s gathering from %v into %s\n", n.ID(), cfg.addrs, cfg.out)
	return g, nil
}

func (g *gatherer) onEvent(ev peer.Event) {
	switch ev.Kind {
	case peer.Connected:
		if !ev.Peer.Dialed() || !slices.Contains(g.cfg.addrs, ev.Peer.Addr()) {
			return // someone dialed us: not a node we gather from
		}
		g.mu.Lock()
		defer g.mu.Unlock()
		if g.stopped {
			return
		}
		nd, err := g.nodeLocked(ev.ID)
		if err != nil {
			fmt.Fprintf(g.cfg.stderr, "gatherer: %v\n", err)
			return
		}
		what := "connected to"
		if ev.Reconnect {
			what = "reconnected to"
		}
		fmt.Fprintf(g.cfg.stderr, "gatherer: %s %s at %s\n", what, ev.ID, ev.Peer.Addr())
		g.wg.Add(2)
		go g.gather(ev.Peer, nd)
		go g.incidents(ev.Peer, nd)
	case peer.Disconnected:
		if ev.Peer.Dialed() && slices.Contains(g.cfg.addrs, ev.Peer.Addr()) {
			fmt.Fprintf(g.cfg.stderr, "gatherer: lost %s: %v\n", ev.ID, ev.Cause)
		}
	}
}

// nodeLocked returns the node's state, opening its log file the first time.
func (g *gatherer) nodeLocked(id peer.ID) (*node, error) {
	if nd := g.nodes[id]; nd != nil {
		return nd, nil
	}
	name := safeName(string(id))
	f, err := os.OpenFile(filepath.Join(g.cfg.out, name+".log"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	nd := &node{
		id:      string(id),
		dir:     filepath.Join(g.cfg.out, "incidents", name),
		f:       f,
		w:       bufio.NewWriterSize(f, 64<<10),
		fetched: make(map[string]bool),
	}
	g.nodes[id] = nd
	return nd, nil
}

// gather subscribes to the node's log stream over p until p dies or the
// gatherer stops. After a reconnection it resumes where the last
// subscription stopped.
func (g *gatherer) gather(p *peer.Peer, nd *node) {
	defer g.wg.Done()
	nd.sub.Lock() // the subscription on the dead reference may still be ending
	defer nd.sub.Unlock()
	if p.Err() != nil || g.ctx.Err() != nil {
		return
	}
	opts := []logport.SubscribeOption{logport.Window(g.cfg.window)}
	switch {
	case nd.pos != (logport.Position{}):
		opts = append(opts, logport.From(nd.pos))
	case !g.cfg.tail:
		opts = append(opts, logport.CatchUp())
	}
	opts = append(opts, logport.OnStart(func(pos logport.Position) {
		nd.note(map[string]any{"gatherer": "subscribed", "port_epoch": fmt.Sprint(pos.Epoch), "after_seq": pos.Seq})
		fmt.Fprintf(g.cfg.stderr, "gatherer: %s: subscribed after seq %d\n", nd.id, pos.Seq)
		g.emit(event{kind: "subscribed", node: nd.id, seq: pos.Seq})
	}))
	pos, err := logport.Subscribe(g.ctx, p, func(e logport.Entry) {
		nd.mu.Lock()
		if e.IsLoss() {
			nd.lost += e.Lost.N()
			nd.w.Write(e.Lost.AppendJSON(nil))
		} else {
			nd.entries++
			nd.w.Write(e.JSON)
		}
		nd.mu.Unlock()
		if e.IsLoss() {
			fmt.Fprintf(g.cfg.stderr, "gatherer: %s: %v\n", nd.id, e.Lost)
			g.emit(event{kind: "loss", node: nd.id, seq: e.Lost.Last})
		} else {
			g.emit(event{kind: "entry", node: nd.id, seq: e.Seq})
		}
	}, opts...)
	if pos.Epoch != 0 {
		nd.pos = pos
	}
	if g.ctx.Err() == nil {
		nd.note(map[string]any{"gatherer": "subscription ended", "error": fmt.Sprint(err)})
		fmt.Fprintf(g.cfg.stderr, "gatherer: %s: subscription ended at seq %d: %v\n", nd.id, pos.Seq, err)
	}
	g.emit(event{kind: "ended", node: nd.id, seq: pos.Seq, err: err})
}

// incidents fetches the node's incident files now and every
// cfg.incidentEvery while p lives.
func (g *gatherer) incidents(p *peer.Peer, nd *node) {
	defer g.wg.Done()
	t := time.NewTicker(g.cfg.incidentEvery)
	defer t.Stop()
	for {
		g.fetchNew(p, nd)
		select {
		case <-t.C:
		case <-p.Done():
			return
		case <-g.ctx.Done():
			return
		}
	}
}

func (g *gatherer) fetchNew(p *peer.Peer, nd *node) {
	ctx, cancel := context.WithTimeout(g.ctx, time.Minute)
	defer cancel()
	list, err := logport.ListIncidents(ctx, p)
	if err != nil {
		if ctx.Err() == nil && p.Err() == nil {
			fmt.Fprintf(g.cfg.stderr, "gatherer: %s: listing incidents: %v\n", nd.id, err)
		}
		return
	}
	for _, inc := range list {
		nd.mu.Lock()
		done := nd.fetched[inc.Name]
		nd.mu.Unlock()
		if done {
			continue
		}
		if err := fetchOne(ctx, p, nd.dir, inc); err != nil {
			if ctx.Err() == nil && p.Err() == nil {
				fmt.Fprintf(g.cfg.stderr, "gatherer: %s: fetching %s: %v\n", nd.id, inc.Name, err)
			}
			nd.mu.Lock()
			nd.failures++
			nd.mu.Unlock()
			continue
		}
		nd.mu.Lock()
		nd.fetched[inc.Name] = true
		nd.mu.Unlock()
		fmt.Fprintf(g.cfg.stderr, "gatherer: %s: fetched %s (%d bytes)\n", nd.id, inc.Name, inc.Size)
		g.emit(event{kind: "incident", node: nd.id, name: inc.Name})
	}
}

// fetchOne fetches an incident file into dir, unless a complete copy is
// there already; it writes a temporary file and renames it when complete.
func fetchOne(ctx context.Context, p *peer.Peer, dir string, inc logport.IncidentInfo) error {
	if !logport.ValidIncidentName(inc.Name) { // never trust a name from the network with a path
		return fmt.Errorf("refusing the name %q", inc.Name)
	}
	path := filepath.Join(dir, inc.Name)
	if fi, err := os.Stat(path); err == nil && fi.Size() == inc.Size {
		return nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, "."+inc.Name+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := logport.FetchIncident(ctx, p, inc.Name, tmp); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// onNotice appends an overload notice to DIR/overload.log.
func (g *gatherer) onNotice(from string, n logport.Notice) {
	b, _ := json.Marshal(map[string]any{"ts": n.Time, "node": from, "msg": n.String(), "dropped": n.Dropped, "peers": n.Peers, "stats": n.Stats})
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.stopped {
		return
	}
	if g.overload == nil {
		f, err := os.OpenFile(filepath.Join(g.cfg.out, "overload.log"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
		if err != nil {
			fmt.Fprintf(g.cfg.stderr, "gatherer: %v\n", err)
			return
		}
		g.overload = f
	}
	g.overload.Write(append(b, '\n'))
	fmt.Fprintf(g.cfg.stderr, "gatherer: overload notice from %s: %v\n", from, n)
	g.emit(event{kind: "overload", node: from, seq: n.Dropped})
}

// note writes a line of the gatherer's own into the node's log.
func (nd *node) note(m map[string]any) {
	m["ts"] = time.Now().UTC().Format(time.RFC3339Nano)
	b, _ := json.Marshal(m)
	nd.mu.Lock()
	nd.w.Write(append(b, '\n'))
	nd.mu.Unlock()
}

// flusher writes buffered lines out four times a second.
func (g *gatherer) flusher() {
	defer g.wg.Done()
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			g.flushAll()
		case <-g.ctx.Done():
			return
		}
	}
}

func (g *gatherer) flushAll() {
	g.mu.Lock()
	nodes := make([]*node, 0, len(g.nodes))
	for _, nd := range g.nodes {
		nodes = append(nodes, nd)
	}
	g.mu.Unlock()
	for _, nd := range nodes {
		nd.mu.Lock()
		nd.w.Flush()
		nd.mu.Unlock()
	}
}

func (g *gatherer) emit(ev event) {
	if g.cfg.notify != nil {
		g.cfg.notify(ev)
	}
}

// close stops everything, in order: no new subscriptions, the running ones
// ended, the node closed, the files flushed and closed, a summary printed.
func (g *gatherer) close() error {
	g.mu.Lock()
	g.stopped = true
	g.mu.Unlock()
	for _, stop := range g.stops {
		stop()
	}
	g.cancel()
	g.wg.Wait()
	g.unsub()
	g.n.Close()
	var first error
	if g.overload != nil {
		first = g.overload.Close()
	}
	for id, nd := range g.nodes {
		if err := nd.w.Flush(); err != nil && first == nil {
			first = err
		}
		if err := nd.f.Close(); err != nil && first == nil {
			first = err
		}
		fmt.Fprintf(g.cfg.stderr, "gatherer: %s: %d entries, %d lost, %d incidents\n", id, nd.entries, nd.lost, len(nd.fetched))
	}
	return first
}

// safeName keeps a node ID usable as a file name.
func safeName(s string) string {
	b := []byte(s)
	for i, c := range b {
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '-', c == '_':
		default:
			b[i] = '_'
		}
	}
	switch {
	case len(b) == 0:
		return "node"
	case len(b) > 100:
		b = b[:100]
	}
	return string(b)
}
