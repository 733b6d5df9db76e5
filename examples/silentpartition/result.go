package main

import (
	"bufio"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"time"

	"github.com/tetherrpc/tether/liveness"
	"github.com/tetherrpc/tether/peer"
	"github.com/tetherrpc/tether/rpc"
)

// Result is what a run measured, and the invariants it checked. Times are
// in milliseconds (keys ending _ms) or seconds (_s) since the grid was up,
// unless said otherwise; a null is something that did not happen.
type Result struct {
	Mode        Mode    `json:"mode"`
	Silencer    string  `json:"silencer"`               // how the node was silenced
	ProxyWhy    string  `json:"proxy_reason,omitempty"` // why proxy mode, when not asked for
	Peers       int     `json:"peers"`
	K           int     `json:"k"`
	HeartbeatMS float64 `json:"heartbeat_ms"`
	Held        int     `json:"outstanding"`
	Readers     int     `json:"readers"`
	DurationS   float64 `json:"duration_s"`
	Seed        uint64  `json:"seed"`
	Victim      string  `json:"victim"`

	PartitionAtS float64 `json:"partition_at_s"`
	HealAtS      float64 `json:"heal_at_s"`
	EndAtS       float64 `json:"end_at_s"`

	// Detection: from the instant the node began to be silenced (just
	// before DropPort or Blackhole, so the time iptables takes counts
	// against tether) to the registry's Disconnected event.
	DetectMS      *float64 `json:"detect_ms"`
	DetectBoundMS float64  `json:"detect_bound_ms"`
	SuspectMS     *float64 `json:"suspect_ms"` // the Suspected event
	Cause         string   `json:"cause"`
	Verdict       string   `json:"verdict"`         // silent, hung or unanswered (liveness.Kind)
	SilenceCostMS float64  `json:"silence_cost_ms"` // how long DropPort (two iptables runs) or Blackhole took

	// The held calls: how many the eviction failed (the Disconnected
	// event's count, which includes any read in flight to the node), how
	// many of the held calls ended with rpc.ErrDeadReference, and how long
	// after the Disconnected event the last of them returned (0 when all
	// had returned by then) and from the first to the last.
	CallsCancelled int      `json:"calls_cancelled"`
	HeldFailedDead int      `json:"held_failed_dead_reference"`
	CancelLagMS    *float64 `json:"cancel_lag_ms"`
	CancelSpreadMS *float64 `json:"cancel_spread_ms"`

	IncidentFiles int      `json:"incident_files"`
	LogWarnLines  int      `json:"log_warn_lines"` // the client's log at Warn and above
	LogWarns      []string `json:"log_warn_messages"`

	// Reads by when they began: before the partition, during it (to the
	// heal), after it.
	ReadsOK           int `json:"reads_ok"`
	ReadsFailed       int `json:"reads_failed"`
	ReadsOKBefore     int `json:"reads_ok_before"`
	ReadsFailedBefore int `json:"reads_failed_before"`
	ReadsOKDuring     int `json:"reads_ok_during"`
	ReadsFailedDuring int `json:"reads_failed_during"`
	ReadsOKAfter      int `json:"reads_ok_after"`
	ReadsFailedAfter  int `json:"reads_failed_after"`
	// Latencies of successful reads; "before" leaves out the first third of
	// the time before the partition (the warm-up, while the hedge delay
	// learns). "undetected" is the reads begun between the partition and
	// the eviction, when the silent node still had a live reference.
	ReadP50MSBefore     float64  `json:"read_p50_ms_before"`
	ReadP99MSBefore     float64  `json:"read_p99_ms_before"`
	ReadP50MSDuring     float64  `json:"read_p50_ms_during"`
	ReadP99MSDuring     float64  `json:"read_p99_ms_during"`
	ReadP99MSUndetected *float64 `json:"read_p99_ms_undetected"`
	ReadsUndetected     int      `json:"reads_undetected"`
	ReadP99BoundMS      float64  `json:"read_p99_bound_ms"` // 1.5 × p99 before + the hedge delay
	// CPU pressure over the same windows: the share of the time some task
	// on the machine (any process) waited for a CPU (Linux PSI; null
	// elsewhere). Read latencies on two cores follow it.
	CPUPressureBefore *float64 `json:"cpu_pressure_pct_before"`
	CPUPressureDuring *float64 `json:"cpu_pressure_pct_during"`
	HedgeMS           float64  `json:"hedge_ms"`         // FirstK's hedge delay when the partition began
	FalseSuspicions   int      `json:"false_suspicions"` // healthy nodes suspected (not evicted) on the way

	Reconnected bool     `json:"reconnected"`
	ReconnectMS *float64 `json:"reconnect_ms"` // from the heal's end (the iptables rules removed)

	// Timeline is the run's steps, in order.
	Timeline []TimelineEntry `json:"timeline"`

	WallS        float64  `json:"wall_s"`
	InvariantsOK bool     `json:"invariants_ok"`
	Violations   []string `json:"violations"`

	// Baseline is plain yamux, with -baseline; its keys join the top level.
	Baseline *BaselineResult `json:"-"`

	timeline []mark
	samples  []sample
	tailOnly bool // the one violation is the read tail's (a statistical bound)
	nodes    []string
	victimIx int
}

