package chaos

import (
	"fmt"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"
)

// ---- the report ----

func durQ(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[min(len(s)-1, int(float64(len(s))*q))]
}

// late is a timing bound broken between from and to: a violation,
// unless this process was held off the CPU then.
type late struct {
	from, to time.Time
	excess   time.Duration // by how much the bound was broken
	msg      string
}

// late records a timing bound broken by excess between from and to, to be
// judged at the end (a stall of this process is known only once it is
// over, which may be after the call that suffered it).
func (c *chaos) late(from, to time.Time, excess time.Duration, format string, args ...any) {
	c.mu.Lock()
	c.lates = append(c.lates, late{from, to, excess, fmt.Sprintf("%7.3fs ", c.now()) + fmt.Sprintf(format, args...)})
	c.mu.Unlock()
}

// judgeLates turns the broken timing bounds into violations, except those
// broken by no more than this process stalled meanwhile: on a busy machine
// a process that is not running cannot return a call in time, whatever the
// library does.
func (c *chaos) judgeLates() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, l := range c.lates {
		if stalled := c.stalls.Overlap(l.from, l.to); stalled >= l.excess {
			c.excused++
			c.t.Logf("broken by %v while this process stalled %v: %s", l.excess.Round(time.Millisecond), stalled.Round(time.Millisecond), l.msg)
			continue
		}
		c.violations = append(c.violations, l.msg)
		c.t.Log("VIOLATION " + l.msg)
	}
}

// stallMin is how long this process must be held off the CPU at a time
// for it to count as stalled. Go's timers fire within a millisecond or two
// on a machine with CPU to spare; 25 ms late means a busy one, where the
// answers to probes (from this process or a child server, scheduled alike)
// can come late past their timeout. Liveness then treats the link as one
// that stalls, and waits StallBound before it judges it silent, as after a
// latency spike: the bound on detection is 2 s there, not 1 s.
const stallMin = 25 * time.Millisecond

// congestedBefore reports whether the detection's connection lived
// through a latency spike (or, for a child server, a pause) in the five
// minutes before its fault: liveness then remembers the link as one that
// stalls (stallMemory) and waits StallBound before judging it silent.
func (c *chaos) congestedBefore(d *detect) bool {
	born := d.ref.Since()
	for _, f := range c.faults {
		if f.kind != faultSpike && !(f.kind == faultPause && connTouches(d.ref, f.ports[0])) {
			continue
		}
		if f.end.IsZero() || f.start.After(d.fault.start) {
			continue
		}
		if f.end.After(born) && d.fault.start.Sub(f.end) < 5*time.Minute {
			return true
		}
	}
	// This process held off the CPU while the connection lived, within
	// liveness' stall memory before the fault.
	from := d.fault.start.Add(-5 * time.Minute)
	if born.After(from) {
		from = born
	}
	return c.stalls.During(from, d.fault.start)
}

