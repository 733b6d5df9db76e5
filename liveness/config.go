package liveness

import (
	"fmt"
	"time"
)

// Config sets the bounds of failure detection. Use a preset (LAN, the
// default; Local; WAN) and adjust; each value's reason sits beside it.
//
// How the bounds work together: a peer that sent nothing for Interval is
// probed. If no answer comes within the adaptive timeout (SRTT + 4·RTTVAR of
// the probes' round trips, clamped to [MinTimeout, MaxTimeout]) it is
// suspect, and probed again every RetryInterval so its kernel has fresh
// segments to acknowledge. Then the kernel decides (Linux, TCP):
//
//   - segments in flight and no TCP acknowledgement at all for longer than
//     the kernel's round-trip estimate allows (while a bulk transfer fills
//     the window, its retransmission timeout and the retransmission's round
//     trip; StallBound on a link that lately needed retries): a silent
//     partition. Dead at once.
//   - acknowledgements but no answer: the link is lossy (a retransmission
//     stalls the stream) or the peer process hangs. Dead after HangAfter
//     without an answer, a bound longer than a lossy link's stalls.
//
// Without kernel evidence (not TCP, or not Linux) the two cannot be told
// apart, and a peer is dead after DeadAfter without an answer.
//
// Idle peers cost almost nothing where the kernel gives evidence: with
// KeepAlive set, the kernel sends a TCP keepalive on a connection quiet for
// KeepAlive and the peer's kernel acknowledges it, all without waking
// either process. A peer that sent nothing for Interval is then checked by
// one TCP_INFO read instead of a probe: acknowledged within KeepAlive +
// MinTimeout/2, it is alive; otherwise a round of probes starts as above,
// which must go unacknowledged for 2·MinTimeout (not MinTimeout: nothing
// waits on an idle peer, and a short outage must not convict it). An
// idle peer is still probed in user space every IdleProbe, and at once
// when a call goes out to it or calls to it are outstanding, so a hung
// process is caught when it matters.
type Config struct {
	// Interval is how long a peer may send nothing before it is probed. A
	// connection that carried traffic within Interval is not probed.
	Interval time.Duration
	// MinTimeout and MaxTimeout clamp the adaptive probe timeout.
	MinTimeout, MaxTimeout time.Duration
	// RetryInterval is how often an overdue peer is probed again.
	RetryInterval time.Duration
	// StallBound: on a link that lately needed retries to get an answer
	// (loss, congestion, pauses), the kernel must see no acknowledgement for
	// this long before the peer is deemed silent; on a clean link, the
	// kernel's own round-trip estimate (see Config), clamped to
	// [MinTimeout, MaxTimeout], is enough.
	StallBound time.Duration
	// HangAfter is how long a peer may go without answering while its
	// kernel still acknowledges: then its process is deemed hung. It is
	// also the connection's TCP_USER_TIMEOUT, so writes stuck in the kernel
	// fail too. It must exceed a lossy link's longest stalls.
	HangAfter time.Duration
	// DeadAfter is how long an overdue peer may go without answering when
	// there is no kernel evidence.
	DeadAfter time.Duration
	// LateSlack: when a check runs later than this after it was due, this
	// process was paused or starved (GC, CPU, SIGSTOP). It is we who are
	// slow, so the peer is probed afresh instead of convicted (Lifeguard's
	// local-health awareness).
	LateSlack time.Duration
	// KeepAlive is the period of the kernel's TCP keepalive on an idle
	// connection, in whole seconds (the kernel's unit), at least 1 s. Where
	// the kernel gives evidence (TCP on Linux), an idle peer whose kernel
	// acknowledges these keepalives is not probed in user space (see the
	// type's doc). Zero leaves the connection's keepalive as it is and
	// probes idle peers every Interval.
	KeepAlive time.Duration
	// IdleProbe is how often an idle peer is probed in user space although
	// its kernel acknowledges keepalives: to refresh the round-trip estimate
	// and to find, in time, a process that hangs while nobody calls it. It
	// matters only with KeepAlive set.
	IdleProbe time.Duration
	// IdleProbeBudget bounds the probes a second that one Monitor sends to
	// idle peers without kernel evidence (KeepAlive zero, not TCP, not
	// Linux), which are otherwise probed every Interval. With more such
	// peers than IdleProbeBudget·Interval, each is probed about every
	// N/IdleProbeBudget instead, and a silent one is noticed that much
	// later (see the package doc). Peers with calls outstanding, or to
	// which a call goes out after a quiet spell (Watch.Kick), are probed at
	// once as ever. Zero: no bound.
	IdleProbeBudget int
}

