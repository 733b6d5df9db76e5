package tether

import (
	"context"
	"crypto/tls"
	"net"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/tetherrpc/tether/incident/logport"
	"github.com/tetherrpc/tether/liveness"
	"github.com/tetherrpc/tether/rpc"
)

// Option configures a Node.
type Option func(*options)

type options struct {
	heartbeat   time.Duration
	liveness    *liveness.Config
	logger      *zap.Logger
	incidentDir string
	tls         *tls.Config
	hangAfter   time.Duration
	rpc         rpc.Config
	id          string
	metrics     prometheus.Registerer
	actions     Actions
	logPort     []logport.Option
	penalty     [2]time.Duration
	admission   *admission // nil: everyone is admitted
	dial        func(ctx context.Context, addr string) (net.Conn, error)
}

// WithHeartbeat sets the base probe interval: a peer that sends nothing for
// this long is probed. Default 250 ms (liveness.LAN). The other liveness
// bounds scale with it (see liveness.Config.WithInterval).
func WithHeartbeat(d time.Duration) Option { return func(o *options) { o.heartbeat = d } }

// WithLiveness sets every failure-detection bound at once, for instance
// liveness.WAN() for Tor or intercontinental links. WithHeartbeat, if also
// given, then scales it.
func WithLiveness(c liveness.Config) Option { return func(o *options) { o.liveness = &c } }

// WithLogger sets the logger the node writes to. Default: none. The node
// logs one line per eviction (Warn), never one per failed call.
func WithLogger(l *zap.Logger) Option { return func(o *options) { o.logger = l } }

// WithIncidentDir enables incident reports: one file per incident, named
// "incident-*", written in dir. Default: none.
func WithIncidentDir(dir string) Option { return func(o *options) { o.incidentDir = dir } }

// WithLogPort serves the node's log stream to subscribers over tether's own
// rpc (methods log.subscribe, log.incidents, log.incident; see package
// logport and examples/gatherer), with credit-based flow control: a slow
// subscriber costs the node a bounded budget (default 4 MiB), never more,
// and its losses show as sequence gaps. Default: off.
func WithLogPort(opts ...logport.Option) Option {
	return func(o *options) { o.logPort = append([]logport.Option{}, opts...) }
}

// WithTLS runs mutual TLS on every connection; peer IDs are then derived
// from peers' public keys (rpc.IDFromCertificate), and the node's own ID
// from cfg.Certificates[0]. rpc.NewCertificate and rpc.TLSConfig make one.
func WithTLS(cfg *tls.Config) Option { return func(o *options) { o.tls = cfg } }

// WithViolationPenalty sets how long a host whose connection was cut for
// a protocol violation (garbage, a limit flouted, answers to calls never
// made) may not connect again: base after the first violation, doubling
// with each further one up to max, forgotten after ten quiet minutes. Its
// connections in that time are closed at accept, unheard, so a persistent
// flooder costs the node one accept each, not a handshake, a session and
// an eviction. The host is the IP address: peers behind one NAT share a
// penalty (their established connections are never touched). Default 250 ms
// up to 1 min; base 0 turns it off.
func WithViolationPenalty(base, max time.Duration) Option {
	return func(o *options) { o.penalty = [2]time.Duration{base, max} }
}

// WithHangAfter sets the bound past which a handler still running makes the
// node unhealthy (see Node.Health), whether or not it honours its context.
// Default 30 s. Stream handlers are not bounded: bulk transfers may run long.
func WithHangAfter(d time.Duration) Option { return func(o *options) { o.hangAfter = d } }

// WithRPCConfig sets the connection limits and codec (message size,
// concurrent calls per peer, handshake timeout, stream window, codec). Its
// ID, Mux, TLS and Logger fields are the node's own and are ignored, and so
// is Admit (see WithAdmission).
func WithRPCConfig(c rpc.Config) Option {
	return func(o *options) { c.Admit = o.rpc.Admit; o.rpc = c }
}

// WithDialer sets how the node connects to a peer's address (the
// "host:port" of Dial and Keep, after any "ID@"): a Unix socket's dialer,
// the in-memory partition.Host's Dial, a proxy's. The connections may be
// any net.Conn; over TCP (or TLS over TCP, unwrapped) liveness also reads
// the kernel's evidence. With WithTLS the node runs mutual TLS over them.
// Default: TCP, with a net.Dialer.
func WithDialer(dial func(ctx context.Context, addr string) (net.Conn, error)) Option {
	return func(o *options) { o.dial = dial }
}

// WithID sets the node's ID (without TLS; with TLS the ID is the key's).
// Default: a random ID per process. Keep it across restarts so that peers
// know the node again.
func WithID(id string) Option { return func(o *options) { o.id = id } }