func (c *chaos) report() {
	t := c.t
	c.mu.Lock()
	defer c.mu.Unlock()

	// Detection: every silent fault, on every connection it cut. One-way
	// partitions are counted apart, and held to 2 s at p99: the side that
	// no longer hears its peer notices as in a two-way partition, and its
	// eviction resets the connection, which tells the other side at once
	// (see TestOneWayPartitionDetection); but that side is often a server,
	// whose reference to a client that only calls it is idle (the 2 s
	// floor), and the client, which still hears the server's probes, waits
	// for its reset.
	var alone, concurrent, oneWay, stalled, idle []time.Duration
	missed := 0
	for _, d := range c.detects {
		if !d.fault.kind.silent() {
			continue
		}
		if !d.done {
			if d.fault.end.Sub(d.fault.start) > 2500*time.Millisecond {
				missed++
				c.violations = append(c.violations, fmt.Sprintf("%s of %s (%.1fs) was never detected by %s on its connection to %s",
					d.fault.kind, d.fault.target, d.fault.end.Sub(d.fault.start).Seconds(), d.node, c.nameOf(d.ref.ID(), d.ref)))
			}
			continue
		}
		switch {
		case c.congestedBefore(d):
			// The link needed probe retries lately (a latency spike, a
			// pause, or this process held off a busy machine's CPU while it
			// lived, within liveness' stall memory of 5 minutes): the
			// detector then waits StallBound (1.2 s) of silence, by design,
			// and promises 2 s.
			stalled = append(stalled, d.took)
			if d.took > 2*time.Second {
				c.violations = append(c.violations, fmt.Sprintf("%s of %s noticed by %s after %v on a link that saw congestion lately (bound 2s)",
					d.fault.kind, d.fault.target, d.node, d.took.Round(time.Millisecond)))
			}
		case d.idle:
			// No call of its own outstanding on the reference (a server's
			// reference to a client, which only answers): liveness judges
			// it idle, kept alive by the kernel's keepalive and checked
			// once a second, and promises 2 s (the idle floor, as
			// TestSilentPartitionDetectionTimes checks at the default).
			idle = append(idle, d.took)
			if d.took > 2*time.Second {
				c.violations = append(c.violations, fmt.Sprintf("%s of %s noticed by %s after %v on a reference with no call of its own outstanding (idle floor 2s)",
					d.fault.kind, d.fault.target, d.node, d.took.Round(time.Millisecond)))
			}
		case d.fault.kind == faultOneWay:
			oneWay = append(oneWay, d.took)
		case d.fault.concurrent:
			concurrent = append(concurrent, d.took)
		default:
			alone = append(alone, d.took)
		}
		if d.took > time.Second {
			t.Logf("slow detection: %s of %s %s (%.3fs, concurrent %v, congested before %v, idle %v) noticed by %s on its reference to %s after %v: %v",
				d.fault.kind, d.fault.target, d.fault.detail, d.fault.start.Sub(c.start).Seconds(), d.fault.concurrent, c.congestedBefore(d), d.idle,
				d.node, c.nameOf(d.ref.ID(), d.ref), d.took.Round(time.Millisecond), d.ref.Err())
		}
	}
	if p := durQ(oneWay, .99); p > 2*time.Second {
		c.violations = append(c.violations, fmt.Sprintf("p99 detection of one-way partitions %v > 2s (%d detections)", p, len(oneWay)))
	}
	if p := durQ(alone, .99); p > time.Second {
		c.violations = append(c.violations, fmt.Sprintf("p99 detection of silent partitions %v > 1s (%d detections)", p, len(alone)))
	}
	if p := durQ(concurrent, .99); p > 2*time.Second {
		c.violations = append(c.violations, fmt.Sprintf("p99 detection of silent partitions made during another fault %v > 2s (%d detections)", p, len(concurrent)))
	}

	// Incidents: the clients' error storms, and none on the servers.
	var incidentLines []string
	for _, cl := range c.clients {
		files, _ := filepath.Glob(filepath.Join(cl.dir, "incident-*.json"))
		cl.errMu.Lock()
		times := slices.Clone(cl.errLogs)
		cl.errMu.Unlock()
		sort.Slice(times, func(i, j int) bool { return times[i].Before(times[j]) })
		windows, storms := 0, 0
		var next, lastErr time.Time
		for _, at := range times {
			if lastErr.IsZero() || at.Sub(lastErr) > recWindow {
				storms++
			}
			lastErr = at
			if !at.Before(next) {
				windows++
				next = at.Add(recWindow + recRateLimit)
			}
		}
		incidentLines = append(incidentLines, fmt.Sprintf("%s: %d Error lines in %d storms, %d incident files (at most %d allowed)",
			cl.name, len(times), storms, len(files), windows))
		if len(files) > windows {
			c.violations = append(c.violations, fmt.Sprintf("%s wrote %d incident files for %d storm windows", cl.name, len(files), windows))
		}
	}
	serverFiles := 0
	for _, s := range c.servers {
		for _, dir := range s.dirs {
			files, _ := filepath.Glob(filepath.Join(dir, "incident-*.json"))
			serverFiles += len(files)
		}
	}
	if serverFiles > 0 {
		c.violations = append(c.violations, fmt.Sprintf("the servers wrote %d incident files: evictions are not incidents", serverFiles))
	}

	// Logs.
	var entries, lost uint64
	for _, cov := range c.covers {
		entries += cov.entries
		lost += cov.lost
	}
	for name, got := range c.gathered {
		if got > c.delivered[name] {
			c.violations = append(c.violations, fmt.Sprintf("the gatherer got %d entries from %s, whose ports delivered %d", got, name, c.delivered[name]))
		}
	}

	kinds := []string{}
	for k, n := range c.faultCount {
		kinds = append(kinds, fmt.Sprintf("%s %d", k, n))
	}
	sort.Strings(kinds)
	causes := []string{}
	total := 0
	for k, n := range c.evictions {
		causes = append(causes, fmt.Sprintf("%s %d", k, n))
		total += n
	}
	sort.Strings(causes)
	var overBound int
	for i, r := range c.reconnects {
		if r > c.reconBound[i] {
			overBound++
		}
	}
	lines := []string{
		fmt.Sprintf("chaos soak: %v, %d in-process servers + %d paused-by-signal servers + %d clients; %d faults: %s",
			c.dur, numServers, numPausable, numClients, len(c.faults), strings.Join(kinds, ", ")),
		fmt.Sprintf("calls            %d: %d ok, %d ErrDeadReference (%d of them outstanding at an eviction), %d deadline, %d other",
			c.calls.Load(), c.okCalls.Load(), c.deadCalls.Load(), c.outstandingFailed.Load(), c.deadlineCalls.Load(), c.otherCalls.Load()),
		fmt.Sprintf("deadlines        max overrun %v (bound %v); %d timing bounds broken while this process stalled %d times, up to %v (excused)",
			time.Duration(c.maxOverrun.Load()).Round(time.Microsecond), overrun, c.excused, c.stalls.Count(), c.stalls.Longest().Round(time.Millisecond)),
		fmt.Sprintf("evicted refs     %d calls made on already-evicted references, slowest %v, none written",
			c.deadRefCalls.Load(), time.Duration(c.maxDeadCall.Load()).Round(time.Microsecond)),
		fmt.Sprintf("evictions        %d (%s); false evictions %d", total, strings.Join(causes, ", "), len(c.falseEv)),
		fmt.Sprintf("detection        silent partitions (two-way, lost connections) alone: %d, p50 %v, p99 %v, max %v; during another fault: %d, p50 %v, p99 %v, max %v; missed %d",
			len(alone), durQ(alone, .5).Round(time.Millisecond), durQ(alone, .99).Round(time.Millisecond), durQ(alone, 1).Round(time.Millisecond),
			len(concurrent), durQ(concurrent, .5).Round(time.Millisecond), durQ(concurrent, .99).Round(time.Millisecond), durQ(concurrent, 1).Round(time.Millisecond), missed),
		fmt.Sprintf("one-way          %d detections, p50 %v, p99 %v, max %v",
			len(oneWay), durQ(oneWay, .5).Round(time.Millisecond), durQ(oneWay, .99).Round(time.Millisecond), durQ(oneWay, 1).Round(time.Millisecond)),
		fmt.Sprintf("after congestion %d detections on links that saw a latency spike, a pause or a stall of this process in the 5 minutes before (any kind of silent fault; %d stalls): p50 %v, p99 %v, max %v (bound 2s)",
			len(stalled), c.stalls.Count(), durQ(stalled, .5).Round(time.Millisecond), durQ(stalled, .99).Round(time.Millisecond), durQ(stalled, 1).Round(time.Millisecond)),
		fmt.Sprintf("idle references  %d detections on references with no call of their own outstanding: p50 %v, p99 %v, max %v (bound 2s)",
			len(idle), durQ(idle, .5).Round(time.Millisecond), durQ(idle, .99).Round(time.Millisecond), durQ(idle, 1).Round(time.Millisecond)),
		fmt.Sprintf("all silent       %d detections: p50 %v, p99 %v, max %v",
			len(alone)+len(concurrent)+len(oneWay)+len(stalled)+len(idle), durQ(slices.Concat(alone, concurrent, oneWay, stalled, idle), .5).Round(time.Millisecond),
			durQ(slices.Concat(alone, concurrent, oneWay, stalled, idle), .99).Round(time.Millisecond), durQ(slices.Concat(alone, concurrent, oneWay, stalled, idle), 1).Round(time.Millisecond)),
		fmt.Sprintf("hung (pauses)    %d evictions of paused servers, after %v", len(c.hangEv), c.hangEv),
		fmt.Sprintf("reconnection     %d, p50 %v, max %v; over bound %d; churn %d",
			len(c.reconnects), durQ(c.reconnects, .5).Round(time.Millisecond), durQ(c.reconnects, 1).Round(time.Millisecond), overBound, len(c.churn)),
		fmt.Sprintf("k-of-n reads     %d, %d failed; p50 %v, p99 %v", c.reads.Load(), c.readsFailed.Load(),
			durQ(c.readLat, .5).Round(time.Microsecond), durQ(c.readLat, .99).Round(time.Microsecond)),
		fmt.Sprintf("logs             %d lines logged by the servers (half Info, half Debug); the gatherer got %d entries and %d announced lost, over %d port epochs; %d subscriptions ended, each with produced == delivered + dropped",
			2*c.logLines.Load(), entries, lost, len(c.covers), c.subEnds),
		"incidents        " + strings.Join(incidentLines, "; ") + fmt.Sprintf("; servers: %d files", serverFiles),
		fmt.Sprintf("invariants       %d violations", len(c.violations)),
	}
	for _, l := range lines {
		t.Log(l)
	}
	for i, v := range c.violations {
		if i >= 50 {
			t.Logf("... and %d more violations", len(c.violations)-50)
			break
		}
		t.Log("  violation: " + v)
	}
}