// BaselineResult is plain yamux's side of a -baseline run.
type BaselineResult struct {
	Config string `json:"baseline_config"`
	Calls  int    `json:"baseline_outstanding"`
	// SessionAgeMS is how old the yamux session was at the partition: its
	// keepalive pings every KeepAliveInterval from the session's start.
	SessionAgeMS float64  `json:"baseline_session_age_ms"`
	KeepAlive    string   `json:"-"`
	Timeout      string   `json:"-"`
	DetectMS     *float64 `json:"baseline_detect_ms"` // from the same instant; null: not within the wait
	WaitedMS     float64  `json:"baseline_waited_ms"` // how long the run waited for it
	Cause        string   `json:"baseline_cause"`     // what yamux logged
	CallsFailed  int      `json:"baseline_calls_failed"`
	CallsEOF     int      `json:"baseline_calls_eof"`     // of those, how many saw a plain io.EOF
	LastCallMS   *float64 `json:"baseline_last_call_ms"`  // from the partition to the last held call's end
	CallsLagMS   *float64 `json:"baseline_cancel_lag_ms"` // from yamux noticing to the last held call's end
}

// MarshalJSON puts the baseline's keys, if any, beside the others.
func (r *Result) MarshalJSON() ([]byte, error) {
	type plain Result
	return json.Marshal(struct {
		*plain
		*BaselineResult
	}{(*plain)(r), r.Baseline})
}

// TimelineEntry is one step of a run, for the JSON.
type TimelineEntry struct {
	AtS  float64 `json:"at_s"` // since the grid was up
	ID   string  `json:"id"`
	Text string  `json:"text"`
}

// mark is one step of the timeline.
type mark struct {
	at   time.Duration // since the grid was up
	id   string        // also the SVG element's id
	text string
}

func newResult(cfg Config, sch schedule, g *grid) *Result {
	r := &Result{
		Mode:          cfg.Mode,
		Silencer:      g.silence.how(),
		ProxyWhy:      cfg.ProxyReason,
		Peers:         cfg.Peers,
		K:             cfg.K,
		HeartbeatMS:   ms(cfg.Heartbeat),
		Held:          cfg.Outstanding,
		Readers:       cfg.Readers,
		DurationS:     cfg.Duration.Seconds(),
		Seed:          cfg.Seed,
		Victim:        string(g.nodes[g.victim].id),
		PartitionAtS:  round3(sch.partitionAt.Seconds()),
		HealAtS:       round3(sch.healAt.Seconds()),
		EndAtS:        round3(sch.endAt.Seconds()),
		DetectBoundMS: ms(sch.detectBound),
		victimIx:      g.victim,
	}
	for _, n := range g.nodes {
		r.nodes = append(r.nodes, string(n.id))
	}
	return r
}

