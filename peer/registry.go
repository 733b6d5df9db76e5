package peer

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v4"
	"go.uber.org/zap"

	"github.com/tetherrpc/tether/internal/tetheropts"
	"github.com/tetherrpc/tether/liveness"
	"github.com/tetherrpc/tether/rpc"
)

func init() {
	tetheropts.SetAddIncoming(func(r *Registry, c *rpc.Conn, addr string) error {
		_, err := r.add(c, addr, false)
		if err != nil {
			c.Close()
		}
		return err
	})
}

// Errors a Registry gives as causes of eviction, or returns.
var (
	// ErrEvicted is the cause given by Evict when the caller gives none.
	ErrEvicted = errors.New("evicted")
	// ErrReplaced is the cause of death of a reference replaced by a newer
	// connection to the same peer.
	ErrReplaced = errors.New("replaced by another connection to the same peer")
	// ErrRegistryClosed is returned by a closed Registry.
	ErrRegistryClosed = errors.New("peer: registry closed")
)

// Config configures a Registry. The zero value is valid except for Dial,
// which Dial and Keep need.
type Config struct {
	// LocalID is this node's ID; it settles which of two simultaneous
	// connections between the same pair of nodes both keep.
	LocalID ID
	// Dial connects to addr (Registry.Dial and Keep use it).
	Dial func(ctx context.Context, addr string) (*rpc.Conn, error)
	// Liveness sets failure detection. Default liveness.LAN().
	Liveness liveness.Config
	// NewBackOff makes the backoff of one kept address's reconnection
	// loop (one each: a BackOff is not safe for concurrent use). Default:
	// DefaultBackOff.
	NewBackOff func() backoff.BackOff
	// Logger receives one line per eviction (Warn; Info for a goodbye or a
	// local close) and reconnection. Default: none.
	//
	// Many evictions in a short time are told in proportion: the first
	// three of a burst get a line each, and the rest one summary line
	// ("peers evicted": how many, the count by cause, up to ten of their
	// IDs, the first and last time), written once no eviction has come
	// for a second, or every ten seconds while a storm goes on. A burst
	// ends after a second without eviction. Goodbyes are folded the same
	// way, at Info ("peers disconnected"). Subscribers still hear of every
	// one. A mass failure (at least 20 distinct peers, and a tenth of the
	// registry, in one burst) marks its first summary with the field
	// incident=true, which a node's incident recorder takes as a trigger:
	// one incident for the storm. No other eviction makes one.
	Logger *zap.Logger
	// Internal holds options for tether's own packages; nothing outside
	// this module can set them.
	Internal tetheropts.Peer
}

// DefaultBackOff is the reconnection backoff of a Config without one:
// jittered exponential from 500 ms (the first redial after a loss comes
// 250-750 ms after it), doubling, capped at 10 s (5-15 s), never giving up
// (MaxElapsedTime 0: backoff/v4's default of 15 minutes would end the loop
// silently).
//
// Why the first redial is spread over half a second: when many peers lose
// a node at once (a partition heals, the node restarts), their evictions
// bunch on the kernel's keepalive ticks and the liveness monitor's
// batches, and a first redial spread over only 100 ms (as it once was)
// keeps those bunches as waves of handshakes at the node: measured with
// 2,000 kept peers partitioned at once and healed, up to 605 came back in
// one 100 ms window, between windows with none. Spread over 500 ms, at
// most 417, and no gaps. A lone lost peer redials 0.4 s later on average,
// little beside the 0.5-1.7 s it took to notice the loss.
func DefaultBackOff() backoff.BackOff {
	b := backoff.NewExponentialBackOff()
	b.InitialInterval = 500 * time.Millisecond
	b.RandomizationFactor = 0.5
	b.Multiplier = 2
	b.MaxInterval = 10 * time.Second
	b.MaxElapsedTime = 0
	b.Reset()
	return b
}

