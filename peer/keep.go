package peer

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v4"
	"go.uber.org/zap"

	"github.com/tetherrpc/tether/rpc"
)

// Errors of Keep and KeepAddr.
var (
	// ErrBadAddress means an address to keep is malformed: it is not
	// "host:port" or "ID@host:port".
	ErrBadAddress = errors.New("peer: malformed address")
	// ErrNotKept is what Kept.Wait returns once its address is no longer
	// kept (Kept.Stop).
	ErrNotKept = errors.New("peer: address no longer kept")
)

// CheckAddr reports whether addr is an address Keep can dial: "host:port",
// or "ID@host:port" to accept no peer but ID. It does not resolve the
// host.
func CheckAddr(addr string) error {
	hostport := addr
	if at := strings.LastIndexByte(addr, '@'); at >= 0 {
		if at == 0 {
			return fmt.Errorf("%w %q: an empty ID before '@'", ErrBadAddress, addr)
		}
		hostport = addr[at+1:]
	}
	_, port, err := net.SplitHostPort(hostport)
	if err != nil {
		return fmt.Errorf("%w %q: %v", ErrBadAddress, addr, err)
	}
	if port == "" {
		return fmt.Errorf("%w %q: no port", ErrBadAddress, addr)
	}
	return nil
}

// Keep keeps addr connected: it dials now, and whenever the reference dies
// it dials again with backoff (Config.NewBackOff), for as long as it takes.
// Each reconnection is a new reference, told to subscribers as a Connected
// event with Reconnect set. No goroutine waits meanwhile: attempts run on
// timers. The returned func stops keeping addr (the live reference, if any,
// stays until evicted).
//
// Keep is KeepAddr without its error and its wait: a malformed address is
// logged at Warn and not kept. For it, as for an address kept already, the
// returned func does nothing. The first failed dial of a kept address is
// logged at Warn, then at most once a minute while it stays unreachable;
// failed redials after a loss (whose eviction was logged already) are
// logged at Warn only after a minute.
func (r *Registry) Keep(addr string) (stop func()) {
	k, err := r.KeepAddr(addr)
	if err != nil {
		if errors.Is(err, ErrBadAddress) {
			r.log.Warn("not keeping a malformed address", zap.String("addr", addr), zap.Error(err))
		}
		return func() {}
	}
	return k.Stop
}

// KeepAddr keeps addr connected, as Keep does, and returns a handle to
// wait for its connection (Kept.Wait) and to stop keeping it (Kept.Stop).
// It returns an error matching ErrBadAddress, and keeps nothing, if addr is
// malformed (see CheckAddr); ErrRegistryClosed after Close. If addr is kept
// already, the handle shares that keeping: it can Wait, and its Stop does
// nothing (the first handle's Stop ends the keeping).
func (r *Registry) KeepAddr(addr string) (*Kept, error) {
	if err := CheckAddr(addr); err != nil {
		return nil, err
	}
	k := newKeeper(addr, r.cfg.NewBackOff())
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil, ErrRegistryClosed
	}
	if old := r.kept[addr]; old != nil {
		r.mu.Unlock()
		return &Kept{r: r, k: old}, nil
	}
	r.kept[addr] = k
	r.mu.Unlock()
	k.schedule(r, 0)
	return &Kept{r: r, k: k, owner: true}, nil
}

// Kept is one address kept connected by KeepAddr.
type Kept struct {
	r     *Registry
	k     *keeper
	owner bool // Stop ends the keeping
	once  sync.Once
}

// Addr is the address kept.
func (h *Kept) Addr() string { return h.k.addr }

// Stop stops keeping the address: no dial starts after it (one in
// progress ends on its own). The live reference, if any, stays until
// evicted. Stop may be called more than once.
func (h *Kept) Stop() {
	if !h.owner {
		return
	}
	h.once.Do(func() {
		h.r.mu.Lock()
		if h.r.kept[h.k.addr] == h.k {
			delete(h.r.kept, h.k.addr)
		}
		h.r.mu.Unlock()
		h.k.stop()
	})
}