// violate records a broken invariant.
func (r *Result) violate(format string, args ...any) {
	r.Violations = append(r.Violations, fmt.Sprintf(format, args...))
	r.InvariantsOK = false
}

// runData is what a run collected, for compute.
type runData struct {
	s         *scenario
	at        instants
	events    []peer.Event
	reads     []readRec
	holds     []holdEnd
	hedge     time.Duration
	incidents int
	warns     []string
	samples   []sample
}

// compute fills in the results and checks the invariants.
func (r *Result) compute(d runData) {
	s, at, cfg := d.s, d.at, d.s.cfg
	since := func(t time.Time) time.Duration { return t.Sub(s.t0) }
	victim := s.victim().id
	r.samples = d.samples
	r.HedgeMS = ms(d.hedge)
	r.SilenceCostMS = ms(at.dropped.Sub(at.drop))
	r.add(0, "grid-up", fmt.Sprintf("grid up: %d storage nodes connected to the client; reads begin", cfg.Peers))
	if !at.hold.IsZero() {
		r.add(since(at.hold), "held", fmt.Sprintf("%d calls held outstanding on %s", cfg.Outstanding, victim))
	}

	// Detection.
	var evict peer.Event
	evicted := false
	if !at.drop.IsZero() {
		r.add(since(at.drop), "partition", fmt.Sprintf("partition: %s silenced by %s (took %.1f ms)", victim, s.g.silence.how(), r.SilenceCostMS))
		if sus, ok := find(d.events, peer.Suspected, victim, at.drop); ok {
			r.SuspectMS = ptr(ms(sus.Time.Sub(at.drop)))
			r.add(since(sus.Time), "suspect", fmt.Sprintf("%s suspect (no answer to probes in time): new work goes elsewhere", victim))
		}
		evict, evicted = find(d.events, peer.Disconnected, victim, at.drop)
	}
	for _, ev := range d.events {
		switch {
		case ev.Kind == peer.Disconnected && ev.ID == victim && (at.drop.IsZero() || ev.Time.Before(at.drop)):
			r.violate("%s was evicted before the partition: %v", ev.ID, ev.Cause)
		case ev.Kind == peer.Disconnected && ev.ID == victim && !at.back.IsZero() && ev.Time.After(at.back):
			r.violate("%s was evicted again after it reconnected: %v", ev.ID, ev.Cause)
		case ev.Kind == peer.Disconnected && ev.ID != victim:
			r.violate("%s was evicted though it was never silenced: %v", ev.ID, ev.Cause)
		case ev.Kind == peer.Suspected && ev.ID != victim:
			r.FalseSuspicions++
		}
	}
	switch {
	case at.drop.IsZero():
		r.violate("the node was never silenced")
	case !evicted:
		r.violate("%s was never evicted (waited %.1fs after the partition)", victim, at.end.Sub(at.drop).Seconds())
	default:
		detect := evict.Time.Sub(at.drop)
		r.DetectMS = ptr(ms(detect))
		r.Cause = evict.Cause.Error()
		r.CallsCancelled = evict.Calls
		var v *liveness.Verdict
		if errors.As(evict.Cause, &v) {
			r.Verdict = kindName(v.Kind)
		}
		r.add(since(evict.Time), "eviction", fmt.Sprintf("%s evicted %.0f ms after the partition: %d calls failed at once; cause: %v", victim, ms(detect), evict.Calls, evict.Cause))
		if detect > s.sch.detectBound {
			r.violate("detection took %.0f ms, above the bound of %.0f ms", ms(detect), r.DetectBoundMS)
		}
		if !errors.Is(evict.Cause, liveness.ErrMissedHeartbeats) {
			r.violate("%s was evicted for %q, not for missed heartbeats", victim, evict.Cause)
		}
		want := map[Mode]liveness.Kind{ModeKernel: liveness.Silent, ModeProxy: liveness.Hung}[cfg.Mode]
		if v != nil && v.Kind != want {
			r.violate("the verdict was %q; a %s-mode partition should be %q", kindName(v.Kind), cfg.Mode, kindName(want))
		}
		if evict.Calls < len(d.holds) {
			r.violate("the eviction failed %d calls; %d were held outstanding", evict.Calls, len(d.holds))
		}
	}

	// The held calls.
	r.checkHolds(d, evict, evicted, since)

	// Heal and reconnection.
	if !at.heal.IsZero() {
		r.add(since(at.heal), "heal", fmt.Sprintf("heal: %s's packets flow again (undoing the silence took %.1f ms)", victim, ms(at.heal.Sub(at.healing))))
		// A redial may complete while the rules are being removed, just
		// before the heal is stamped: look from when the heal began.
		if back, ok := find(d.events, peer.Connected, victim, at.healing); ok && evicted {
			r.Reconnected = true
			r.ReconnectMS = ptr(ms(back.Time.Sub(at.heal)))
			r.add(since(back.Time), "reconnect", fmt.Sprintf("%s reconnected %.0f ms after the heal (peer.Registry.Keep, with backoff)", victim, *r.ReconnectMS))
		} else {
			r.violate("%s did not reconnect within %.1fs of the heal", victim, at.end.Sub(at.heal).Seconds())
		}
	}
	if !at.end.IsZero() {
		r.add(since(at.end), "end", "reads stop")
	}

	r.checkReads(d, evict, evicted, since)

	r.IncidentFiles = d.incidents
	if d.incidents > 1 {
		r.violate("%d incident files written for one eviction; want at most 1", d.incidents)
	}
	r.LogWarnLines, r.LogWarns = len(d.warns), d.warns
	if r.LogWarns == nil {
		r.LogWarns = []string{}
	}

	if s.bl != nil {
		r.computeBaseline(s, at, since)
	}
	slices.SortStableFunc(r.timeline, func(a, b mark) int { return cmp.Compare(a.at, b.at) })
	for _, m := range r.timeline {
		r.Timeline = append(r.Timeline, TimelineEntry{round3(m.at.Seconds()), m.id, m.text})
	}
	if r.Violations == nil {
		r.Violations = []string{}
	}
	r.InvariantsOK = len(r.Violations) == 0
	r.tailOnly = r.tailOnly && len(r.Violations) == 1
}