// Registry holds the current reference to each connected peer, evicts
// references whose peers die or go silent, tells subscribers, and keeps
// chosen addresses connected. One liveness monitor (one goroutine) watches
// all its peers.
//
// Two connections to one peer (both dialed at once, or a redial while the
// old one lingers) are settled the same way on both sides (see Add): the
// loser is retired, not evicted, and its Disconnected event has the cause
// ErrReplaced: the peer is still connected, through the newer reference.
type Registry struct {
	cfg   Config
	mon   *liveness.Monitor
	log   *zap.Logger
	hedge *Hedge

	mu      sync.Mutex
	peers   map[ID]*Peer
	live    []*Peer              // the values of peers, for Sample
	pos     map[*Peer]int        // each one's index in live
	dialed  map[string]*Peer     // of peers, the newest this side dialed to each address
	dialing map[string]*dialCall // the dials in flight, by address
	kept    map[string]*keeper
	closed  bool
	totals  Stats // what dead references did, and event counts

	ctx      context.Context // ends at Close: dials in progress stop
	cancel   context.CancelFunc
	goneWG   sync.WaitGroup // gone() runs still to come
	retiring sync.WaitGroup
	dials    sync.WaitGroup // dials in flight

	events eventQueue

	// A burst of evictions (Warn), or of disconnections (Info), is logged
	// in a few lines: see fold.
	evicted, left *fold
}

// New makes a Registry.
func New(cfg Config) (*Registry, error) {
	if cfg.Liveness == (liveness.Config{}) {
		cfg.Liveness = liveness.LAN()
	}
	if cfg.NewBackOff == nil {
		cfg.NewBackOff = DefaultBackOff
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	mon, err := liveness.NewMonitor(cfg.Liveness, nil)
	if err != nil {
		return nil, err
	}
	r := &Registry{
		cfg:     cfg,
		mon:     mon,
		log:     cfg.Logger,
		hedge:   NewHedge(),
		peers:   make(map[ID]*Peer),
		pos:     make(map[*Peer]int),
		dialed:  make(map[string]*Peer),
		dialing: make(map[string]*dialCall),
		kept:    make(map[string]*keeper),
	}
	r.evicted = newFold(cfg.Logger, zap.WarnLevel, "peers evicted", realFoldClock{}, true)
	r.left = newFold(cfg.Logger, zap.InfoLevel, "peers disconnected", realFoldClock{}, false)
	r.ctx, r.cancel = context.WithCancel(context.Background())
	r.events.start()
	return r, nil
}

// Liveness returns the registry's failure-detection bounds.
func (r *Registry) Liveness() liveness.Config { return r.cfg.Liveness }

// Monitor returns the registry's liveness monitor (for its statistics).
func (r *Registry) Monitor() *liveness.Monitor { return r.mon }

// Hedge returns the hedge delay learnt from FirstK calls on this
// registry's peers.
func (r *Registry) Hedge() *Hedge { return r.hedge }

// add registers a live connection, made paused (tetheropts.SetPaused), and
// returns its reference. addr is where it was dialed (dialed true) or where
// it came from. If the peer already has
// a live reference, one of the two connections is closed: when both were
// dialed by the same side the newer wins (the dialer gave up on the older);
// when each side dialed one, both sides keep the one dialed by the node with
// the smaller ID. add returns the reference that stays.
func (r *Registry) add(c *rpc.Conn, addr string, dialed bool) (*Peer, error) {
	p := &Peer{
		id:       ID(c.RemoteID()),
		conn:     c,
		addr:     addr,
		dialed:   dialed,
		since:    time.Now(),
		reg:      r,
		quietFor: r.cfg.Liveness.Interval / 2,
	}
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		c.Close()
		return nil, ErrRegistryClosed
	}
	old := r.peers[p.id]
	if old != nil && old.conn.Err() == nil && !r.newWins(old, p) {
		r.mu.Unlock()
		r.retire(c)
		return old, nil // (a keeper dialing addr attaches itself to old)
	}
	r.peers[p.id] = p
	r.index(p, old)
	r.totals.Connects++
	reconnect := false
	if k := r.kept[addr]; k != nil && dialed {
		reconnect = k.everConnected
		k.everConnected = true
	}
	if old != nil && old.kept != nil {
		// The keeper follows the peer to the reference that replaces the
		// one it was attached to; the retired one will not redial.
		p.kept, old.kept = old.kept, nil
	}
	// Watch before anyone can see the reference; stop watching at death.
	p.watch = r.mon.Watch(c, liveness.KernelSource(c.NetConn()), liveness.Events{
		Suspect: func(s bool) { r.setSuspect(p, s) },
		Dead:    func(v *liveness.Verdict) { p.Evict(v) },
	})
	// Told under the lock, so that no later Add's news of this reference
	// (its replacement) can overtake it.
	r.events.push(Event{Kind: Connected, ID: p.id, Peer: p, Reconnect: reconnect, Time: p.since})
	r.mu.Unlock()

	liveness.SetUserTimeout(c.NetConn(), r.cfg.Liveness.HangAfter)
	liveness.SetKeepAlive(c.NetConn(), r.cfg.Liveness.KeepAlive)
	r.goneWG.Add(1)
	context.AfterFunc(c.Context(), func() { defer r.goneWG.Done(); r.gone(p) })
	tetheropts.ResumeConn(c) // registered: it may serve now
	if old != nil && old.conn.Err() == nil {
		r.retire(old.conn)
	}
	if reconnect {
		r.mu.Lock()
		r.totals.Reconnects++
		r.mu.Unlock()
		r.log.Info("peer reconnected", zap.String("peer", string(p.id)), zap.String("addr", addr))
	}
	return p, nil
}

