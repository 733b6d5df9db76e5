package main

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tetherrpc/tether/peer"
)

// scenario is one run in progress.
type scenario struct {
	cfg Config
	sch schedule
	g   *grid
	t0  time.Time // the grid is up
	ev  *events
	rd  *readers
	bl  *baseline

	held atomic.Pointer[holds]
	down atomic.Bool // the silenced node is unavailable: partitioned, or not yet back

	mu sync.Mutex // guards the instants below
	at instants
}

// instants are when things happened; zero if they did not.
type instants struct {
	hold, drop, dropped, end time.Time
	healing, heal            time.Time // the heal began; it was done (packets flow)
	suspect, evict, back     time.Time
}

func (s *scenario) instants() instants {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.at
}

func (s *scenario) mark(f func(*instants)) {
	s.mu.Lock()
	f(&s.at)
	s.mu.Unlock()
}

func (s *scenario) victim() *storageNode { return s.g.nodes[s.g.victim] }

// onEvent follows the victim's state as the registry tells it.
func (s *scenario) onEvent(ev peer.Event) {
	if ev.ID != s.victim().id {
		return
	}
	s.mark(func(at *instants) {
		if at.drop.IsZero() || ev.Time.Before(at.drop) {
			return
		}
		switch {
		case ev.Kind == peer.Suspected && at.suspect.IsZero() && at.evict.IsZero():
			at.suspect = ev.Time
		case ev.Kind == peer.Disconnected && at.evict.IsZero():
			at.evict = ev.Time
		case ev.Kind == peer.Connected && !at.evict.IsZero() && at.back.IsZero():
			at.back = ev.Time
			if !at.heal.IsZero() {
				s.down.Store(false)
			}
		}
	})
}

