package scale

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v4"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/peer"
)

// ReconnectConfig says what RunReconnect measures.
type ReconnectConfig struct {
	Peers  int // kept peers, partitioned and healed (default 2000)
	Steady int // established peers never partitioned, whose calls are timed (default 4)

	// Baseline is how long the steady peers' calls are timed before the
	// partition (default 3 s).
	Baseline time.Duration
	// Hold is how long the partition is held after both sides evicted
	// every kept peer (default 0: healed at once). The longer, the further
	// the kept peers' backoff has grown, up to its cap.
	Hold time.Duration
	// BackTimeout bounds the wait for all kept peers to be back after the
	// heal (default: BackBound(Hold) plus 15 s).
	BackTimeout time.Duration
	// CallEvery is how often each steady peer is called (default 10 ms).
	CallEvery time.Duration
	// NodeOptions are added to the node's.
	NodeOptions []tether.Option
	// Logf, if set, is told what happens.
	Logf func(format string, args ...any)
}

func (c *ReconnectConfig) defaults() {
	if c.Peers <= 0 {
		c.Peers = 2000
	}
	if c.Steady <= 0 {
		c.Steady = 4
	}
	if c.Baseline <= 0 {
		c.Baseline = 3 * time.Second
	}
	if c.BackTimeout <= 0 {
		c.BackTimeout = BackBound(c.Hold) + 15*time.Second
	}
	if c.CallEvery <= 0 {
		c.CallEvery = 10 * time.Millisecond
	}
	if c.Logf == nil {
		c.Logf = func(string, ...any) {}
	}
}

// BackBound is how long after a heal a kept peer with peer.DefaultBackOff
// may take to be back, when the partition was held for hold after its
// eviction: the dial in progress at the heal gets through at its next SYN
// retransmission or fails at the registry's dial timeout (5 s), and the
// next attempt comes within the backoff's interval then reached (at most
// its cap) plus its randomization.
func BackBound(hold time.Duration) time.Duration {
	const dialTimeout = 5 * time.Second
	b, ok := peer.DefaultBackOff().(*backoff.ExponentialBackOff)
	if !ok {
		return time.Minute
	}
	// The interval reached after hold (plus the time to evict): attempts
	// last a dial timeout each while partitioned.
	interval, spent := b.InitialInterval, time.Duration(0)
	for spent < hold+dialTimeout && interval < b.MaxInterval {
		spent += interval + dialTimeout
		interval = time.Duration(float64(interval) * b.Multiplier)
	}
	interval = min(interval, b.MaxInterval)
	return dialTimeout + time.Duration(float64(interval)*(1+b.RandomizationFactor))
}

