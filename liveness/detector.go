package liveness

import (
	"errors"
	"fmt"
	"time"
)

// ErrMissedHeartbeats matches every *Verdict: the peer stopped answering.
var ErrMissedHeartbeats = errors.New("missed heartbeats")

// Kind says what the evidence showed when a peer was declared dead.
type Kind int

const (
	// Silent: no answer and no TCP acknowledgement: packets vanish, as in a
	// silent partition (cable cut, NAT dropped, laptop unplugged).
	Silent Kind = iota + 1
	// Hung: the peer's kernel acknowledges, but its process does not answer.
	Hung
	// Unanswered: no answer, and no kernel evidence to say more.
	Unanswered
)

// Verdict is the cause of a liveness eviction. It matches ErrMissedHeartbeats.
type Verdict struct {
	Kind    Kind
	Silence time.Duration // how long the peer had sent nothing
}

func (v *Verdict) Error() string {
	s := fmt.Sprintf("missed heartbeats for %v", v.Silence.Round(time.Millisecond))
	switch v.Kind {
	case Silent:
		return s + ", and no TCP acknowledgement either (silent partition)"
	case Hung:
		return s + ", though its kernel acknowledges (process hung or stream stalled)"
	}
	return s
}

// Is reports whether target is ErrMissedHeartbeats.
func (v *Verdict) Is(target error) bool { return target == ErrMissedHeartbeats }

// silentProbes is how many probes, RetryInterval apart, must all go
// unacknowledged by the peer's kernel before it is deemed silent. On a live
// link each probe is acknowledged (at once, by a duplicate ACK, if an earlier
// segment was lost), so with 5% loss each way all three fail about once in
// a thousand overdue rounds, and an overdue round is itself rare.
const silentProbes = 3

// detector is one peer's failure detector: pure logic over the times and
// evidence it is given, so it is tested without sleeping.
type detector struct {
	est       Estimator
	probing   time.Time // when the current round of probing began; zero if none
	idleRound bool      // the round began because an idle peer's keepalives went unacknowledged
	askedAt   time.Time // since when the peer owes an answer: the round's start, or its last bytes if calls were waiting
	lastProbe time.Time
	probes    int // probes sent this round
	suspect   bool
	urgent    bool      // Kick: start a round now, idle or not
	stalledAt time.Time // when an answer last needed retries
	slot      time.Time // when the probe budget lets this idle peer be probed; zero if none is held
}

// step is what the detector decided at one check.
type step struct {
	probe       bool      // send a probe now
	suspect     int       // +1: became suspect; -1: no longer suspect
	late        bool      // the check ran late: we re-probed rather than judged
	kernelCheck bool      // an idle peer was found alive by its kernel's acknowledgements
	deferred    bool      // an idle peer's probe waits for its slot in the probe budget
	dead        *Verdict  // non-nil: evict
	next        time.Time // when to check again
}

