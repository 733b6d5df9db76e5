package scale

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v4"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/partition"
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
	evictBound := 30 * time.Second
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

// silenceAllBut drops every packet to or from the node's port except
// those of the given peers' ports: a silent partition of every other
// connection to the node, and of every new one (a redial too). It returns
// the instant the rules were in place.
func silenceAllBut(nodePort int, keep []int) (time.Time, error) {
	if err := partition.CheckNamespace(); err != nil {
		return time.Time{}, err
	}
	var b bytes.Buffer
	b.WriteString("*filter\n")
	for i := 0; i < len(keep); i += portsPerRule {
		group := keep[i:min(i+portsPerRule, len(keep))]
		s := make([]string, len(group))
		for j, p := range group {
			s[j] = strconv.Itoa(p)
		}
		fmt.Fprintf(&b, "-A INPUT -p tcp -m multiport --ports %s -j ACCEPT\n", strings.Join(s, ","))
	}
	fmt.Fprintf(&b, "-A INPUT -p tcp --dport %d -j DROP\n-A INPUT -p tcp --sport %d -j DROP\nCOMMIT\n", nodePort, nodePort)
	path, err := tool("iptables-restore")
	if err != nil {
		return time.Time{}, err
	}
	cmd := exec.Command(path, "--noflush", "-w")
	cmd.Stdin = &b
	out, err := cmd.CombinedOutput()
	at := time.Now()
	if err != nil {
		return time.Time{}, fmt.Errorf("scale: iptables-restore: %v: %s", err, bytes.TrimSpace(out))
	}
	return at, nil
}

// waitUntil polls cond every 5 ms for up to d.
func waitUntil(ctx context.Context, d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) || ctx.Err() != nil {
			return false
		}
		time.Sleep(5 * time.Millisecond)
	}
	return true
}

// callLog times the node's calls to steady peers.
type callLog struct {
	mu     sync.Mutex
	at     []time.Time
	took   []time.Duration
	failed int
}

func (l *callLog) run(ctx context.Context, p *peer.Peer, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	arg := []byte("ping")
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		var reply []byte
		t0 := time.Now()
		err := p.Call(cctx, echoMethod, arg, &reply)
		took := time.Since(t0)
		cancel()
		l.mu.Lock()
		if err != nil {
			if ctx.Err() == nil {
				l.failed++
			}
		} else {
			l.at, l.took = append(l.at, t0), append(l.took, took)
		}
		l.mu.Unlock()
		if err != nil && p.Err() != nil {
			return
		}
	}
}

// split returns the calls begun before the partition and those begun
// between the heal and end, and the failed calls.
func (l *callLog) split(part, heal, end time.Time) (before, wave []time.Duration, failed int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for i, at := range l.at {
		switch {
		case at.Before(part):
			before = append(before, l.took[i])
		case !at.Before(heal) && at.Before(end):
			wave = append(wave, l.took[i])
		}
	}
	return before, wave, l.failed
}

// slow returns the start times, from heal, of up to n calls begun
// before end that took longer than over.
func (l *callLog) slow(heal, end time.Time, over time.Duration, n int) []float64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []float64
	for i, at := range l.at {
		if !at.Before(heal) && at.Before(end) && l.took[i] > over && len(out) < n {
			out = append(out, ms(at.Sub(heal)))
		}
	}
	return out
}

// reconnectNode is the node, with its registry's events indexed by ID.
type reconnectNode struct {
	n    *tether.Node
	dir  string
	stop func()
	warn atomic.Int64
	// The node's log lines for handshakes refused and cut off.
	refused, cut atomic.Int64

	mu        sync.Mutex
	live      map[peer.ID]bool
	partAt    time.Time
	healAt    time.Time
	lostAt    map[peer.ID]time.Time // kept peers evicted since the partition
	backAt    map[peer.ID]time.Time // kept peers connected since the heal
	steadyOut int
}