// run runs one scenario: it starts the grid, runs reads and holds calls,
// silences one node, heals it, and returns what happened. In ModeKernel the
// process must already be in a private network namespace (main re-executes
// itself with partition.Reexec; tests use partition.Isolated). An error
// means the scenario could not run; broken invariants are in the Result.
func run(ctx context.Context, cfg Config) (*Result, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	wallStart := time.Now()
	s := &scenario{cfg: cfg, sch: cfg.schedule()}
	g, err := newGrid(cfg)
	if err != nil {
		return nil, fmt.Errorf("starting the grid: %w", err)
	}
	defer g.close()
	s.g = g
	s.ev = newEvents(s.onEvent)
	unsubscribe := g.client.Peers().Subscribe(s.ev.add)
	defer unsubscribe()
	for _, stop := range g.keep() {
		defer stop()
	}
	up := s.ev.waitFor(ctx, 5*time.Second, func(evs []peer.Event) bool {
		seen := 0
		for _, n := range g.nodes {
			if _, ok := find(evs, peer.Connected, n.id, time.Time{}); ok {
				seen++
			}
		}
		return seen == len(g.nodes)
	})
	if !up {
		if ctx.Err() != nil {
			return nil, errors.New("interrupted")
		}
		return nil, errors.New("the client could not connect to every storage node within 5 s")
	}
	if cfg.Baseline {
		n := cfg.Outstanding
		if cfg.baselineCalls > 0 {
			n = cfg.baselineCalls
		}
		if s.bl, err = startBaseline(cfg, n); err != nil {
			return nil, err
		}
		defer s.bl.close()
	}
	s.intro()

	// From here on the run goes to its end; a failure is a violation.
	res := newResult(cfg, s.sch, g)
	s.t0 = time.Now()
	workCtx, stopWork := context.WithCancel(context.Background())
	defer stopWork()
	s.rd = startReaders(workCtx, cfg, g, s.t0, &s.down)
	sp := startSampler(s)
	interrupted := false
	var fatal error // the scenario could not go on
	step := func(d time.Duration) bool {
		if interrupted {
			return false
		}
		t := time.NewTimer(time.Until(s.t0.Add(d)))
		defer t.Stop()
		select {
		case <-t.C:
			return true
		case <-ctx.Done():
			interrupted = true
			res.violate("interrupted %.1fs into the run", time.Since(s.t0).Seconds())
			return false
		}
	}

	// Calls held outstanding on the node about to be silenced.
	holdCtx, stopHolds := context.WithCancel(context.Background())
	defer stopHolds()
	if step(s.sch.holdAt) && cfg.Outstanding > 0 {
		v := s.victim()
		p, ok := g.client.Peers().Get(v.id)
		if !ok {
			res.violate("no live reference to %s to hold calls on", v.id)
		} else {
			s.mark(func(at *instants) { at.hold = time.Now() })
			s.held.Store(startHolds(holdCtx, p, cfg.Outstanding))
			deadline := time.Now().Add(5 * time.Second)
			for v.holding.Load() < int64(cfg.Outstanding) && time.Now().Before(deadline) && ctx.Err() == nil {
				time.Sleep(time.Millisecond)
			}
			if n := v.holding.Load(); n < int64(cfg.Outstanding) {
				res.violate("only %d of %d held calls reached %s before the partition", n, cfg.Outstanding, v.id)
			}
		}
	}

	// The partition.
	var hedge time.Duration
	if step(s.sch.partitionAt) {
		hedge = g.client.Peers().Hedge().Delay()
		s.down.Store(true)
		// Both ports at once: plain yamux's detection is timed from the
		// same instant as tether's.
		now := time.Now()
		s.mark(func(at *instants) { at.drop = now })
		var berr error
		var wg sync.WaitGroup
		if s.bl != nil {
			wg.Add(1)
			go func() { defer wg.Done(); berr = s.bl.silence(now) }()
		}
		err := g.silence.silence()
		s.mark(func(at *instants) { at.dropped = time.Now() })
		wg.Wait()
		if err = errors.Join(err, berr); err != nil {
			fatal = fmt.Errorf("silencing %s: %w", s.victim().id, err)
			interrupted = true // skip to the end, and clean up
		}
	}

	// The heal.
	if step(s.sch.healAt) {
		s.mark(func(at *instants) { at.healing = time.Now() })
		if err := g.silence.heal(); err != nil {
			res.violate("healing the partition: %v", err)
		}
		s.mark(func(at *instants) { at.heal = time.Now() })
		if at := s.instants(); !at.back.IsZero() {
			s.down.Store(false)
		}
	}

	// The end: wait a little longer for the node to come back if it has not.
	if step(s.sch.endAt) {
		if at := s.instants(); !at.heal.IsZero() && at.back.IsZero() {
			id := s.victim().id
			heal := at.heal
			s.ev.waitFor(ctx, cfg.reconnectGrace(), func(evs []peer.Event) bool {
				_, ok := find(evs, peer.Connected, id, heal)
				return ok
			})
		}
	}
	s.mark(func(at *instants) { at.end = time.Now() })
	stopWork()
	reads := s.rd.wait()
	stopHolds() // calls still held now were never failed: each is a violation
	var holdEnds []holdEnd
	if h := s.held.Load(); h != nil {
		holdEnds = h.wait()
	}

	// Plain yamux, if asked: wait until it notices, or give up.
	if s.bl != nil && !interrupted && !s.instants().drop.IsZero() {
		t := time.NewTimer(time.Until(s.instants().drop.Add(baselineCap)))
		select {
		case <-s.bl.noticed:
			// Let the held calls see it before the sessions are closed
			// (yamux v0.1.2's readers spin until its Close gets to them).
			for i := 0; s.bl.inflight.Load() > 0 && i < 5000; i++ {
				time.Sleep(time.Millisecond)
			}
		case <-t.C:
		case <-ctx.Done():
			res.violate("interrupted while waiting for plain yamux to notice")
		}
		t.Stop()
	}
	if s.bl != nil {
		s.bl.close()
	}
	samples := sp.stop()
	evs := s.ev.stop()

	if fatal != nil {
		return nil, fatal
	}
	incidents, err := g.closeClient()
	if err != nil {
		res.violate("counting incident files: %v", err)
	}
	warns, err := warnLines(g.logFile)
	if err != nil {
		res.violate("reading the client's log: %v", err)
	}

	res.compute(runData{
		s:         s,
		at:        s.instants(),
		events:    evs,
		reads:     reads,
		holds:     holdEnds,
		hedge:     hedge,
		incidents: incidents,
		warns:     warns,
		samples:   samples,
	})
	res.WallS = round3(time.Since(wallStart).Seconds())
	return res, nil
}

// baselineCap is how long after the partition a run waits for plain yamux
// to notice (its default keepalive notices within 40 s).
const baselineCap = 60 * time.Second

