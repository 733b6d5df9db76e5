package peer

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/tetherrpc/tether/internal/tetheropts"
	"github.com/tetherrpc/tether/liveness"
	"github.com/tetherrpc/tether/rpc"
)

// ID is a node's identity, stable across reconnections: random per process
// by default, or derived from the node's key with TLS (rpc.IDFromCertificate).
type ID string

// Peer is a reference to a peer over one connection, for that connection's
// lifetime, like a context: once evicted it stays dead, Done is closed and
// Err says why. The Registry then holds a new reference when the peer
// reconnects.
//
// From the instant of eviction no call goes out on the reference: a new call
// returns a *rpc.DeadError without any I/O, every outstanding call has
// already returned one, and the handlers serving the peer on this side have
// had their contexts cancelled.
type Peer struct {
	id     ID
	conn   *rpc.Conn
	addr   string
	dialed bool
	since  time.Time
	reg    *Registry
	watch  *liveness.Watch

	kept     *keeper // the Keep that redials this peer; guarded by reg.mu
	suspect  atomic.Bool
	overdue  atomic.Pointer[time.Time] // when a FirstK call to it was overdue
	quietFor time.Duration             // a call on a connection quiet this long kicks a probe
}

// ID is the peer's ID.
func (p *Peer) ID() ID { return p.id }

// Addr is the address the peer was dialed at, or its remote address when it
// dialed us.
func (p *Peer) Addr() string { return p.addr }

// Dialed reports whether this side dialed the connection.
func (p *Peer) Dialed() bool { return p.dialed }

// Since is when the reference was made.
func (p *Peer) Since() time.Time { return p.since }

// Conn is the connection under the reference.
func (p *Peer) Conn() *rpc.Conn { return p.conn }

// Done is closed when the reference is evicted.
func (p *Peer) Done() <-chan struct{} { return p.conn.Done() }

// Err is nil while the reference lives; then a *rpc.DeadError
// (errors.Is(err, rpc.ErrDeadReference)) wrapping the cause, such as a
// *liveness.Verdict for missed heartbeats. The Disconnected event's Cause
// is this same error.
func (p *Peer) Err() error { return p.conn.Err() }

// Suspect reports whether the peer is suspect: it has not answered a
// probe within its adaptive timeout (see Timeout), and is not yet dead.
// Suspicion is liveness's verdict on the connection; it ends when the peer
// answers (a Recovered event) or with eviction. Route new work elsewhere
// where there is a choice; FirstK tries a suspect peer after all others.
func (p *Peer) Suspect() bool { return p.suspect.Load() }

// Overdue reports whether a call to the peer took longer than the hedge
// delay (see FirstK) and nothing has arrived from the peer since. Overdue
// is about latency, not liveness: an overdue peer is slow, and may yet
// answer; FirstK tries it after the others that are neither overdue nor
// suspect. It is not evicted for it.
func (p *Peer) Overdue() bool {
	at := p.overdue.Load()
	return at != nil && !p.conn.LastReceived().After(*at)
}

func (p *Peer) markOverdue() {
	now := time.Now()
	p.overdue.Store(&now)
}

// Call calls method on the peer; see rpc.Conn.Call for arguments, replies
// and errors. A call on a connection that has been quiet for a while sends a
// probe along with it, so that a peer gone silent is noticed sooner.
func (p *Peer) Call(ctx context.Context, method string, args, reply any) error {
	p.kickIfQuiet()
	obs := tetheropts.ObserveCall(&p.reg.cfg.Internal)
	if obs == nil {
		return p.conn.Call(ctx, method, args, reply)
	}
	t0 := time.Now()
	err := p.conn.Call(ctx, method, args, reply)
	obs(method, time.Since(t0), err)
	return err
}

// Stream opens a bulk stream to the peer's stream handler for method; see
// rpc.Conn.OpenStream. The stream dies with the reference.
func (p *Peer) Stream(ctx context.Context, method string) (*rpc.Stream, error) {
	p.kickIfQuiet()
	return p.conn.OpenStream(ctx, method)
}

// Evict evicts the reference with cause (see Registry.Evict).
func (p *Peer) Evict(cause error) int { return p.conn.Abort(cause) }

func (p *Peer) kickIfQuiet() {
	if p.watch != nil && time.Since(p.conn.LastReceived()) >= p.quietFor {
		p.watch.Kick()
	}
}

// Timeout is the peer's adaptive probe timeout and its smoothed round trip
// (see liveness.Estimator).
func (p *Peer) Timeout() (timeout, srtt time.Duration) {
	if p.watch == nil {
		return 0, 0
	}
	return p.watch.Timeout()
}

func (p *Peer) String() string { return string(p.id) + "@" + p.addr }