// LAN is the default preset, for peers a few milliseconds apart.
func LAN() Config {
	return Config{
		// 250 ms: an idle link costs four tiny probes a second, and a silent
		// peer is noticed in about Interval + MinTimeout ≈ 0.5 s.
		Interval: 250 * time.Millisecond,
		// 250 ms floor: above Linux's delayed-ACK timer (40 ms, at most
		// 200 ms), so a peer's kernel always acknowledges a probe in time.
		MinTimeout: 250 * time.Millisecond,
		// 2 s ceiling: a peer whose answers are that slow is overdue anyway.
		MaxTimeout: 2 * time.Second,
		// 1.2 s on a lossy link: once the retransmission timer fires, the
		// kernel sends nothing new until an ACK comes, so a live lossy link
		// can be quiet for its backoff (200 + 400 ms after a segment is lost
		// twice). At 5% loss each way, 1.2 s of silence on a live link needs
		// some seven losses in a row (about 1 in 10^7 rounds), and a real
		// partition is still noticed within Interval + 1.2 s < 2 s.
		StallBound: 1200 * time.Millisecond,
		// 50 ms: while overdue, each retry is a new segment, which a live
		// kernel acknowledges at once even when an earlier one was lost
		// (a duplicate ACK), so a lossy link is not taken for a silent one.
		RetryInterval: 50 * time.Millisecond,
		// 5 s: a segment lost three times in a row stalls a stream about
		// 1.4 s (RTOs of 200, 400, 800 ms) and four times about 3 s; 5 s
		// passes both and still catches a hung process quickly.
		HangAfter: 5 * time.Second,
		// 1.5 s: without kernel evidence, wait out most retransmission
		// stalls (1 in 8,000 segments stalls 1.4 s at 5% loss).
		DeadAfter: 1500 * time.Millisecond,
		// 100 ms: Go's timers fire within a millisecond or two on an idle
		// machine; 100 ms late means this process was not running.
		LateSlack: 100 * time.Millisecond,
		// 1 s, the kernel's smallest: an idle peer costs the node one
		// keepalive each way a second, handled in the kernel, and one
		// TCP_INFO read (about 1 µs) instead of four probe round trips
		// (about 49 µs of CPU each). A silent idle peer is then noticed
		// within KeepAlive + MinTimeout/2 after its last acknowledgement,
		// plus a round of probes of 2·MinTimeout: about 1.7 s at worst,
		// against 0.5 s when every idle peer is probed four times a second
		// (KeepAlive zero). A peer with calls outstanding is probed as
		// before.
		KeepAlive: time.Second,
		// 30 s: a hung process is caught at the first call to it anyway;
		// an idle one can wait. 10,000 idle peers then cost about 330
		// probes a second, not 40,000.
		IdleProbe: 30 * time.Second,
		// 2,000 a second, about 10% of a core (a probe round trip costs
		// about 49 µs of CPU): up to 500 idle peers without kernel
		// evidence are probed every Interval as before; 10,000 are probed
		// every 5 s each, and cost the node 13% of a core, not 59%
		// (measured).
		IdleProbeBudget: 2000,
	}
}

