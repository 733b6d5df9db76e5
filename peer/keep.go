package peer

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v4"
	"go.uber.org/zap"

	"github.com/tetherrpc/tether/rpc"
)

// Keep keeps addr connected: it dials now, and whenever the reference dies
// it dials again with backoff (Config.NewBackOff), for as long as it takes.
// Each reconnection is a new reference, told to subscribers as a Connected
// event with Reconnect set. No goroutine waits meanwhile: attempts run on
// timers. The returned func stops keeping addr (the live reference, if any,
// stays until evicted).
func (r *Registry) Keep(addr string) (stop func()) {
	k := &keeper{addr: addr, bo: r.cfg.NewBackOff()}
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return func() {}
	}
	if old := r.kept[addr]; old != nil {
		r.mu.Unlock()
		return func() {}
	}
	r.kept[addr] = k
	r.mu.Unlock()
	k.schedule(r, 0)
	return func() {
		r.mu.Lock()
		if r.kept[addr] == k {
			delete(r.kept, addr)
		}
		r.mu.Unlock()
		k.stop()
	}
}

// KeptReachable returns how many addresses Keep keeps, and how many of
// them are connected now.
func (r *Registry) KeptReachable() (kept, live int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	kept = len(r.kept)
	for _, p := range r.peers {
		if p.kept != nil && p.conn.Err() == nil {
			live++
		}
	}
	return kept, live
}

// keeper is one kept address. Its BackOff is used only by its own attempts,
// which never overlap.
type keeper struct {
	addr string
	bo   backoff.BackOff

	mu       sync.Mutex
	timer    *time.Timer
	stopped  bool
	attempts int
	running  sync.WaitGroup // an attempt in progress

	everConnected bool // guarded by the registry's mu
}

func (k *keeper) schedule(r *Registry, d time.Duration) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.stopped {
		return
	}
	k.running.Add(1)
	k.timer = time.AfterFunc(d, func() { defer k.running.Done(); k.attempt(r) })
}

// retry schedules the next attempt after a loss.
func (k *keeper) retry(r *Registry) {
	k.schedule(r, k.next())
}

func (k *keeper) next() time.Duration {
	k.mu.Lock()
	defer k.mu.Unlock()
	d := k.bo.NextBackOff()
	if d == backoff.Stop { // a user's BackOff that gives up: keep trying at its pace anyway
		d = 10 * time.Second
	}
	return d
}

func (k *keeper) attempt(r *Registry) {
	k.mu.Lock()
	if k.stopped {
		k.mu.Unlock()
		return
	}
	k.attempts++
	n := k.attempts
	k.mu.Unlock()
	ctx, cancel := context.WithTimeout(r.ctx, dialTimeout(r))
	p, err := r.Dial(ctx, k.addr)
	cancel()
	if errors.Is(err, rpc.ErrSelf) {
		// The address is this node's own: no backoff makes it another.
		r.log.Warn("not keeping an address of this node's own", zap.String("addr", k.addr))
		r.mu.Lock()
		if r.kept[k.addr] == k {
			delete(r.kept, k.addr)
		}
		r.mu.Unlock()
		k.mu.Lock()
		k.stopped = true
		k.mu.Unlock()
		return
	}
	if err != nil {
		d := k.next()
		r.log.Debug("reconnect failed", zap.String("addr", k.addr), zap.Int("attempt", n),
			zap.Duration("next_in", d), zap.Error(err))
		k.schedule(r, d)
		return
	}
	k.mu.Lock()
	k.bo.Reset()
	k.attempts = 0
	k.mu.Unlock()
	// The keeper attaches itself to the reference Dial returned (an older
	// one the peer dialed, if that one stays: see Add), and only here, so
	// that one keeper drives one retry loop. If the reference died
	// already, gone found no keeper on it: retry here.
	r.mu.Lock()
	alive := p.conn.Err() == nil
	if alive {
		p.kept = k
	}
	r.mu.Unlock()
	if !alive {
		k.retry(r)
	}
}

func dialTimeout(r *Registry) time.Duration {
	return max(5*time.Second, r.cfg.Liveness.HangAfter)
}

func (k *keeper) stop() {
	k.mu.Lock()
	k.stopped = true
	if k.timer != nil && k.timer.Stop() {
		k.running.Done() // it will never run
	}
	k.mu.Unlock()
}

// wait waits for an attempt in progress (after stop, none starts).
func (k *keeper) wait() { k.running.Wait() }