// retire ends a connection that another to the same peer replaced: it
// takes no new work from the registry, finishes what it carries (within
// retireWait), then says goodbye, so that neither side logs an eviction
// and no call in flight on it is lost.
func (r *Registry) retire(c *rpc.Conn) {
	tetheropts.ResumeConn(c)
	r.retiring.Add(1)
	go func() {
		defer r.retiring.Done()
		deadline := time.NewTimer(retireWait)
		defer deadline.Stop()
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			if st := c.Stats(); st.Outstanding == 0 && st.Serving == 0 {
				break
			}
			select {
			case <-tick.C:
				continue
			case <-deadline.C:
			case <-c.Done():
			case <-r.ctx.Done():
			}
			break
		}
		c.Leave(ErrReplaced)
	}()
}

// retireWait bounds how long a replaced connection may finish its calls.
const retireWait = 5 * time.Second

// newWins decides between a live reference and a new one to the same peer.
func (r *Registry) newWins(old, new *Peer) bool {
	if old.dialed == new.dialed {
		return true
	}
	// Each side dialed one: keep the one the smaller ID dialed, as the
	// other side will.
	weDialedNew := new.dialed
	if r.cfg.LocalID < new.id {
		return weDialedNew
	}
	return !weDialedNew
}

// Dial returns the live reference this registry dialed to addr, if there
// is one; else it connects with Config.Dial and registers the connection.
// (A second connection dialed to the same peer would replace the first, and
// the two sides may register the two in different orders: each would then
// keep a different one.)
//
// Concurrent Dials to an address with no live reference share one dial:
// one connection is made, and every caller gets the same reference or the
// same error. A caller whose ctx ends stops waiting and returns an error
// matching ctx.Err(); the dial goes on for the others, and stops only once
// every caller waiting for it has gone (or the registry closes).
func (r *Registry) Dial(ctx context.Context, addr string) (*Peer, error) {
	if r.cfg.Dial == nil {
		return nil, errors.New("peer: the Registry's Config has no Dial")
	}
	r.mu.Lock()
	if p := r.dialed[addr]; p != nil && p.conn.Err() == nil {
		r.mu.Unlock()
		return p, nil
	}
	if r.closed {
		r.mu.Unlock()
		return nil, ErrRegistryClosed
	}
	if err := ctx.Err(); err != nil {
		r.mu.Unlock()
		return nil, fmt.Errorf("peer: dialing %s: %w", addr, err)
	}
	d := r.dialing[addr]
	if d == nil {
		// The dial keeps the first caller's values, not its end: it
		// ends when its last caller has gone, or at Close.
		dctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		d = &dialCall{done: make(chan struct{}), cancel: cancel}
		r.dialing[addr] = d
		r.dials.Add(1)
		go r.dial(dctx, addr, d)
	}
	d.waiters++
	r.mu.Unlock()

	select {
	case <-d.done:
		return d.p, d.err
	case <-ctx.Done():
	}
	select {
	case <-d.done: // done as ctx ended: take it
		return d.p, d.err
	default:
	}
	r.mu.Lock()
	d.waiters--
	last := d.waiters == 0
	if last && r.dialing[addr] == d {
		delete(r.dialing, addr) // a Dial from now on dials anew
	}
	r.mu.Unlock()
	if last {
		d.cancel()
	}
	return nil, fmt.Errorf("peer: dialing %s: %w", addr, ctx.Err())
}

