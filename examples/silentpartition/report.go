package main

import (
	"fmt"
	"io"
	"strings"
)

// WriteSummary writes the timeline and the summary for people.
func (r *Result) WriteSummary(w io.Writer) {
	fmt.Fprintf(w, "\ntimeline (seconds since the grid was up)\n")
	for _, m := range r.timeline {
		fmt.Fprintf(w, "  %7.3f  %s\n", m.at.Seconds(), m.text)
	}

	what := "a true silent partition (iptables DROP)"
	if r.Mode == ModeProxy {
		what = "a blackholed user-space proxy: the node looks hung, not partitioned"
	}
	fmt.Fprintf(w, "\nsummary: %s mode, %s\n", r.Mode, what)
	row := func(k, format string, args ...any) {
		fmt.Fprintf(w, "  %-16s %s\n", k, fmt.Sprintf(format, args...))
	}
	if r.DetectMS != nil {
		row("detection", "%.0f ms after the partition (bound %.0f ms); verdict %s", *r.DetectMS, r.DetectBoundMS, r.Verdict)
		row("", "cause: %s", r.Cause)
		if r.Mode == ModeProxy {
			row("", "measured here: the hang bound (liveness HangAfter), not silent-partition detection: the proxy's kernel ACKs")
		}
		if r.SuspectMS != nil {
			row("", "suspected (new work routed elsewhere) after %.0f ms", *r.SuspectMS)
		}
	} else {
		row("detection", "NOT DETECTED")
	}
	if r.Held > 0 {
		row("held calls", "%d of %d failed with rpc.ErrDeadReference; calls_cancelled %d (the eviction's count: held calls and reads in flight)",
			r.HeldFailedDead, r.Held, r.CallsCancelled)
		switch {
		case r.CancelLagMS == nil:
		case *r.CancelLagMS == 0:
			row("", "all had failed before the registry announced the eviction (first to last %.2f ms): cancel lag 0", *r.CancelSpreadMS)
		default:
			row("", "the last failed %.2f ms after the registry announced the eviction (first to last %.2f ms)", *r.CancelLagMS, *r.CancelSpreadMS)
		}
	}
	logs := "none"
	if len(r.LogWarns) > 0 {
		logs = fmt.Sprintf("%d (%s)", r.LogWarnLines, strings.Join(r.LogWarns, "; "))
	}
	row("log, incidents", "Warn lines: %s; incident files: %d", logs, r.IncidentFiles)
	row(fmt.Sprintf("reads k=%d of %d", r.K, r.Peers), "before: %d ok, %d failed | during: %d ok, %d failed | after: %d ok, %d failed",
		r.ReadsOKBefore, r.ReadsFailedBefore, r.ReadsOKDuring, r.ReadsFailedDuring, r.ReadsOKAfter, r.ReadsFailedAfter)
	row("read latency", "before: p50 %.2f ms, p99 %.2f ms | during: p50 %.2f ms, p99 %.2f ms",
		r.ReadP50MSBefore, r.ReadP99MSBefore, r.ReadP50MSDuring, r.ReadP99MSDuring)
	row("", "bound on p99 during: 1.5 × %.2f + hedge delay %.2f = %.2f ms", r.ReadP99MSBefore, r.HedgeMS, r.ReadP99BoundMS)
	if r.CPUPressureBefore != nil && r.CPUPressureDuring != nil {
		row("", "the machine's CPU pressure (all processes, PSI): %.0f%% of the time before, %.0f%% during", *r.CPUPressureBefore, *r.CPUPressureDuring)
	}
	if r.ReadP99MSUndetected != nil {
		row("", "reads begun before the eviction, the silent node still referenced: %d, p99 %.2f ms", r.ReadsUndetected, *r.ReadP99MSUndetected)
	}
	if r.FalseSuspicions > 0 {
		row("", "healthy nodes suspected on the way (never evicted): %d", r.FalseSuspicions)
	}
	if r.ReconnectMS != nil {
		row("reconnection", "%.0f ms after the heal", *r.ReconnectMS)
	} else {
		row("reconnection", "NONE")
	}
	if b := r.Baseline; b != nil {
		r.writeBaseline(w, b)
	}
	row("wall time", "%.1f s", r.WallS)
	if r.InvariantsOK {
		row("invariants", "all held")
		return
	}
	row("invariants", "BROKEN:")
	for _, v := range r.Violations {
		fmt.Fprintf(w, "    - %s\n", v)
	}
}

// writeBaseline writes tether and plain yamux side by side.
func (r *Result) writeBaseline(w io.Writer, b *BaselineResult) {
	fmt.Fprintf(w, "\nside by side, silenced at the same instant, %d calls held on tether, %d on plain yamux\n", r.Held, b.Calls)
	col := func(k, a, b string) { fmt.Fprintf(w, "  %-18s %-40s %s\n", k, a, b) }
	col("", fmt.Sprintf("tether (heartbeat %.0f ms)", r.HeartbeatMS), "plain yamux ("+b.Config+")")
	d := func(p *float64) string {
		if p == nil {
			return "not noticed"
		}
		return fmt.Sprintf("%.2f s", *p/1000)
	}
	notNoticed := ""
	if b.DetectMS == nil {
		notNoticed = fmt.Sprintf(" within %.0f s", b.WaitedMS/1000)
	}
	col("noticed after", d(r.DetectMS), d(b.DetectMS)+notNoticed)
	col("held calls failed", fmt.Sprintf("%d, rpc.ErrDeadReference", r.HeldFailedDead),
		fmt.Sprintf("%d (%d of them a bare io.EOF, as for a clean close)", b.CallsFailed, b.CallsEOF))
	lag := func(p *float64) string {
		if p == nil {
			return "-"
		}
		return fmt.Sprintf("%.1f ms after it noticed", *p)
	}
	col("last call failed", lag(r.CancelLagMS), lag(b.CallsLagMS))
	col("why", r.Verdict+" (liveness verdict)", orDash(b.Cause))
	if b.SessionAgeMS > 0 {
		fmt.Fprintf(w, "  (yamux pings every %s from the session's start and waits %s for the answer, so at its defaults it\n"+
			"   notices a silent peer 10 to 40 s after the peer goes quiet, by the phase; this session was %.1f s old\n"+
			"   at the partition. Its held calls end with a bare io.EOF, as if the peer had closed them cleanly.)\n",
			b.KeepAlive, b.Timeout, b.SessionAgeMS/1000)
	}
	fmt.Fprintln(w)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