// checkHolds checks that every held call failed with ErrDeadReference, at
// the eviction and not before the partition.
func (r *Result) checkHolds(d runData, evict peer.Event, evicted bool, since func(time.Time) time.Duration) {
	if len(d.holds) == 0 {
		return
	}
	var bad []string
	var first, last time.Time
	for _, h := range d.holds {
		switch {
		case !errors.Is(h.err, rpc.ErrDeadReference):
			bad = append(bad, fmt.Sprintf("ended with %v", h.err))
		case !d.at.drop.IsZero() && h.at.Before(d.at.drop):
			bad = append(bad, fmt.Sprintf("failed before the partition: %v", h.err))
		default:
			r.HeldFailedDead++
		}
		if first.IsZero() || h.at.Before(first) {
			first = h.at
		}
		if h.at.After(last) {
			last = h.at
		}
	}
	if len(bad) > 0 {
		r.violate("%d of %d held calls did not fail with rpc.ErrDeadReference at the eviction; the first %s", len(bad), len(d.holds), bad[0])
	}
	if !evicted {
		return
	}
	lag := max(last.Sub(evict.Time), 0)
	r.CancelLagMS = ptr(ms(lag))
	r.CancelSpreadMS = ptr(ms(last.Sub(first)))
	r.add(since(last), "last-call-failed", fmt.Sprintf("the last of the %d held calls returned rpc.ErrDeadReference (first to last: %.2f ms)", len(d.holds), *r.CancelSpreadMS))
	if lag > cancelLagBound {
		r.violate("the last held call failed %.1f ms after the eviction; want at most %v", ms(lag), cancelLagBound)
	}
}