// dialCall is a dial in flight to one address, shared by the Dials waiting
// for it.
type dialCall struct {
	done    chan struct{} // closed once p and err are set
	p       *Peer
	err     error
	waiters int // under Registry.mu
	cancel  context.CancelFunc
}

// dial runs a shared dial in a goroutine of its own, so that it outlives
// the caller that started it.
func (r *Registry) dial(ctx context.Context, addr string, d *dialCall) {
	defer r.dials.Done()
	stop := context.AfterFunc(r.ctx, d.cancel) // Close ends dials in flight
	c, err := r.cfg.Dial(ctx, addr)
	stop()
	switch {
	case err == nil:
		d.p, d.err = r.add(c, addr, true)
	case r.ctx.Err() != nil && errors.Is(err, context.Canceled):
		d.err = ErrRegistryClosed
	default:
		d.err = err
	}
	d.cancel()
	r.mu.Lock()
	if r.dialing[addr] == d {
		delete(r.dialing, addr)
	}
	r.mu.Unlock()
	close(d.done)
}

// Get returns the current live reference to id.
func (r *Registry) Get(id ID) (*Peer, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	p, ok := r.peers[id]
	if ok && p.conn.Err() != nil {
		return nil, false
	}
	return p, ok
}

// List returns the current references, in no particular order. It copies
// every one: to pick a few of many peers, Sample costs less.
func (r *Registry) List() []*Peer {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]*Peer, 0, len(r.peers))
	for _, p := range r.peers {
		if p.conn.Err() == nil {
			out = append(out, p)
		}
	}
	return out
}

// Evict evicts the current reference to id with cause (ErrEvicted if nil):
// no call goes out on it from this instant, its outstanding calls fail at
// once, its handlers are cancelled, and subscribers are told. A kept address
// reconnects with backoff. It reports whether there was a live reference.
func (r *Registry) Evict(id ID, cause error) bool {
	if cause == nil {
		cause = ErrEvicted
	}
	r.mu.Lock()
	p := r.peers[id]
	r.mu.Unlock()
	if p == nil || p.conn.Err() != nil {
		return false
	}
	p.Evict(cause)
	return true
}

func (r *Registry) setSuspect(p *Peer, s bool) {
	if p.suspect.Swap(s) == s {
		return
	}
	kind := Recovered
	if s {
		kind = Suspected
	}
	r.events.push(Event{Kind: kind, ID: p.id, Peer: p, Time: time.Now()})
}

