package scale

import (
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/peer"
	"github.com/tetherrpc/tether/rpc"
)

// Tether is tether's System: the server is a tether.Node (tether.Listen)
// with its default configuration plus opts, a logger that counts lines at
// Warn and above, and an incident directory of its own (so that incident
// files can be counted); the peers are bare rpc.Client connections, which
// answer the node's probes and do nothing else.
func Tether(opts ...tether.Option) System { return tetherSystem{opts: opts} }

type tetherSystem struct{ opts []tether.Option }

func (tetherSystem) Name() string { return "tether" }

func (s tetherSystem) Serve() (Server, error) {
	dir, err := os.MkdirTemp("", "tether-scale-incidents-")
	if err != nil {
		return nil, err
	}
	ts := &tetherServer{dir: dir, peers: map[int]*tetherPeer{}}
	zl := zap.New(&countCore{n: &ts.warn})
	opts := append([]tether.Option{tether.WithLogger(zl), tether.WithIncidentDir(dir)}, s.opts...)
	n, err := tether.Listen("127.0.0.1:0", opts...)
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	ts.node = n
	ts.unsub = n.Peers().Subscribe(ts.event)
	return ts, nil
}

func (tetherSystem) Dial(ctx context.Context, addr string) (io.Closer, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	c, err := rpc.Client(ctx, nc, &rpc.Config{})
	if err != nil {
		nc.Close()
		return nil, err
	}
	return c, nil
}

// tetherServer is a node with its peers indexed by their source port.
type tetherServer struct {
	node  *tether.Node
	dir   string
	unsub func()
	warn  atomic.Int64

	mu    sync.Mutex
	peers map[int]*tetherPeer
	live  int
}

type tetherPeer struct {
	p      *peer.Peer
	lost   bool
	lostAt time.Time
}

// event keeps the port index up to date; it runs on the registry's
// subscriber goroutine.
func (s *tetherServer) event(ev peer.Event) {
	if ev.Peer == nil {
		return
	}
	port := addrPort(ev.Peer.Addr())
	if port == 0 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	switch ev.Kind {
	case peer.Connected:
		if old := s.peers[port]; old == nil || old.lost {
			s.live++
		}
		s.peers[port] = &tetherPeer{p: ev.Peer}
	case peer.Disconnected:
		if tp := s.peers[port]; tp != nil && tp.p == ev.Peer && !tp.lost {
			tp.lost, tp.lostAt = true, ev.Time
			s.live--
		}
	}
}

func (s *tetherServer) Addr() string { return s.node.Addr().String() }

func (s *tetherServer) Peers() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.live
}

func (s *tetherServer) Ports() []int {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]int, 0, len(s.peers))
	for port, tp := range s.peers {
		if !tp.lost {
			out = append(out, port)
		}
	}
	return out
}

func (s *tetherServer) Lost(port int) (time.Time, bool) {
	s.mu.Lock()
	tp := s.peers[port]
	var p *peer.Peer
	lost, at := false, time.Time{}
	if tp != nil {
		p, lost, at = tp.p, tp.lost, tp.lostAt
	}
	s.mu.Unlock()
	if p == nil {
		return time.Time{}, false
	}
	if lost {
		return at, true
	}
	select {
	case <-p.Done(): // evicted; its event is on its way
		return time.Now(), true
	default:
		return time.Time{}, false
	}
}

func (s *tetherServer) WarnLines() int { return int(s.warn.Load()) }

func (s *tetherServer) Incidents() int {
	m, _ := filepath.Glob(filepath.Join(s.dir, "incident-*"))
	return len(m)
}

func (s *tetherServer) Close() error {
	s.unsub()
	err := s.node.Close()
	os.RemoveAll(s.dir)
	return err
}

// addrPort returns the port of "host:port", or 0.
func addrPort(addr string) int {
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		return 0
	}
	n, _ := strconv.Atoi(p)
	return n
}

// countCore is a zap core that counts the entries at Warn level and above
// and writes nothing.
type countCore struct{ n *atomic.Int64 }

func (c *countCore) Enabled(l zapcore.Level) bool      { return l >= zapcore.WarnLevel }
func (c *countCore) With([]zapcore.Field) zapcore.Core { return c }
func (c *countCore) Sync() error                       { return nil }

func (c *countCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.Enabled(e.Level) {
		return ce.AddCore(e, c)
	}
	return ce
}

func (c *countCore) Write(zapcore.Entry, []zapcore.Field) error {
	c.n.Add(1)
	return nil
}