// ReconnectResult is what RunReconnect measured. Times are from the heal.
type ReconnectResult struct {
	Peers  int `json:"peers"`
	Steady int `json:"steady"`

	ConnectSec float64 `json:"connect_s"` // all connected at first

	NodeEvictMS  float64 `json:"node_evict_ms"`  // from the partition to the node's last eviction of a kept peer
	PeersEvictMS float64 `json:"peers_evict_ms"` // to the last kept peer's eviction of the node
	HoldMS       float64 `json:"hold_ms"`        // from both sides' evictions to the heal

	Back      int     `json:"back"`        // kept peers back in the node's registry within the bound
	BackP50MS float64 `json:"back_p50_ms"` // their reconnection times, from the heal
	BackP90MS float64 `json:"back_p90_ms"`
	BackMaxMS float64 `json:"back_max_ms"` // -1 unless all were back
	BoundMS   float64 `json:"back_bound_ms"`

	// The arrivals in windows of 100 ms, from the first to the last: the
	// most in any one window, and the mean over the windows.
	Max100ms  int     `json:"max_per_100ms"`
	Mean100ms float64 `json:"mean_per_100ms"`

	FailedBefore int `json:"failed_dials_partitioned"` // kept peers' failed dials while partitioned
	FailedAfter  int `json:"failed_dials_after_heal"`  // and after the heal: refused or cut by the node, or timed out
	// The node's handshakes refused (by rpc) and cut off (slots full)
	// after the heal.
	HandshakesRefused int `json:"handshakes_refused"`
	HandshakesCut     int `json:"handshakes_cut"`
	// RefusedWhy counts the refusals after the heal by their cause (the
	// last part of the node's error). "EOF" and "connection reset by peer"
	// are dialers that gave up before the node read their hello: their dial
	// timeout, begun while partitioned, ran out in the node's accept queue.
	RefusedWhy map[string]int `json:"refused_why,omitempty"`

	// Steady peers' calls, from the node: p50 and p99 before the
	// partition, and during the wave (from the heal until all are back);
	// calls that failed in all.
	CallsBefore    int     `json:"calls_before"`
	CallP50Before  float64 `json:"call_p50_before_ms"`
	CallP99Before  float64 `json:"call_p99_before_ms"`
	CallsWave      int     `json:"calls_wave"`
	CallP50Wave    float64 `json:"call_p50_wave_ms"`
	CallP99Wave    float64 `json:"call_p99_wave_ms"`
	CallMaxWave    float64 `json:"call_max_wave_ms"`
	CallsFailed    int     `json:"calls_failed"`
	SteadyLost     int     `json:"steady_lost"`    // steady peers evicted: never, unless the node starved
	WaveCPUCore    float64 `json:"wave_cpu_core"`  // node CPU from the heal until all are back, in cores
	PeersCPUCore   float64 `json:"peers_cpu_core"` // the kept peers' process's, from the heal to the report
	WarnLines      int     `json:"warn_lines"`     // node, all run
	Incidents      int     `json:"incidents"`      // node, all run
	WaveStartMS    float64 `json:"wave_start_ms"`  // first back, from the heal
	PeersEvictSpan float64 `json:"evict_span_ms"`  // node side: first to last eviction of a kept peer
	Arrivals       []int   `json:"arrivals_100ms"` // kept peers back in each 100 ms after the heal
	// BacklogDrops counts packets the kernel dropped on full input
	// backlogs (anywhere on the host) from the heal until all were back;
	// -1 if unknown. A dropped segment of a steady call is retransmitted
	// after the kernel's minimum RTO, 200 ms.
	BacklogDrops int64 `json:"backlog_drops"`
	// RunWaitMS is how long the node's threads waited on the kernel's run
	// queues in all from the heal until all were back: runnable, but held
	// off the CPU by other work on the machine; -1 if unknown.
	RunWaitMS float64 `json:"node_run_queue_wait_ms"`
	// HealAt is when the partition was healed, and BackAt when the last
	// kept peer was back (or the wait for them ended).
	HealAt time.Time `json:"heal_at"`
	BackAt time.Time `json:"back_at"`
	// NodeStalls are the stretches over 10 ms, from the heal until all
	// were back, in which the node process did not run a 2 ms ticker
	// (held off the CPU, or its runtime stopped): the first 20, as
	// [start from the heal, length] in ms.
	NodeStalls [][2]float64 `json:"node_stalls_ms,omitempty"`
	// SlowCalls are the start times, from the heal, of the steady calls
	// in the wave that took over 50 ms (the first 20).
	SlowCalls []float64 `json:"slow_calls_ms,omitempty"`
}

