package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/peer"
	"github.com/tetherrpc/tether/rpc"
)

// grid is the storage nodes and the client, all in this process on
// loopback, each a tether node with its own listener.
type grid struct {
	nodes   []*storageNode
	victim  int // index of the node that is silenced
	silence silencer
	index   map[peer.ID]int // storage node by ID

	client  *tether.Node
	dir     string // temporary: the client's log and incident directory
	logFile *os.File
	incDir  string
}

// storageNode serves shares and holds calls.
type storageNode struct {
	*tether.Node
	i       int
	id      peer.ID
	addr    string       // what the client dials (the proxy, for the victim in proxy mode)
	holding atomic.Int64 // "hold" handlers running

	mu  sync.Mutex
	rng *rand.Rand
}

const shareSize = 1024

// share is node i's share of key: deterministic, so readers can check it.
func share(i int, key []byte) []byte {
	b := make([]byte, shareSize)
	n := copy(b, fmt.Sprintf("share %d of %s|", i, key))
	for j := n; j < len(b); j++ {
		b[j] = byte(i*31 + j)
	}
	return b
}

// delay is the node's simulated storage time: 0.2 to 2 ms, seeded.
func (s *storageNode) delay() time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	return 200*time.Microsecond + time.Duration(s.rng.IntN(1800))*time.Microsecond
}

func (s *storageNode) serve() {
	s.Handle("share.get", rpc.Func(func(ctx context.Context, key []byte) ([]byte, error) {
		t := time.NewTimer(s.delay())
		defer t.Stop()
		select {
		case <-t.C:
			return share(s.i, key), nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}))
	// hold blocks until the caller gives up or the connection dies: the
	// calls kept outstanding on the node that will be silenced.
	s.Handle("hold", rpc.Func(func(ctx context.Context, _ []byte) ([]byte, error) {
		s.holding.Add(1)
		defer s.holding.Add(-1)
		<-ctx.Done()
		return nil, ctx.Err()
	}))
}

// newGrid starts the storage nodes and the client, which keeps every
// storage node connected (peer.Registry.Keep).
func newGrid(cfg Config) (g *grid, err error) {
	g = &grid{index: make(map[peer.ID]int)}
	defer func() {
		if err != nil {
			g.close()
		}
	}()
	rcfg := rpc.Config{MaxConcurrentCalls: max(rpc.DefaultMaxConcurrentCalls, cfg.Outstanding+4*cfg.Readers*cfg.Peers+64)}
	for i := range cfg.Peers {
		id := fmt.Sprintf("node-%d", i+1)
		n, err := tether.Listen("127.0.0.1:0",
			tether.WithHeartbeat(cfg.Heartbeat), tether.WithID(id), tether.WithRPCConfig(rcfg))
		if err != nil {
			return g, err
		}
		s := &storageNode{Node: n, i: i, id: peer.ID(id), addr: n.Addr().String(),
			rng: rand.New(rand.NewPCG(cfg.Seed, uint64(i)))}
		s.serve()
		g.nodes = append(g.nodes, s)
		g.index[s.id] = i
	}
	g.victim = rand.New(rand.NewPCG(cfg.Seed, 0x5eed)).IntN(cfg.Peers)
	v := g.nodes[g.victim]
	if g.silence, err = newSilencer(cfg.Mode, v.Addr().String()); err != nil {
		return g, err
	}
	v.addr = g.silence.dialAddr()

	// The client logs to a file (the terminal belongs to the progress
	// line) and writes incidents to a directory of its own.
	if g.dir, err = os.MkdirTemp("", "silentpartition-*"); err != nil {
		return g, err
	}
	g.incDir = filepath.Join(g.dir, "incidents")
	if err = os.Mkdir(g.incDir, 0o755); err != nil {
		return g, err
	}
	if g.logFile, err = os.Create(filepath.Join(g.dir, "client.log")); err != nil {
		return g, err
	}
	zl := zap.New(zapcore.NewCore(zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig()),
		zapcore.AddSync(g.logFile), zapcore.DebugLevel))
	g.client, err = tether.Listen("127.0.0.1:0",
		tether.WithHeartbeat(cfg.Heartbeat), tether.WithID("client"), tether.WithRPCConfig(rcfg),
		tether.WithLogger(zl), tether.WithIncidentDir(g.incDir))
	return g, err
}

// keep has the client keep every storage node connected; it returns the
// stops.
func (g *grid) keep() []func() {
	var stops []func()
	for _, s := range g.nodes {
		stops = append(stops, g.client.Peers().Keep(s.addr))
	}
	return stops
}

// refs returns the client's live references to storage nodes.
func (g *grid) refs() []*peer.Peer {
	all := g.client.Peers().List()
	out := all[:0]
	for _, p := range all {
		if _, ok := g.index[p.ID()]; ok {
			out = append(out, p)
		}
	}
	return out
}

// inFlight returns the client's calls awaiting an answer from each
// storage node's current reference.
func (g *grid) inFlight(into []int) []int {
	into = into[:0]
	for _, s := range g.nodes {
		n := 0
		if p, ok := g.client.Peers().Get(s.id); ok {
			n = p.Conn().Outstanding()
		}
		into = append(into, n)
	}
	return into
}

// closeClient closes the client node (flushing its log pipeline and
// incident recorder) and counts the incident files it wrote.
func (g *grid) closeClient() (incidents int, err error) {
	if g.client == nil {
		return 0, nil
	}
	g.client.Close()
	g.client = nil
	m, err := filepath.Glob(filepath.Join(g.incDir, "incident-*.json"))
	return len(m), err
}

// close closes everything left and removes the temporary directory.
func (g *grid) close() {
	g.closeClient()
	if g.silence != nil {
		g.silence.close() // heal first, so that goodbyes get through
	}
	var wg sync.WaitGroup
	for _, s := range g.nodes {
		wg.Add(1)
		go func() { defer wg.Done(); s.Close() }()
	}
	wg.Wait()
	if g.logFile != nil {
		g.logFile.Close()
	}
	if g.dir != "" {
		os.RemoveAll(g.dir)
	}
}