// cancelLagBound: "every outstanding call fails at once".
const cancelLagBound = 100 * time.Millisecond

// checkReads counts reads by phase and checks that none failed while k
// nodes were healthy, and that latency held up during the partition.
func (r *Result) checkReads(d runData, evict peer.Event, evicted bool, since func(time.Time) time.Duration) {
	cfg := d.s.cfg
	drop, heal := time.Duration(math.MaxInt64), time.Duration(math.MaxInt64)
	if !d.at.drop.IsZero() {
		drop = since(d.at.drop)
	}
	if !d.at.heal.IsZero() {
		heal = since(d.at.heal)
	}
	evictAt := drop
	if evicted {
		evictAt = since(evict.Time)
	}
	warm := min(drop, d.s.sch.partitionAt) / 3
	var before, during, undetected []time.Duration
	var badReads int
	var firstBad error
	for _, rd := range d.reads {
		ok := rd.err == nil
		var okc, failc *int
		switch {
		case rd.start < drop:
			okc, failc = &r.ReadsOKBefore, &r.ReadsFailedBefore
			if ok && rd.start >= warm {
				before = append(before, rd.took)
			}
		case rd.start < heal:
			okc, failc = &r.ReadsOKDuring, &r.ReadsFailedDuring
			if ok {
				during = append(during, rd.took)
				if rd.start < evictAt {
					undetected = append(undetected, rd.took)
				}
			}
		default:
			okc, failc = &r.ReadsOKAfter, &r.ReadsFailedAfter
		}
		if ok {
			*okc++
			r.ReadsOK++
			continue
		}
		*failc++
		r.ReadsFailed++
		// k healthy nodes: all of them, or all but the silenced one
		// when that leaves k.
		if cfg.Peers-1 >= cfg.K || !rd.down {
			badReads++
			if firstBad == nil {
				firstBad = rd.err
			}
		}
	}
	if badReads > 0 {
		r.violate("%d reads failed while at least k=%d storage nodes were healthy; the first: %v", badReads, cfg.K, firstBad)
	}
	if r.ReadsOK == 0 {
		r.violate("no read completed")
	}
	r.ReadP50MSBefore, r.ReadP99MSBefore = ms(pct(before, 50)), ms(pct(before, 99))
	r.ReadP50MSDuring, r.ReadP99MSDuring = ms(pct(during, 50)), ms(pct(during, 99))
	r.ReadsUndetected = len(undetected)
	if len(undetected) > 0 {
		r.ReadP99MSUndetected = ptr(ms(pct(undetected, 99)))
	}
	bound := pct(before, 99)*3/2 + d.hedge
	r.ReadP99BoundMS = ms(bound)
	r.CPUPressureBefore = pressure(d.samples, warm, drop)
	r.CPUPressureDuring = pressure(d.samples, drop, heal)
	if cfg.Peers-1 >= cfg.K && len(before) >= minReadsForP99 && len(during) >= minReadsForP99 && pct(during, 99) > bound {
		busy := ""
		if r.CPUPressureBefore != nil && r.CPUPressureDuring != nil {
			busy = fmt.Sprintf(" (machine's CPU pressure: %.0f%% before, %.0f%% during)", *r.CPUPressureBefore, *r.CPUPressureDuring)
		}
		r.violate("read p99 during the partition %.2f ms > 1.5 × p99 before (%.2f ms) + hedge delay (%.2f ms)%s",
			r.ReadP99MSDuring, r.ReadP99MSBefore, r.HedgeMS, busy)
		r.tailOnly = len(r.Violations) == 1
	}
}