// RunReconnect measures a connection storm after a healed partition: a
// node (tether.Listen, its defaults plus cfg.NodeOptions) and, in a second
// process (this binary re-executed: see Child), cfg.Peers kept peers, and
// in a third cfg.Steady steady ones, each a peer.Registry of its own that
// keeps the node's address. Once all are connected it times calls from the node to
// the steady peers, silences the node's port to every kept peer at once
// (iptables DROP; the steady peers' ports are let through), waits until
// both sides have evicted every kept peer, holds the partition cfg.Hold,
// heals it, and measures how the kept peers come back: when each is in
// the node's registry again, how the arrivals spread, the dials that
// failed and the handshakes the node refused or cut, and the steady
// peers' call latency meanwhile. It needs a private network namespace,
// root and iptables (CanSilence).
func RunReconnect(ctx context.Context, cfg ReconnectConfig) (res *ReconnectResult, err error) {
	cfg.defaults()
	res = &ReconnectResult{Peers: cfg.Peers, Steady: cfg.Steady, BackMaxMS: -1, BoundMS: ms(cfg.BackTimeout)}
	if err := CanSilence(); err != nil {
		return res, err
	}
	if err := RaiseFileLimit(cfg.Peers + cfg.Steady + 1024); err != nil {
		cfg.Logf("file limit: %v", err)
	}
	defer Heal()
	Heal()

	node, err := startReconnectNode(cfg.NodeOptions)
	if err != nil {
		return res, err
	}
	defer node.close()
	addr := node.n.Addr().String()

	cfg.Logf("reconnect: %d kept and %d steady peers dialling %s", cfg.Peers, cfg.Steady, addr)
	start := time.Now()
	// The steady peers live in a process of their own, so that their
	// answers are not held up by the kept peers' handshakes: what their
	// calls measure is the node.
	sp, err := startKeepers(ctx, addr, 0, cfg.Steady)
	if err != nil {
		return res, err
	}
	defer sp.stop()
	kp, err := startKeepers(ctx, addr, cfg.Peers, 0)
	if err != nil {
		return res, err
	}
	defer kp.stop()
	connectBound := 30*time.Second + time.Duration(cfg.Peers)*5*time.Millisecond
	if err := kp.expect("CONNECTED", connectBound); err != nil {
		return res, err
	}
	if err := sp.expect("CONNECTED", connectBound); err != nil {
		return res, err
	}
	if !waitUntil(ctx, connectBound, func() bool { return node.connected() == cfg.Peers+cfg.Steady }) {
		return res, fmt.Errorf("scale: reconnect: %d of %d peers in the node's registry", node.connected(), cfg.Peers+cfg.Steady)
	}
	res.ConnectSec = time.Since(start).Seconds()
	cfg.Logf("reconnect: all %d connected in %.2f s", cfg.Peers+cfg.Steady, res.ConnectSec)

	// The steady peers' calls, from now to the end.
	calls := &callLog{}
	callCtx, stopCalls := context.WithCancel(ctx)
	var callers sync.WaitGroup
	defer func() { stopCalls(); callers.Wait() }()
	for i := range cfg.Steady {
		p, ok := node.n.Peers().Get(steadyID(i))
		if !ok {
			return res, fmt.Errorf("scale: reconnect: steady peer %d not registered", i)
		}
		callers.Go(func() { calls.run(callCtx, p, cfg.CallEvery) })
	}
	if !sleep(ctx, cfg.Baseline) {
		return res, ctx.Err()
	}

	// Partition every kept peer at once.
	var steadyPorts []int
	for i := range cfg.Steady {
		p, _ := node.n.Peers().Get(steadyID(i))
		steadyPorts = append(steadyPorts, addrPort(p.Addr()))
	}
	partAt, err := silenceAllBut(addrPort(addr), steadyPorts)
	if err != nil {
		return res, err
	}
	node.markPartition(partAt)
	if err := kp.send("PARTITIONED"); err != nil {
		return res, err
	}
	cfg.Logf("reconnect: partitioned")
	evictBound := 30*time.Second + time.Duration(cfg.Peers)*3*time.Millisecond
	if !waitUntil(ctx, evictBound, func() bool { return node.lostSincePartition() == cfg.Peers }) {
		return res, fmt.Errorf("scale: reconnect: the node evicted %d of %d kept peers within %v", node.lostSincePartition(), cfg.Peers, evictBound)
	}
	first, last := node.evictSpan()
	res.NodeEvictMS, res.PeersEvictSpan = ms(last.Sub(partAt)), ms(last.Sub(first))
	if err := kp.expect(fmt.Sprintf("LOST %d", cfg.Peers), evictBound); err != nil {
		return res, err
	}
	bothAt := time.Now()
	res.PeersEvictMS = ms(bothAt.Sub(partAt))
	cfg.Logf("reconnect: evicted on both sides (node's last after %.0f ms, the peers' by %.0f ms)", res.NodeEvictMS, res.PeersEvictMS)
	if !sleep(ctx, cfg.Hold) {
		return res, ctx.Err()
	}

	// Heal, and watch them come back.
	hs0, cut0 := node.refused.Load(), node.cut.Load()
	node.why.take()
	stalls := watchStalls(10 * time.Millisecond)
	defer stalls.stop()
	cpu0, drops0, wait0 := cpuTime(), backlogDrops(), runQueueWait()
	if err := Heal(); err != nil {
		return res, err
	}
	healAt := time.Now()
	res.HealAt = healAt
	res.HoldMS = ms(healAt.Sub(bothAt))
	node.markHeal(healAt)
	if err := kp.send("HEALED"); err != nil {
		return res, err
	}
	cfg.Logf("reconnect: healed")
	allBack := waitUntil(ctx, cfg.BackTimeout, func() bool { return len(node.backTimes()) == cfg.Peers })
	backAt := time.Now()
	res.BackAt = backAt
	res.WaveCPUCore = (cpuTime() - cpu0).Seconds() / backAt.Sub(healAt).Seconds()
	res.RunWaitMS = -1
	if w := runQueueWait(); w >= 0 && wait0 >= 0 {
		res.RunWaitMS = ms(w - wait0)
	}
	res.BacklogDrops = -1
	if d := backlogDrops(); d >= 0 && drops0 >= 0 {
		res.BacklogDrops = d - drops0
	}
	stalls.stop()
	for _, st := range stalls.list(20) {
		res.NodeStalls = append(res.NodeStalls, [2]float64{ms(st[0].Sub(healAt)), ms(st[1].Sub(st[0]))})
	}
	res.HandshakesRefused, res.HandshakesCut = int(node.refused.Load()-hs0), int(node.cut.Load()-cut0)
	res.RefusedWhy = node.why.take()
	back := node.backTimes()
	res.Back = len(back)
	if len(back) > 0 {
		slices.Sort(back)
		res.BackP50MS, res.BackP90MS = ms(back[(len(back)-1)/2]), ms(back[(len(back)-1)*9/10])
		res.WaveStartMS = ms(back[0])
		if allBack {
			res.BackMaxMS = ms(back[len(back)-1])
		}
		res.Max100ms, res.Mean100ms, res.Arrivals = spread(back, 100*time.Millisecond)
	}
	if err := kp.send("REPORT"); err == nil {
		if line, err := kp.next("FAILED", 10*time.Second); err == nil {
			var milli int
			if scanLine(line, "FAILED %d %d %d", &res.FailedBefore, &res.FailedAfter, &milli) {
				res.PeersCPUCore = float64(milli) / 1000
			}
		}
	}
	stopCalls()
	callers.Wait()
	before, wave, failed := calls.split(partAt, healAt, backAt)
	res.SlowCalls = calls.slow(healAt, backAt, 50*time.Millisecond, 20)
	res.CallsBefore, res.CallsWave, res.CallsFailed = len(before), len(wave), failed
	res.CallP50Before, res.CallP99Before = pct(before, 0.50), pct(before, 0.99)
	res.CallP50Wave, res.CallP99Wave, res.CallMaxWave = pct(wave, 0.50), pct(wave, 0.99), pct(wave, 1)
	res.SteadyLost = node.steadyLost()
	res.WarnLines, res.Incidents = int(node.warn.Load()), node.incidents()
	cfg.Logf("reconnect: %d of %d back: p50 %.0f ms, p90 %.0f ms, max %s after the heal (bound %.0f ms); at most %d in 100 ms, %.1f on average; %d dials failed after the heal (%d while partitioned); %d handshakes refused, %d cut; steady calls p99 %.2f ms before, %.2f ms during the wave (%d failed); node CPU %.0f%% of a core in the wave, its threads held off the CPU %.0f ms; %d packets dropped on full backlogs; slow calls at %v ms; node stalls %v",
		res.Back, cfg.Peers, res.BackP50MS, res.BackP90MS, fmtMS(res.BackMaxMS), res.BoundMS, res.Max100ms, res.Mean100ms,
		res.FailedAfter, res.FailedBefore, res.HandshakesRefused, res.HandshakesCut, res.CallP99Before, res.CallP99Wave, res.CallsFailed, 100*res.WaveCPUCore, res.RunWaitMS, res.BacklogDrops, res.SlowCalls, res.NodeStalls)
	if !allBack {
		return res, fmt.Errorf("scale: reconnect: %d of %d kept peers back within %v of the heal", res.Back, cfg.Peers, cfg.BackTimeout)
	}
	return res, errors.Join(kp.err(), sp.err())
}

// spread counts arrivals (times from the heal) in windows of w from the
// first, and returns the most in one window and the mean over the
// windows from the first arrival to the last.
func spread(times []time.Duration, w time.Duration) (most int, mean float64, counts []int) {
	if len(times) == 0 {
		return 0, 0, nil
	}
	counts = make([]int, times[len(times)-1]/w+1)
	for _, t := range times {
		counts[t/w]++
	}
	firstW := int(times[0] / w)
	for _, c := range counts {
		most = max(most, c)
	}
	return most, float64(len(times)) / float64(len(counts)-firstW), counts
}

// pct returns the q-quantile of ds in milliseconds, or -1 if there are none.
func pct(ds []time.Duration, q float64) float64 {
	if len(ds) == 0 {
		return -1
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return ms(s[int(q*float64(len(s)-1))])
}