// check decides what to do at now. due is when the check was meant to run;
// lastRecv is when bytes last arrived; busy says our calls to the peer are
// outstanding; kernel, if not nil, reads the kernel's evidence (it is called
// only for an idle peer, and while a round of probing is overdue); budget,
// if not nil, spaces out the probes of idle peers without kernel evidence.
func (d *detector) check(cfg *Config, now, due, lastRecv time.Time, busy bool, kernel func() (KernelInfo, bool), budget *probeBudget) (s step) {
	if d.est.Samples() == 0 && d.lastProbe.IsZero() {
		s.probe = true // learn the round trip at once
		d.lastProbe = now
	}
	urgent := d.urgent
	d.urgent = false
	if !d.probing.IsZero() && lastRecv.After(d.probing) {
		// It answered (or sent anything at all). An answer that needed
		// retries means the link loses or stalls packets: remember it.
		if d.probes > 1 {
			d.stalledAt = now
		}
		d.endRound(&s)
	}
	idle := now.Sub(lastRecv)
	timeout := d.est.Timeout(cfg.MinTimeout, cfg.MaxTimeout)
	if d.probing.IsZero() {
		if idle < cfg.Interval && !urgent {
			s.next = lastRecv.Add(cfg.Interval)
			return s
		}
		stale := false
		if !urgent && !busy {
			switch d.keptAlive(cfg, &s, now, kernel) {
			case kernelAlive:
				return s
			case kernelStale:
				stale = true
			case kernelNone:
				// Nothing but a probe tells whether this idle peer lives:
				// it waits for its slot in the budget, and is looked at
				// every waitingLook meanwhile, so that calls outstanding
				// to it (busy) are not kept waiting for the slot.
				if d.slot.IsZero() {
					d.slot = budget.take(now)
				}
				if now.Before(d.slot) {
					s.deferred = true
					s.next = earliest(d.slot, now.Add(max(cfg.Interval, waitingLook)))
					return s
				}
			}
		}
		d.slot = time.Time{}
		d.startRound(&s, now)
		d.idleRound = stale
		// A peer nobody asked anything owes answers from this round on; one
		// with calls waiting, since it last sent anything.
		d.askedAt = now
		if busy {
			d.askedAt = lastRecv
		}
		s.next = now.Add(min(timeout, cfg.RetryInterval))
		return s
	}
	if !due.IsZero() && now.Sub(due) > cfg.LateSlack {
		// This check ran late: we were paused or starved, not the peer. The
		// answer may be in our socket buffer already: probe afresh. But the
		// kernel acknowledges whether we run or not: if it saw nothing from
		// the peer, our lateness is no excuse (a node starved for good, say
		// by a mass failure, would otherwise convict no one).
		if kernel != nil {
			if ki, ok := kernel(); ok && d.silent(cfg, now, now.Sub(d.probing), ki) {
				s.dead = &Verdict{Kind: Silent, Silence: idle}
				return s
			}
		}
		s.late = true
		d.startRound(&s, now)
		s.next = now.Add(min(timeout, cfg.RetryInterval))
		return s
	}
	waited := now.Sub(d.probing)
	// Once an answer is later than usual, probe again every RetryInterval:
	// fresh segments for the peer's kernel to acknowledge.
	if waited >= max(cfg.RetryInterval, d.est.SRTT()+2*d.est.RTTVAR()) && now.Sub(d.lastProbe) >= cfg.RetryInterval {
		d.sendProbe(&s, now)
	}
	if waited >= timeout && !d.suspect {
		d.suspect = true
		s.suspect = +1
	}
	if waited < min(timeout, cfg.MinTimeout) {
		s.next = earliest(d.probing.Add(min(timeout, cfg.MinTimeout)), now.Add(cfg.RetryInterval))
		return s
	}
	var ki KernelInfo
	ok := false
	if kernel != nil {
		ki, ok = kernel()
	}
	// (Bytes in our kernel are not evidence: a peer that drips bytes
	// without completing frames must not look alive. Our own starvation is
	// caught by the late-check rule above.)
	owed := now.Sub(d.askedAt)
	switch {
	case ok && d.silent(cfg, now, waited, ki):
		s.dead = &Verdict{Kind: Silent, Silence: idle}
	case owed >= cfg.HangAfter && ok:
		s.dead = &Verdict{Kind: Hung, Silence: idle}
	case owed >= cfg.HangAfter || (!ok && waited >= max(timeout, cfg.DeadAfter)):
		s.dead = &Verdict{Kind: Unanswered, Silence: idle}
	}
	s.next = now.Add(cfg.RetryInterval)
	return s
}

// silent reports whether the kernel's evidence shows a silent partition:
// segments in flight, fresh probes among them (a round of at least
// MinTimeout), and no acknowledgement at all for longer than a live path
// allows. How long that is comes from the kernel's own estimates:
//
//   - our probes go out as fresh segments, which a live kernel acknowledges
//     within its round trip (RTT + 4·RTTVar), at once by a duplicate ACK
//     if an earlier segment was lost;
//   - but while the kernel holds back data (Unsent: a bulk transfer filling
//     the peer's window or the congestion window), the probes wait behind
//     it and the ACKs come on the kernel's clock: after a lost tail, only
//     once its retransmission timeout (RTT + 4·RTTVar, the variance term at
//     least kernelMinRTO) fires and the retransmission makes its round
//     trip. (A queue that holds the round trip steady drives RTTVar under
//     a millisecond: under the first bound, an ACK 356 ms after one with a
//     round trip of 331 ms convicted a live peer.)
//   - StallBound on a link that has lately needed retries (loss,
//     congestion, pauses), whose live stalls are longer.
func (d *detector) silent(cfg *Config, now time.Time, waited time.Duration, ki KernelInfo) bool {
	bound := ki.RTT + 4*ki.RTTVar
	if ki.Unsent > 0 {
		rto := ki.RTT + max(4*ki.RTTVar, kernelMinRTO)
		bound = max(bound, rto+ki.RTT)
	}
	bound = min(max(bound, cfg.MinTimeout), cfg.MaxTimeout)
	if !d.stalledAt.IsZero() && now.Sub(d.stalledAt) < stallMemory {
		bound = max(bound, cfg.StallBound)
	}
	// Segments in flight: our probes, or (during a bulk transfer, when our
	// probes wait behind the data and are slow to go out) the data itself.
	inFlight := ki.Unacked >= silentProbes || (ki.Unacked > 0 && d.probes >= silentProbes)
	// A round begun for an idle peer's missing keepalive acknowledgement
	// waits twice as long: nothing waits on that peer, and a short outage
	// (a burst of drops in a host's input backlog, say) must not convict it.
	minWait := cfg.MinTimeout
	if d.idleRound {
		minWait *= 2
	}
	return inFlight && waited >= minWait && ki.LastAckRecv+ackGranularity >= bound
}