func (sp *sampler) stop() []sample {
	close(sp.stopped)
	<-sp.done
	return sp.samples
}

// intro prints the run's opening lines.
func (s *scenario) intro() {
	w := s.cfg.Progress
	if w == nil {
		return
	}
	c, sch, v := s.cfg, s.sch, s.victim()
	fmt.Fprintf(w, "silentpartition: %d storage nodes and a client on loopback (real TCP, yamux), reads k=%d of %d, heartbeat %v, %d calls held on %s\n",
		c.Peers, c.K, c.Peers, c.Heartbeat, c.Outstanding, v.id)
	switch c.Mode {
	case ModeKernel:
		fmt.Fprintf(w, "mode kernel: %s is silenced by %s: a true silent partition (no ACK, no RST)\n", v.id, s.g.silence.how())
	case ModeProxy:
		fmt.Fprintf(w, "mode proxy: %s is silenced by %s.\n", v.id, s.g.silence.how())
		if c.ProxyReason != "" {
			fmt.Fprintf(w, "  (no kernel-level partition here: %s)\n", c.ProxyReason)
		}
		fmt.Fprintf(w, "  Not a silent partition: the proxy's kernel still ACKs every segment, so %s looks hung, not vanished,\n", v.id)
		fmt.Fprintf(w, "  and is evicted after the hang bound (HangAfter %v), not in about half a second. Run as root on Linux for the real thing.\n", c.liveness().HangAfter)
	}
	fmt.Fprintf(w, "schedule: held calls at %.1fs, partition at %.1fs, heal at %.1fs, end at %.1fs",
		sch.holdAt.Seconds(), sch.partitionAt.Seconds(), sch.healAt.Seconds(), sch.endAt.Seconds())
	if sch.stretched > 0 {
		fmt.Fprintf(w, " (%.1fs longer than -duration, to wait for the detection bound)", sch.stretched.Seconds())
	}
	fmt.Fprintln(w)
	if c.Baseline {
		fmt.Fprintf(w, "baseline: plain hashicorp/yamux (%s) silenced at the same instant with %d calls held; the run lasts until it notices: keepalive every %v from the session's start, %v to answer (about %.0f s in all)\n",
			s.baselineConfigName(), s.bl.calls, s.bl.cfg.KeepAliveInterval, s.bl.cfg.ConnectionWriteTimeout,
			(s.bl.cfg.KeepAliveInterval+s.bl.cfg.ConnectionWriteTimeout).Seconds()+1)
	}
}

func (s *scenario) baselineConfigName() string {
	if s.cfg.baselineYamux == nil {
		return "yamux.DefaultConfig"
	}
	return "a shortened yamux config"
}

// state describes the silenced node's state for the progress line.
func (s *scenario) state() string {
	at := s.instants()
	id := s.victim().id
	now := time.Now()
	switch {
	case !at.end.IsZero() && s.bl != nil && !s.bl.hasNoticed():
		return "reads stopped; waiting for plain yamux to notice"
	case !at.end.IsZero():
		return "reads stopped"
	case at.drop.IsZero():
		if at.hold.IsZero() {
			return "warm-up"
		}
		return fmt.Sprintf("%s healthy", id)
	case at.evict.IsZero():
		st := ""
		if !at.suspect.IsZero() {
			st = ", suspect"
		}
		return fmt.Sprintf("%s silent for %dms%s", id, now.Sub(at.drop).Milliseconds(), st)
	case at.heal.IsZero():
		return fmt.Sprintf("%s evicted %dms after the partition", id, at.evict.Sub(at.drop).Milliseconds())
	case at.back.IsZero():
		return fmt.Sprintf("healed %.1fs ago, %s reconnecting", now.Sub(at.heal).Seconds(), id)
	}
	return fmt.Sprintf("%s reconnected %dms after the heal", id, at.back.Sub(at.heal).Milliseconds())
}

// baselineState describes plain yamux for the progress line.
func (s *scenario) baselineState(inflight int) string {
	at := s.instants()
	if s.bl.hasNoticed() {
		d, _, _, _, _ := s.bl.result()
		return fmt.Sprintf("noticed after %.1fs", d.Seconds())
	}
	if at.drop.IsZero() {
		return fmt.Sprintf("%d held", inflight)
	}
	return fmt.Sprintf("%d held, silent for %.1fs, not noticed", inflight, time.Since(at.drop).Seconds())
}