func startReconnectNode(opts []tether.Option) (*reconnectNode, error) {
	dir, err := os.MkdirTemp("", "tether-reconnect-incidents-")
	if err != nil {
		return nil, err
	}
	rn := &reconnectNode{dir: dir, live: map[peer.ID]bool{}, lostAt: map[peer.ID]time.Time{}, backAt: map[peer.ID]time.Time{}}
	zl := zap.New(&handshakeCore{warn: &rn.warn, refused: &rn.refused, cut: &rn.cut})
	n, err := tether.Listen("127.0.0.1:0", append([]tether.Option{tether.WithLogger(zl), tether.WithIncidentDir(dir)}, opts...)...)
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	rn.n = n
	rn.stop = n.Peers().Subscribe(rn.event)
	return rn, nil
}

func (rn *reconnectNode) event(ev peer.Event) {
	rn.mu.Lock()
	defer rn.mu.Unlock()
	kept := strings.HasPrefix(string(ev.ID), "kept-")
	switch ev.Kind {
	case peer.Connected:
		rn.live[ev.ID] = true
		// (While partitioned no kept peer can connect: a connection that
		// comes before the heal is marked is one the heal let through.)
		if kept && !rn.partAt.IsZero() {
			if _, ok := rn.backAt[ev.ID]; !ok {
				rn.backAt[ev.ID] = ev.Time
			}
		}
	case peer.Disconnected:
		if errors.Is(ev.Cause, peer.ErrReplaced) {
			return // the peer is still connected, through a newer reference
		}
		rn.live[ev.ID] = false
		if kept && !rn.partAt.IsZero() && rn.healAt.IsZero() {
			if _, ok := rn.lostAt[ev.ID]; !ok {
				rn.lostAt[ev.ID] = ev.Time
			}
		}
		if !kept {
			rn.steadyOut++
		}
	}
}

func (rn *reconnectNode) connected() int {
	rn.mu.Lock()
	defer rn.mu.Unlock()
	n := 0
	for _, l := range rn.live {
		if l {
			n++
		}
	}
	return n
}

func (rn *reconnectNode) markPartition(at time.Time) {
	rn.mu.Lock()
	rn.partAt = at
	rn.mu.Unlock()
}

func (rn *reconnectNode) markHeal(at time.Time) {
	rn.mu.Lock()
	rn.healAt = at
	rn.mu.Unlock()
}

func (rn *reconnectNode) lostSincePartition() int {
	rn.mu.Lock()
	defer rn.mu.Unlock()
	return len(rn.lostAt)
}

func (rn *reconnectNode) evictSpan() (first, last time.Time) {
	rn.mu.Lock()
	defer rn.mu.Unlock()
	for _, at := range rn.lostAt {
		if first.IsZero() || at.Before(first) {
			first = at
		}
		if at.After(last) {
			last = at
		}
	}
	return first, last
}

// backTimes returns the kept peers' reconnection times, from the heal.
func (rn *reconnectNode) backTimes() []time.Duration {
	rn.mu.Lock()
	defer rn.mu.Unlock()
	out := make([]time.Duration, 0, len(rn.backAt))
	if rn.healAt.IsZero() {
		return out
	}
	for _, at := range rn.backAt {
		out = append(out, max(at.Sub(rn.healAt), 0))
	}
	return out
}

func (rn *reconnectNode) steadyLost() int {
	rn.mu.Lock()
	defer rn.mu.Unlock()
	return rn.steadyOut
}

func (rn *reconnectNode) incidents() int {
	m, _ := os.ReadDir(rn.dir)
	return len(m)
}

func (rn *reconnectNode) close() {
	rn.stop()
	rn.n.Close()
	os.RemoveAll(rn.dir)
}

// handshakeCore is a zap core that counts the node's lines at Warn and
// above, and its Info lines for handshakes refused and cut off.
type handshakeCore struct{ warn, refused, cut *atomic.Int64 }

func (c *handshakeCore) Enabled(l zapcore.Level) bool      { return l >= zapcore.InfoLevel }
func (c *handshakeCore) With([]zapcore.Field) zapcore.Core { return c }
func (c *handshakeCore) Sync() error                       { return nil }

func (c *handshakeCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.Enabled(e.Level) {
		return ce.AddCore(e, c)
	}
	return ce
}