// What the kernel says of an idle peer (keptAlive).
type kernelWord int

const (
	kernelNone  kernelWord = iota // no evidence: no keepalive, not TCP, not Linux
	kernelAlive                   // keepalives acknowledged lately: no probe needed now
	kernelStale                   // keepalives not acknowledged in time: probe
	kernelProbe                   // probe anyway: IdleProbe is due, or data is in flight
)

// keptAlive reports whether an idle peer's kernel acknowledged our kernel's
// keepalives lately (kernelAlive), so that no probe is needed now, and then
// schedules the next look at the instant the acknowledgement could next be
// overdue. If the acknowledgements are overdue (kernelStale), the round of
// probes that follows is one for an idle peer (idleRound).
func (d *detector) keptAlive(cfg *Config, s *step, now time.Time, kernel func() (KernelInfo, bool)) kernelWord {
	if cfg.KeepAlive <= 0 || kernel == nil {
		return kernelNone
	}
	if now.Sub(d.lastProbe) >= cfg.IdleProbe {
		return kernelProbe
	}
	ki, ok := kernel()
	switch {
	case !ok:
		return kernelNone
	case ki.Unacked > 0:
		return kernelProbe // data in flight: probe
	}
	bound := keepAliveBound(cfg)
	if ki.LastAckRecv >= bound {
		return kernelStale
	}
	s.kernelCheck = true
	s.next = earliest(now.Add(max(bound-ki.LastAckRecv, cfg.RetryInterval)), d.lastProbe.Add(cfg.IdleProbe))
	return kernelAlive
}

// keepAliveBound is how old an idle peer's last acknowledgement may be
// before a round of probes starts: a keepalive every KeepAlive, late by the
// kernel's timer slack (at most 64 ms for a 1 s timer), acknowledged within
// a round trip; half of MinTimeout covers both.
func keepAliveBound(cfg *Config) time.Duration { return cfg.KeepAlive + cfg.MinTimeout/2 }

// waitingLook is how often an idle peer waiting for its slot in the probe
// budget is looked at, for calls outstanding to it. A call that goes out
// to a peer quiet for half an Interval kicks a check at once (Watch.Kick),
// so this matters only for a call to a peer that sent something just
// before: its loss is noticed up to waitingLook - Interval later than at
// full rate. Looking every Interval instead cost 8% of a core at 10,000
// waiting peers (40,000 looks a second); every second, 2%.
const waitingLook = time.Second

// stallMemory is how long a link that needed retries is treated as one
// that may stall.
const stallMemory = 5 * time.Minute

func (d *detector) startRound(s *step, now time.Time) {
	d.probing, d.probes = now, 0
	d.sendProbe(s, now)
}

// kernelMinRTO is Linux's floor on the variance term of its
// retransmission timeout (TCP_RTO_MIN).
const kernelMinRTO = 200 * time.Millisecond

// ackGranularity covers the kernel's millisecond (and jiffy) rounding of
// tcpi_last_ack_recv.
const ackGranularity = 10 * time.Millisecond

func (d *detector) sendProbe(s *step, now time.Time) {
	s.probe = true
	d.lastProbe = now
	d.probes++
}

// endRound: the peer answered (or sent something).
func (d *detector) endRound(s *step) {
	d.probing, d.probes, d.idleRound = time.Time{}, 0, false
	if d.suspect {
		d.suspect = false
		s.suspect = -1
	}
}

func earliest(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}
