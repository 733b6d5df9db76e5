package main

import (
	"context"
	"io"
	"net"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/cluster"
	"github.com/tetherrpc/tether/peer"
	"github.com/tetherrpc/tether/rpc"
)

// nodeConfig is what a storage node (or a client's node) needs; main fills
// it from flags, tests directly.
type nodeConfig struct {
	listen    string
	heartbeat time.Duration // 0: tether's default, 250 ms
	maxShare  int64
	logger    *zap.Logger
	onEvent   func(peer.Event) // told of every peer event after it is logged; may be nil
}

// server is a storage node: a tether node serving the share methods, with
// Prometheus metrics on its own registry.
type server struct {
	node  *tether.Node
	store *store
}

// startServer starts a storage node listening on cfg.listen.
func startServer(cfg nodeConfig) (*server, error) {
	st := newStore(cfg.maxShare)
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	reg.MustRegister(st.collectors()...)
	n, err := tether.Listen(cfg.listen,
		tether.WithLogger(cfg.logger),
		tether.WithHeartbeat(cfg.heartbeat),
		tether.WithMetrics(reg)) // and Health serves them at /metrics
	if err != nil {
		return nil, err
	}
	n.Handle(methodPut, rpc.Typed(st.put))
	n.Handle(methodGet, rpc.Typed(st.get))
	n.Handle(methodList, rpc.Typed(st.list))
	n.HandleStream(methodUpload, rpc.StreamFunc(st.upload))
	n.HandleStream(methodDownload, rpc.StreamFunc(st.download))
	s := &server{node: n, store: st}
	watchPeers(n, cfg.onEvent)
	return s, nil
}

// join makes the node a member of the storage cluster: it gossips on
// gossip, joins through seeds (none: it starts the cluster), and keeps the
// other members connected (package cluster). An empty secret gossips in
// the clear. Clients are not members: the nodes admit anyone, as before.
func (s *server) join(ctx context.Context, gossip string, seeds []string, secret []byte) (*cluster.Cluster, error) {
	cfg := cluster.Config{Seeds: seeds, BindAddr: gossip, Secret: secret, Insecure: len(secret) == 0}
	if isLoopback(gossip) {
		cfg.Memberlist = memberlist.DefaultLocalConfig()
	}
	return cluster.Join(ctx, s.node, cfg)
}

// isLoopback reports whether addr's host is a loopback address, where
// memberlist's timings for one machine fit.
func isLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	ip := net.ParseIP(host)
	return err == nil && ip != nil && ip.IsLoopback()
}

// close drains the node: new calls are refused (so clients go elsewhere),
// calls in flight finish within ctx, then every peer is told goodbye and
// evicts this node at once.
func (s *server) close(ctx context.Context) error { return s.node.Drain(ctx) }

// newLogger logs human-readable lines to w: zap's console encoder.
func newLogger(w io.Writer, verbose bool) *zap.Logger {
	ec := zap.NewDevelopmentEncoderConfig()
	ec.EncodeTime = zapcore.TimeEncoderOfLayout("15:04:05.000")
	level := zapcore.InfoLevel
	if verbose {
		level = zapcore.DebugLevel
	}
	return zap.New(zapcore.NewCore(zapcore.NewConsoleEncoder(ec), zapcore.Lock(zapcore.AddSync(w)), level))
}

// watchPeers logs the peer events the registry does not log itself: first
// connections, suspicion and recovery. Evictions ("peer evicted", Warn, or
// "peer disconnected", Info, for a goodbye) and reconnections are logged by
// the registry, with the cause and the number of calls failed at once.
func watchPeers(n *tether.Node, notify func(peer.Event)) {
	log := n.Logger()
	n.Peers().Subscribe(func(ev peer.Event) {
		fields := []zap.Field{zap.String("peer", string(ev.ID)), zap.String("addr", ev.Peer.Addr())}
		switch ev.Kind {
		case peer.Connected:
			if !ev.Reconnect {
				log.Info("peer connected", fields...)
			}
		case peer.Suspected:
			log.Info("peer suspected: overdue, reads go elsewhere meanwhile", fields...)
		case peer.Recovered:
			log.Info("peer answers again", fields...)
		}
		if notify != nil {
			notify(ev)
		}
	})
}
