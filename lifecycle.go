package tether

import (
	"context"
	"os"
	"time"

	"go.uber.org/zap"

	"github.com/tetherrpc/tether/internal/tetheropts"
	"github.com/tetherrpc/tether/liveness"
	"github.com/tetherrpc/tether/rpc"
)

// ExitRestart is the exit code of a node that drained itself so that its
// supervisor restarts it (EX_TEMPFAIL, 75: "try again").
const ExitRestart = 75

// Actions are what a node does on its own about its health and age. All
// are off in the zero value.
type Actions struct {
	// Watchdog sets the process watchdog's limits: goroutines, heap and
	// RSS hard bounds, and the leak trend window. Its HangAfter comes from
	// WithHangAfter, and its OnUnhealthy is the node's (below).
	Watchdog liveness.WatchdogConfig
	// OnUnhealthy, if set, is called with the findings once the node has
	// been unhealthy for Sustain.
	OnUnhealthy func([]liveness.Finding)
	// Sustain is how long the node must be unhealthy before acting.
	// Default 10 s.
	Sustain time.Duration
	// RestartOnUnhealthy drains the node and exits with ExitRestart once
	// it has been unhealthy for Sustain.
	RestartOnUnhealthy bool
	// MaxAge drains and exits with ExitRestart once the node is this old
	// (as mod_perl's and gunicorn's max-requests, against slow leaks).
	MaxAge time.Duration
	// MaxCalls drains and exits with ExitRestart once the node has served
	// this many calls.
	MaxCalls uint64
	// DrainTimeout bounds a drain's wait for calls in flight. Default 30 s.
	DrainTimeout time.Duration
	// Internal holds options for tether's own tests; nothing outside this
	// module can set them.
	Internal tetheropts.Actions
}

// WithActions turns on the node's own actions about its health and age.
// Every action taken is logged at Warn and recorded as an incident.
func WithActions(a Actions) Option { return func(o *options) { o.actions = a } }

// ErrDraining is a draining node's refusal of a new call: the caller gets a
// *rpc.RemoteError with CodeUnavailable and this message, which matches
// both ErrDraining and rpc.ErrUnavailable with errors.Is. The call was not
// run: it may go to another peer.
var ErrDraining error = &rpc.RemoteError{Code: rpc.CodeUnavailable, Message: "node is draining"}

func (a *Actions) defaults() {
	if a.Sustain <= 0 {
		a.Sustain = 10 * time.Second
	}
	if a.DrainTimeout <= 0 {
		a.DrainTimeout = 30 * time.Second
	}
	if tetheropts.Exit(&a.Internal) == nil {
		tetheropts.SetExit(&a.Internal, os.Exit)
	}
}

// startWatchdog starts the process watchdog and the actions' timers.
func (n *Node) startWatchdog() error {
	a := &n.opts.actions
	a.defaults()
	wc := a.Watchdog
	wc.HangAfter = n.opts.hangAfter
	wc.Sustain = a.Sustain
	if a.OnUnhealthy != nil || a.RestartOnUnhealthy {
		wc.OnUnhealthy = func(f []liveness.Finding) {
			reasons := make([]string, len(f))
			for i, x := range f {
				reasons[i] = x.Text
			}
			n.logger.Warn("node unhealthy", zap.Strings("findings", reasons), zap.Duration("for", a.Sustain), zap.Bool(incidentField, true))
			if a.OnUnhealthy != nil {
				a.OnUnhealthy(f)
			}
			if a.RestartOnUnhealthy {
				n.restart("unhealthy")
			}
		}
	}
	wd, err := liveness.NewWatchdog(wc)
	if err != nil {
		return err
	}
	n.wd = wd
	if a.MaxAge > 0 {
		n.ageTimer = time.AfterFunc(a.MaxAge, func() { n.restart("reached its maximum age of " + a.MaxAge.String()) })
	}
	return nil
}

// incidentField marks a log entry that opens an incident even below Error.
const incidentField = "incident"

// restart drains the node and exits for the supervisor to restart it.
func (n *Node) restart(why string) {
	if !n.restarting.CompareAndSwap(false, true) {
		return
	}
	go func() {
		a := n.opts.actions
		n.logger.Warn("node restarting: draining, then exiting", zap.String("why", why), zap.Int("exit_code", ExitRestart), zap.Bool(incidentField, true))
		ctx, cancel := context.WithTimeout(context.Background(), a.DrainTimeout)
		err := n.Drain(ctx)
		cancel()
		if err != nil {
			n.logger.Warn("drain cut short", zap.Error(err))
		}
		n.Close()
		tetheropts.Exit(&a.Internal)(ExitRestart)
	}()
}

// Drain stops taking new calls (they are answered with CodeUnavailable, so
// callers go elsewhere), marks the node not ready, lets the calls in flight
// finish until ctx ends, then says goodbye to every peer (so each evicts
// this node at once instead of waiting for missed heartbeats) and closes
// the node. It returns ctx's error if calls were still running.
func (n *Node) Drain(ctx context.Context) error {
	n.draining.Store(true)
	n.logger.Info("draining", zap.Int("calls_in_flight", n.reg.Stats().Serving))
	var err error
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	// A call is in flight until its answer is queued (rpc counts it as
	// serving until then); the goodbye is queued after the answers.
	for n.wd.InFlight() > 0 || n.reg.Stats().Serving > 0 {
		select {
		case <-tick.C:
		case <-ctx.Done():
			err = ctx.Err()
		}
		if err != nil {
			break
		}
	}
	n.Close()
	return err
}

// instrumentation of every handler: drain refusal, watchdog, metrics.
func (n *Node) instrument(method string, h rpc.Handler) rpc.Handler {
	var observe func(time.Duration)
	if n.metrics != nil {
		obs := n.metrics.handlerDuration.WithLabelValues(method)
		observe = func(d time.Duration) { obs.Observe(d.Seconds()) }
	}
	maxCalls := n.opts.actions.MaxCalls
	return rpc.Func(func(ctx context.Context, req []byte) ([]byte, error) {
		if n.draining.Load() {
			return nil, ErrDraining
		}
		var peerID string
		if c := rpc.FromContext(ctx); c != nil {
			peerID = c.RemoteID()
		}
		call := n.wd.Begin(method, peerID)
		var t0 time.Time
		if observe != nil {
			t0 = time.Now()
		}
		resp, err := h.ServeRPC(ctx, req)
		call.End()
		if observe != nil {
			observe(time.Since(t0))
		}
		if maxCalls > 0 && n.served.Add(1) == maxCalls {
			n.restart("served its maximum of " + itoa(maxCalls) + " calls")
		}
		return resp, err
	})
}

func itoa(u uint64) string {
	var b [20]byte
	i := len(b)
	for {
		i--
		b[i] = byte('0' + u%10)
		u /= 10
		if u == 0 {
			return string(b[i:])
		}
	}
}