func (c *handshakeCore) Write(e zapcore.Entry, _ []zapcore.Field) error {
	switch {
	case e.Level >= zapcore.WarnLevel:
		c.warn.Add(1)
	case e.Message == "handshake refused":
		c.refused.Add(1)
	case strings.HasPrefix(e.Message, "handshake slots full"):
		c.cut.Add(1)
	}
	return nil
}

// keepersProc is the keepers process, seen from the node.
type keepersProc struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	lines chan string // its standard output, line by line; closed at its end
	done  chan struct{}
	werr  error
	once  sync.Once
}

func startKeepers(ctx context.Context, addr string, n, steady int) (*keepersProc, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("scale: cannot find this binary to re-execute: %w", err)
	}
	cmd := exec.CommandContext(ctx, exe)
	cmd.Env = append(os.Environ(), envKeep+"="+strconv.Itoa(n), envSteady+"="+strconv.Itoa(steady), envAddr+"="+addr)
	cmd.Stderr = os.Stderr
	cmd.WaitDelay = closeTimeout
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("scale: starting the keepers process: %w", err)
	}
	k := &keepersProc{cmd: cmd, stdin: stdin, lines: make(chan string, 16), done: make(chan struct{})}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			k.lines <- sc.Text()
		}
		close(k.lines)
		k.werr = cmd.Wait()
		close(k.done)
	}()
	return k, nil
}

func (k *keepersProc) send(line string) error {
	if _, err := io.WriteString(k.stdin, line+"\n"); err != nil {
		return fmt.Errorf("scale: telling the keepers process %q: %w", line, err)
	}
	return nil
}

// next waits up to d for the next line starting with prefix, skipping
// others.
func (k *keepersProc) next(prefix string, d time.Duration) (string, error) {
	t := time.NewTimer(d)
	defer t.Stop()
	for {
		select {
		case line, ok := <-k.lines:
			if !ok {
				<-k.done
				return "", fmt.Errorf("%w: %v", errNoPeers, k.werr)
			}
			if strings.HasPrefix(line, prefix) {
				return line, nil
			}
		case <-t.C:
			return "", fmt.Errorf("scale: the keepers process did not say %q within %v", prefix, d)
		}
	}
}

func (k *keepersProc) expect(line string, d time.Duration) error {
	got, err := k.next(line, d)
	if err == nil && got != line {
		err = fmt.Errorf("scale: the keepers process said %q, not %q", got, line)
	}
	return err
}

// err returns an error if the keepers process has ended.
func (k *keepersProc) err() error {
	select {
	case <-k.done:
		return fmt.Errorf("%w: %v", errNoPeers, k.werr)
	default:
		return nil
	}
}

// stop ends the keepers process: its standard input closes, it closes its
// registries and exits (killed if it takes longer than its bound).
func (k *keepersProc) stop() {
	k.once.Do(func() {
		k.stdin.Close()
		go func() { // drain its output
			for range k.lines {
			}
		}()
		select {
		case <-k.done:
		case <-time.After(closeTimeout + 5*time.Second):
			k.cmd.Process.Kill()
			<-k.done
		}
	})
}

// stallWatch records the stretches in which this process did not run a
// ticker of 2 ms for longer than min.
type stallWatch struct {
	min  time.Duration
	mu   sync.Mutex
	at   [][2]time.Time
	quit chan struct{}
	done chan struct{}
	once sync.Once
}

func watchStalls(min time.Duration) *stallWatch {
	w := &stallWatch{min: min, quit: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		t := time.NewTicker(2 * time.Millisecond)
		defer t.Stop()
		last := time.Now()
		for {
			select {
			case <-w.quit:
				return
			case now := <-t.C:
				now = time.Now()
				if now.Sub(last) > w.min {
					w.mu.Lock()
					w.at = append(w.at, [2]time.Time{last, now})
					w.mu.Unlock()
				}
				last = now
			}
		}
	}()
	return w
}

func (w *stallWatch) stop() {
	w.once.Do(func() { close(w.quit) })
	<-w.done
}

func (w *stallWatch) list(n int) [][2]time.Time {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.at[:min(n, len(w.at))])
}