// Local is for tests and for peers on one machine: quick verdicts, since
// round trips are microseconds and nothing is lost on loopback.
func Local() Config {
	return Config{
		Interval:      50 * time.Millisecond,
		MinTimeout:    100 * time.Millisecond, // above the 40 ms delayed ACK
		MaxTimeout:    500 * time.Millisecond,
		StallBound:    600 * time.Millisecond,
		RetryInterval: 20 * time.Millisecond,
		HangAfter:     time.Second,
		DeadAfter:     300 * time.Millisecond,
		LateSlack:     50 * time.Millisecond,
		// No kernel keepalive: tests want idle peers noticed within
		// Interval + MinTimeout, and hold few peers.
	}
}

// WAN is for long or anonymising paths (intercontinental links, Tor), where
// round trips near 1 s are normal and vary a lot.
func WAN() Config {
	return Config{
		Interval:      time.Second,      // probes cost more on metered links
		MinTimeout:    2 * time.Second,  // twice a Tor circuit's typical RTT
		MaxTimeout:    10 * time.Second, // Tor circuits stall for seconds when rebuilt
		StallBound:    6 * time.Second,  // RTOs start at 1 s on such paths
		RetryInterval: 250 * time.Millisecond,
		HangAfter:     30 * time.Second, // retransmission timeouts start at 1 s here
		DeadAfter:     10 * time.Second,
		LateSlack:     250 * time.Millisecond,
		KeepAlive:     3 * time.Second, // acknowledged within KeepAlive + MinTimeout/2 even at 1 s RTT
		IdleProbe:     time.Minute,     // probes cost more on metered links
		// 2,000 a second as in LAN: with an Interval of 1 s, up to 2,000
		// idle peers without kernel evidence are probed as often as ever.
		IdleProbeBudget: 2000,
	}
}

// Validate reports a Config whose bounds contradict each other.
func (c Config) Validate() error {
	switch {
	case c.Interval <= 0 || c.MinTimeout <= 0 || c.RetryInterval <= 0 || c.StallBound <= 0 || c.HangAfter <= 0 || c.DeadAfter <= 0 || c.LateSlack <= 0:
		return fmt.Errorf("liveness: every bound must be positive: %+v", c)
	case c.MaxTimeout < c.MinTimeout:
		return fmt.Errorf("liveness: MaxTimeout %v below MinTimeout %v", c.MaxTimeout, c.MinTimeout)
	case c.HangAfter < c.MaxTimeout || c.HangAfter < c.StallBound:
		return fmt.Errorf("liveness: HangAfter %v below MaxTimeout %v or StallBound %v", c.HangAfter, c.MaxTimeout, c.StallBound)
	case c.KeepAlive < 0 || (c.KeepAlive > 0 && c.KeepAlive%time.Second != 0):
		return fmt.Errorf("liveness: KeepAlive %v: the kernel counts it in whole seconds (or zero: none)", c.KeepAlive)
	case c.IdleProbeBudget < 0:
		return fmt.Errorf("liveness: IdleProbeBudget %d is negative (zero: no bound)", c.IdleProbeBudget)
	case c.KeepAlive > 0 && c.IdleProbe <= 0:
		return fmt.Errorf("liveness: KeepAlive %v needs a positive IdleProbe", c.KeepAlive)
	}
	return nil
}

// WithInterval returns c with its probe interval set to d and the other
// bounds scaled in proportion to the preset's, keeping their floors where a
// floor has a physical reason (the kernel's delayed ACK, retransmission
// stalls).
func (c Config) WithInterval(d time.Duration) Config {
	if d <= 0 || d == c.Interval {
		return c
	}
	scale := func(v, floor time.Duration) time.Duration {
		s := time.Duration(float64(v) * float64(d) / float64(c.Interval))
		return max(s, floor)
	}
	c.MinTimeout = scale(c.MinTimeout, 100*time.Millisecond)
	c.MaxTimeout = min(max(scale(c.MaxTimeout, 500*time.Millisecond), c.MinTimeout), c.HangAfter)
	c.RetryInterval = scale(c.RetryInterval, 10*time.Millisecond)
	c.DeadAfter = scale(c.DeadAfter, 300*time.Millisecond)
	c.Interval = d
	return c
}