// gone runs once when a reference's connection dies, whatever the cause.
func (r *Registry) gone(p *Peer) {
	p.watch.Stop()
	st := p.conn.Stats()
	var de *rpc.DeadError
	var cause error = rpc.ErrClosed
	if errors.As(p.conn.Err(), &de) {
		cause = de.Cause
	}
	r.mu.Lock()
	size := len(r.peers)
	if r.peers[p.id] == p {
		delete(r.peers, p.id)
		r.unindex(p)
	}
	k := p.kept
	p.kept = nil
	closing := r.closed
	r.totals.Disconnects++
	r.totals.add(st)
	r.mu.Unlock()

	// The first few of a burst get a line each; the rest are folded into
	// a summary (see fold). Every one is told to subscribers below.
	fl, level, msg := r.evicted, zap.WarnLevel, "peer evicted"
	if quiet(cause) || closing {
		fl, level, msg = r.left, zap.InfoLevel, "peer disconnected"
	}
	if fl.single(fl.clock.Now(), p.id, CauseClass(cause), st.FailedAtDeath, size) {
		r.log.Log(level, msg,
			zap.String("peer", string(p.id)), zap.String("addr", p.addr),
			zap.String("cause", cause.Error()), zap.Int("calls_cancelled", st.FailedAtDeath),
			zap.Duration("connected_for", time.Since(p.since).Round(time.Millisecond)))
	}
	r.events.push(Event{Kind: Disconnected, ID: p.id, Peer: p, Cause: p.Err(), Calls: st.FailedAtDeath, Time: time.Now()})
	if k != nil && !closing {
		k.retry(r)
	}
}

// Stats counts what a registry's peers did. Counters are cumulative over
// every reference the registry has held; Peers, Suspect, Outstanding and
// Serving are now.
type Stats struct {
	Peers, Suspect       int // live references, and how many are suspect
	Outstanding, Serving int // our calls awaiting answers; the peers' calls running here
	Connects             uint64
	Disconnects          uint64
	Reconnects           uint64 // connects made by Keep after a loss
	CallsOut, CallsIn    uint64
	LateResponses        uint64 // answers after their caller gave up: dropped
	Unsent               uint64 // calls cancelled before they were written
	CancelsSent          uint64
}

func (s *Stats) add(c rpc.Stats) {
	s.CallsOut += c.CallsOut
	s.CallsIn += c.CallsIn
	s.LateResponses += c.LateResponses
	s.Unsent += c.Unsent
	s.CancelsSent += c.CancelsSent
}

// Stats returns the registry's counters.
func (r *Registry) Stats() Stats {
	r.mu.Lock()
	s := r.totals
	live := make([]*Peer, 0, len(r.peers))
	for _, p := range r.peers {
		live = append(live, p)
	}
	r.mu.Unlock()
	for _, p := range live {
		if p.conn.Err() != nil {
			continue // counted in totals when gone runs
		}
		c := p.conn.Stats()
		s.add(c)
		s.Peers++
		s.Outstanding += c.Outstanding
		s.Serving += c.Serving
		if p.Suspect() {
			s.Suspect++
		}
	}
	return s
}

// quiet causes are ordinary goodbyes, logged at Info rather than Warn.
func quiet(cause error) bool {
	return errors.Is(cause, rpc.ErrClosed) || errors.Is(cause, rpc.ErrPeerLeft) || errors.Is(cause, ErrReplaced)
}

// Close stops reconnecting, closes every connection (telling each peer
// goodbye), stops the liveness monitor and delivers the last events.
func (r *Registry) Close() error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil
	}
	r.closed = true
	peers := make([]*Peer, 0, len(r.peers))
	for _, p := range r.peers {
		peers = append(peers, p)
	}
	kept := r.kept
	r.kept = map[string]*keeper{}
	r.mu.Unlock()

	r.cancel() // dials in progress end
	for _, k := range kept {
		k.stop()
	}
	var wg sync.WaitGroup
	for _, p := range peers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.conn.Close()
		}()
	}
	wg.Wait()
	r.dials.Wait() // (each registers nothing now: add refuses)
	r.retiring.Wait()
	for _, k := range kept {
		k.wait()
	}
	r.goneWG.Wait() // every Disconnected is told before the events stop
	r.evicted.close()
	r.left.close()
	r.mon.Close()
	r.events.close()
	return nil
}

func (r *Registry) String() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return fmt.Sprintf("peer.Registry(%d peers, %d kept)", len(r.peers), len(r.kept))
}