// Wait waits until the address is connected, and returns its live
// reference (at once if it is connected now). It returns ctx's error
// (errors.Is(err, context.DeadlineExceeded), say) with the last failed
// dial's error in its message if ctx ends first; ErrNotKept once the
// keeping stopped; ErrRegistryClosed once the registry closed; an error
// matching rpc.ErrSelf if the address is this node's own.
func (h *Kept) Wait(ctx context.Context) (*Peer, error) {
	wake := make(chan struct{}, 1)
	unsubscribe := h.r.Subscribe(func(ev Event) {
		if ev.Kind == Connected { // (a reference may have taken over the kept one)
			select {
			case wake <- struct{}{}:
			default:
			}
		}
	})
	defer unsubscribe()
	for {
		if p := h.r.keptPeer(h.k); p != nil {
			return p, nil
		}
		h.k.mu.Lock()
		attached := h.k.attached
		h.k.mu.Unlock()
		select {
		case <-attached:
		case <-wake:
		case <-h.k.quit:
			if p := h.r.keptPeer(h.k); p != nil {
				return p, nil
			}
			h.r.mu.Lock()
			closed := h.r.closed
			h.r.mu.Unlock()
			h.k.mu.Lock()
			err := h.k.endErr
			h.k.mu.Unlock()
			if closed && !errors.Is(err, rpc.ErrSelf) {
				err = ErrRegistryClosed
			}
			return nil, err
		case <-ctx.Done():
			h.k.mu.Lock()
			lastErr := h.k.lastErr
			h.k.mu.Unlock()
			if lastErr != nil {
				return nil, fmt.Errorf("peer: %s not connected: %w (last attempt: %v)", h.k.addr, ctx.Err(), lastErr)
			}
			return nil, fmt.Errorf("peer: %s not connected: %w", h.k.addr, ctx.Err())
		}
	}
}

// keptPeer returns the live reference k keeps, if any.
func (r *Registry) keptPeer(k *keeper) *Peer {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, p := range r.peers {
		if p.kept == k && p.conn.Err() == nil {
			return p
		}
	}
	return nil
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
	attached chan struct{}  // closed, and replaced, when an attempt connects
	quit     chan struct{}  // closed when the keeping ends
	endErr   error          // why it ended
	lastErr  error          // the last failed attempt's
	failing  time.Time      // since when attempts fail; zero while they succeed
	warned   time.Time      // the last Warn about it

	everConnected bool // guarded by the registry's mu
}

// keepWarnEvery is how often a kept address that stays unreachable is
// logged at Warn; the attempts between are logged at Debug.
const keepWarnEvery = time.Minute

func newKeeper(addr string, bo backoff.BackOff) *keeper {
	return &keeper{addr: addr, bo: bo, attached: make(chan struct{}), quit: make(chan struct{})}
}

// end ends the keeping with err, for Kept.Wait.
func (k *keeper) end(err error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.quit != nil && k.endErr == nil {
		k.endErr = err
		close(k.quit)
	}
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
		k.end(fmt.Errorf("peer: not keeping %s: %w", k.addr, err))
		return
	}
	if err != nil {
		d := k.next()
		k.failed(r, err, n, d)
		k.schedule(r, d)
		return
	}
	k.mu.Lock()
	k.bo.Reset()
	k.attempts = 0
	k.failing, k.lastErr = time.Time{}, nil
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
		return
	}
	k.mu.Lock()
	close(k.attached) // Kept.Wait looks again
	k.attached = make(chan struct{})
	k.mu.Unlock()
}

// failed logs a failed attempt: at Warn the first failure of an address
// never connected, and then at most once every keepWarnEvery while it
// stays unreachable; otherwise at Debug. A loss's first failed redials stay
// at Debug: the eviction was logged at Warn already.
func (k *keeper) failed(r *Registry, err error, attempt int, next time.Duration) {
	r.mu.Lock()
	ever := k.everConnected
	r.mu.Unlock()
	now := time.Now()
	k.mu.Lock()
	k.lastErr = err
	first := k.failing.IsZero()
	if first {
		k.failing = now
		if ever {
			k.warned = now
		}
	}
	warn := (first && !ever) || now.Sub(k.warned) >= keepWarnEvery
	if warn {
		k.warned = now
	}
	since := now.Sub(k.failing)
	k.mu.Unlock()
	fields := []zap.Field{zap.String("addr", k.addr), zap.Int("attempt", attempt),
		zap.Duration("next_in", next), zap.Error(err)}
	switch {
	case warn && first:
		r.log.Warn("kept address unreachable", fields...)
	case warn:
		r.log.Warn("kept address still unreachable",
			append(fields, zap.Duration("for", since.Round(time.Millisecond)))...)
	default:
		r.log.Debug("reconnect failed", fields...)
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
	k.end(ErrNotKept)
}

// wait waits for an attempt in progress (after stop, none starts).
func (k *keeper) wait() { k.running.Wait() }