// minReadsForP99: below this a p99 is one unlucky read, not a tail.
const minReadsForP99 = 200

// computeBaseline fills in plain yamux's side.
func (r *Result) computeBaseline(s *scenario, at instants, since func(time.Time) time.Duration) {
	noticed, ok, cause, ends, closing := s.bl.result()
	b := &BaselineResult{Config: s.baselineConfigName(), Cause: cause, Calls: s.bl.calls,
		KeepAlive: s.bl.cfg.KeepAliveInterval.String(), Timeout: s.bl.cfg.ConnectionWriteTimeout.String()}
	if !at.drop.IsZero() {
		b.SessionAgeMS = ms(at.drop.Sub(s.bl.startedAt))
	}
	b.Config = fmt.Sprintf("%s: keepalive %v, write timeout %v", b.Config, s.bl.cfg.KeepAliveInterval, s.bl.cfg.ConnectionWriteTimeout)
	if !at.drop.IsZero() {
		b.WaitedMS = ms(time.Since(at.drop))
	}
	if ok {
		b.DetectMS = ptr(ms(noticed))
		r.add(since(at.drop.Add(noticed)), "baseline-notice", fmt.Sprintf("plain yamux noticed, %.1f s after the partition: %s", noticed.Seconds(), cause))
	}
	var last time.Time
	for _, e := range ends {
		if e.at.Before(closing) { // ended by yamux itself, not by the run's own close
			b.CallsFailed++
			if isEOF(e.err) {
				b.CallsEOF++
			}
			if e.at.After(last) {
				last = e.at
			}
		}
	}
	if !last.IsZero() && !at.drop.IsZero() {
		b.LastCallMS = ptr(ms(last.Sub(at.drop)))
		if ok {
			b.CallsLagMS = ptr(ms(max(last.Sub(at.drop.Add(noticed)), 0)))
		}
	}
	r.Baseline = b
}

func (r *Result) add(at time.Duration, id, text string) {
	r.timeline = append(r.timeline, mark{at, id, text})
}

// markAt returns the timeline's mark with that id.
func (r *Result) markAt(id string) (mark, bool) {
	for _, m := range r.timeline {
		if m.id == id {
			return m, true
		}
	}
	return mark{}, false
}

// warnLines returns the messages the client logged at Warn and above (the
// log is zap's JSON, one entry a line).
func warnLines(f *os.File) ([]string, error) {
	if f == nil {
		return nil, nil
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return nil, err
	}
	var out []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var e struct {
			Level, Msg, Peer string
			Calls            int `json:"calls_cancelled"`
		}
		if json.Unmarshal(sc.Bytes(), &e) != nil {
			continue
		}
		switch e.Level {
		case "warn", "error", "dpanic", "panic", "fatal":
			s := e.Level + ": " + e.Msg
			if e.Peer != "" {
				s += fmt.Sprintf(" (peer %s, calls_cancelled %d)", e.Peer, e.Calls)
			}
			out = append(out, s)
		}
	}
	return out, sc.Err()
}

func kindName(k liveness.Kind) string {
	switch k {
	case liveness.Silent:
		return "silent"
	case liveness.Hung:
		return "hung"
	case liveness.Unanswered:
		return "unanswered"
	}
	return "unknown"
}

// pct is the nearest-rank percentile of ds (sorted in place).
func pct(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	slices.Sort(ds)
	i := int(math.Ceil(p/100*float64(len(ds)))) - 1
	return ds[min(max(i, 0), len(ds)-1)]
}

// ms is d in milliseconds, to the microsecond.
func ms(d time.Duration) float64 { return round3(float64(d) / 1e6) }

func round3(f float64) float64 { return math.Round(f*1000) / 1000 }

func ptr[T any](v T) *T { return &v }
