package liveness

import (
	"errors"
	"testing"
	"time"
)

var t0 = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

// sim drives a detector on fake time. lastRecv and kernel describe the
// peer as a function of time; probes are answered (or not) by answer.
type sim struct {
	cfg      Config
	d        detector
	now      time.Time
	lastRecv time.Time
	probes   []time.Time
	suspects []int
	late     int
	// answer, if set, returns the round trip of a probe sent at t, or false.
	answer func(t time.Time) (time.Duration, bool)
	kernel func(now time.Time) (KernelInfo, bool)
	busy   bool // our calls to the peer are outstanding
	// lag, if set, is how late each check runs.
	lag     func(due time.Time) time.Duration
	answers []time.Time // pending answer arrival times
	budget  *probeBudget
}

// run steps until a verdict or until the deadline; it returns the verdict
// and when it came.
func (s *sim) run(until time.Time) (*Verdict, time.Time) {
	due := s.now
	for !s.now.After(until) {
		// deliver answers that arrived by now
		rest := s.answers[:0]
		for _, a := range s.answers {
			if !a.After(s.now) {
				if a.After(s.lastRecv) {
					s.lastRecv = a
				}
			} else {
				rest = append(rest, a)
			}
		}
		s.answers = rest
		var kernel func() (KernelInfo, bool)
		if s.kernel != nil {
			now := s.now
			kernel = func() (KernelInfo, bool) { return s.kernel(now) }
		}
		st := s.d.check(&s.cfg, s.now, due, s.lastRecv, s.busy, kernel, s.budget)
		if st.late {
			s.late++
		}
		if st.suspect != 0 {
			s.suspects = append(s.suspects, st.suspect)
		}
		if st.probe {
			s.probes = append(s.probes, s.now)
			if s.answer != nil {
				if rtt, ok := s.answer(s.now); ok {
					s.d.est.Observe(rtt)
					s.answers = append(s.answers, s.now.Add(rtt))
				}
			}
		}
		if st.dead != nil {
			return st.dead, s.now
		}
		if !st.next.After(s.now) {
			panic("detector scheduled a check in the past")
		}
		due = st.next
		s.now = st.next
		if s.lag != nil {
			s.now = s.now.Add(s.lag(due))
		}
		// an answer arriving before the next check moves it earlier only in
		// the real monitor's favour; the sim checks at the scheduled time.
	}
	return nil, s.now
}

func newSim(cfg Config) *sim { return &sim{cfg: cfg, now: t0, lastRecv: t0} }

func TestIdleHealthyPeerIsProbedOncePerInterval(t *testing.T) {
	s := newSim(LAN())
	s.answer = func(time.Time) (time.Duration, bool) { return 200 * time.Microsecond, true }
	v, _ := s.run(t0.Add(10 * time.Second))
	if v != nil {
		t.Fatalf("healthy peer convicted: %v", v)
	}
	// One learning probe, then one per interval (plus its answer's delay).
	if n := len(s.probes); n < 38 || n > 42 {
		t.Fatalf("%d probes in 10 s at a 250 ms interval", n)
	}
	if len(s.suspects) != 0 {
		t.Fatalf("suspected: %v", s.suspects)
	}
}

func TestBusyPeerIsNotProbed(t *testing.T) {
	s := newSim(LAN())
	s.answer = func(time.Time) (time.Duration, bool) { return time.Millisecond, true }
	s.run(t0) // learning probe
	s.probes = nil
	// Traffic every 100 ms: never idle for an interval.
	for i := range 100 {
		s.lastRecv = t0.Add(time.Duration(i) * 100 * time.Millisecond)
		s.now = s.lastRecv.Add(99 * time.Millisecond)
		st := s.d.check(&s.cfg, s.now, time.Time{}, s.lastRecv, false, nil, s.budget)
		if st.probe || st.dead != nil {
			t.Fatalf("busy peer probed or convicted at step %d: %+v", i, st)
		}
	}
}

// A silent partition: no answers, and the kernel sees no acknowledgement.
func TestSilentPartitionDetectedFast(t *testing.T) {
	for _, cfg := range []Config{LAN(), LAN().WithInterval(100 * time.Millisecond), Local()} {
		s := newSim(cfg)
		cut := t0.Add(3*time.Second + 17*time.Millisecond)
		s.answer = func(at time.Time) (time.Duration, bool) { return 300 * time.Microsecond, at.Before(cut) }
		s.kernel = func(now time.Time) (KernelInfo, bool) {
			return KernelInfo{LastAckRecv: now.Sub(cut), LastDataRecv: now.Sub(cut), Unacked: 3}, true
		}
		v, at := s.run(t0.Add(time.Minute))
		if v == nil || v.Kind != Silent || !errors.Is(v, ErrMissedHeartbeats) {
			t.Fatalf("interval %v: verdict %v", cfg.Interval, v)
		}
		took := at.Sub(cut)
		bound := cfg.Interval + cfg.MinTimeout + cfg.RetryInterval
		if took > bound {
			t.Fatalf("interval %v: silent peer noticed after %v, bound %v", cfg.Interval, took, bound)
		}
		t.Logf("interval %v: noticed %v after the cut (%v)", cfg.Interval, took, v)
		if len(s.suspects) != 1 || s.suspects[0] != 1 {
			t.Fatalf("suspect events %v", s.suspects)
		}
	}
}

// A lossy link: answers stall, but the kernel keeps seeing ACKs (duplicate
// ACKs of the retries). No verdict until the hang bound.
func TestLossyLinkIsNotSilent(t *testing.T) {
	cfg := LAN()
	s := newSim(cfg)
	stall := t0.Add(2 * time.Second)
	s.answer = func(at time.Time) (time.Duration, bool) {
		if at.Before(stall) || !at.Before(stall.Add(1400*time.Millisecond)) {
			return time.Millisecond, true
		}
		// The stream stalls 1.4 s (a segment lost three times), then all answers arrive.
		return stall.Add(1400 * time.Millisecond).Sub(at), true
	}
	s.kernel = func(now time.Time) (KernelInfo, bool) {
		data := now.Sub(stall)
		if end := stall.Add(1400 * time.Millisecond); !now.Before(end) {
			data = 0
		}
		return KernelInfo{LastAckRecv: 3 * time.Millisecond, LastDataRecv: data, Unacked: 2}, true
	}
	v, _ := s.run(t0.Add(20 * time.Second))
	if v != nil {
		t.Fatalf("lossy link convicted: %v", v)
	}
	if len(s.suspects) != 2 {
		t.Fatalf("want suspect then cleared, got %v", s.suspects)
	}
}

// A bulk transfer over a slow link holds the round trip steady in the
// queue (RTTVar under a millisecond) and spaces ACKs a little beyond it,
// with our probes waiting behind data the kernel holds back: not silent.
// The kernel itself waits its retransmission timeout (RTT plus at least
// 200 ms) and the retransmission's round trip before it knows more; a link
// quiet that long is silent. Without data held back, our probes go out
// and the round trip is the bound.
func TestSteadyQueueIsNotSilent(t *testing.T) {
	cfg := LAN()
	d := detector{probes: silentProbes}
	now := t0.Add(time.Minute)
	ki := KernelInfo{RTT: 331 * time.Millisecond, RTTVar: 755 * time.Microsecond, Unacked: 52, Unsent: 1 << 20}
	for _, gap := range []time.Duration{356 * time.Millisecond, 800 * time.Millisecond} {
		ki.LastAckRecv = gap
		if d.silent(&cfg, now, 2*time.Second, ki) {
			t.Fatalf("RTT %v, RTTVar %v, data held back: an ACK gap of %v taken for a silent partition", ki.RTT, ki.RTTVar, gap)
		}
	}
	ki.LastAckRecv = 2*ki.RTT + kernelMinRTO + ackGranularity
	if !d.silent(&cfg, now, 2*time.Second, ki) {
		t.Fatalf("RTT %v: no ACK for %v, past the kernel's RTO and a round trip, not taken for silence", ki.RTT, ki.LastAckRecv)
	}
	ki.Unsent, ki.LastAckRecv = 0, 356*time.Millisecond
	if !d.silent(&cfg, now, 2*time.Second, ki) {
		t.Fatalf("RTT %v, nothing held back: no ACK to our probes for %v not taken for silence", ki.RTT, ki.LastAckRecv)
	}
}

// A hung process: its kernel acknowledges, it never answers. With our calls
// outstanding it is probed while quiet and convicted after HangAfter.
func TestHungPeer(t *testing.T) {
	cfg := LAN()
	s := newSim(cfg)
	s.busy = true
	hang := t0.Add(time.Second)
	s.answer = func(at time.Time) (time.Duration, bool) { return time.Millisecond, at.Before(hang) }
	s.kernel = func(now time.Time) (KernelInfo, bool) {
		return KernelInfo{LastAckRecv: time.Millisecond, LastDataRecv: now.Sub(hang), Unacked: 0}, true
	}
	v, at := s.run(t0.Add(time.Minute))
	if v == nil || v.Kind != Hung {
		t.Fatalf("verdict %v", v)
	}
	// HangAfter counts from its last answer, up to an interval before the hang.
	if took := at.Sub(hang); took < cfg.HangAfter-cfg.Interval || took > cfg.HangAfter+cfg.Interval+cfg.RetryInterval {
		t.Fatalf("hung peer convicted after %v, want about %v", took, cfg.HangAfter)
	}
}

// An idle peer whose kernel acknowledges keepalives is not probed in user
// space but every IdleProbe; one that hangs is caught at such a probe.
func TestIdleHungPeerWaitsForIdleProbe(t *testing.T) {
	cfg := LAN()
	s := newSim(cfg)
	hang := t0.Add(time.Second)
	s.answer = func(at time.Time) (time.Duration, bool) { return time.Millisecond, at.Before(hang) }
	s.kernel = func(now time.Time) (KernelInfo, bool) {
		return KernelInfo{LastAckRecv: 300 * time.Millisecond, Unacked: 0}, true
	}
	v, at := s.run(t0.Add(2 * time.Minute))
	if v == nil || v.Kind != Hung {
		t.Fatalf("verdict %v", v)
	}
	if took := at.Sub(t0); took < cfg.IdleProbe || took > cfg.IdleProbe+cfg.HangAfter+cfg.Interval {
		t.Fatalf("idle hung peer convicted after %v, want within IdleProbe %v + HangAfter %v", took, cfg.IdleProbe, cfg.HangAfter)
	}
	early := 0
	for _, p := range s.probes {
		if p.Before(t0.Add(cfg.IdleProbe)) {
			early++
		}
	}
	if early != 1 {
		t.Fatalf("%d user-space probes before IdleProbe; want the learning probe only", early)
	}
}

// keepAliveKernel imitates the kernel of an idle connection with TCP
// keepalive: an acknowledgement every KeepAlive (plus the timer's slack)
// until cut, then none; probes after the cut stay unacknowledged.
func keepAliveKernel(cfg Config, cut time.Time, probes *[]time.Time) func(time.Time) (KernelInfo, bool) {
	period := cfg.KeepAlive + 40*time.Millisecond
	return func(now time.Time) (KernelInfo, bool) {
		last := now
		if now.After(cut) {
			last = cut
		}
		lastAck := t0.Add(last.Sub(t0) / period * period)
		ki := KernelInfo{LastAckRecv: now.Sub(lastAck)}
		for _, p := range *probes {
			if p.After(cut) {
				ki.Unacked++
			}
		}
		return ki, true
	}
}

// The default costs an idle peer one kernel check a second instead of four
// probes, and still notices it silenced within KeepAlive + MinTimeout + a
// round of probes.
func TestIdlePeerKeptAliveByKernel(t *testing.T) {
	cfg := LAN()
	for _, offset := range []time.Duration{0, 137 * time.Millisecond, 555 * time.Millisecond, 990 * time.Millisecond} {
		s := newSim(cfg)
		cut := t0.Add(20*time.Second + offset)
		s.answer = func(at time.Time) (time.Duration, bool) { return 200 * time.Microsecond, at.Before(cut) }
		s.kernel = keepAliveKernel(cfg, cut, &s.probes)
		checks := 0
		kernel := s.kernel
		s.kernel = func(now time.Time) (KernelInfo, bool) { checks++; return kernel(now) }
		v, at := s.run(t0.Add(time.Minute))
		if v == nil || v.Kind != Silent {
			t.Fatalf("cut at +%v: verdict %v", offset, v)
		}
		took := at.Sub(cut)
		if bound := cfg.KeepAlive + cfg.MinTimeout/2 + 2*cfg.MinTimeout + 2*cfg.RetryInterval; took > bound {
			t.Fatalf("cut at +%v: idle silent peer noticed after %v, bound %v", offset, took, bound)
		}
		// Before the cut: the learning probe only, and about one kernel
		// check per second of idleness.
		before := 0
		for _, p := range s.probes {
			if p.Before(cut) {
				before++
			}
		}
		if before != 1 {
			t.Fatalf("cut at +%v: %d user-space probes in 20 s of idleness, want 1", offset, before)
		}
		if checks > 60 {
			t.Fatalf("cut at +%v: %d kernel checks in 20 s of idleness", offset, checks)
		}
		t.Logf("cut at +%v: noticed after %v; %d kernel checks", offset, took, checks)
	}
}

// With KeepAlive zero, idle peers are probed every Interval, as on
// platforms without kernel evidence.
func TestKeepAliveOffProbesEveryInterval(t *testing.T) {
	cfg := LAN()
	cfg.KeepAlive = 0
	s := newSim(cfg)
	s.answer = func(time.Time) (time.Duration, bool) { return 200 * time.Microsecond, true }
	s.kernel = func(time.Time) (KernelInfo, bool) { return KernelInfo{LastAckRecv: time.Millisecond}, true }
	s.run(t0.Add(10 * time.Second))
	if n := len(s.probes); n < 38 || n > 42 {
		t.Fatalf("%d probes in 10 s at a 250 ms interval with KeepAlive off", n)
	}
}

// A peer with our calls outstanding is probed while quiet, whatever its
// kernel says of keepalives.
func TestBusyQuietPeerIsProbed(t *testing.T) {
	s := newSim(LAN())
	s.busy = true
	s.answer = func(time.Time) (time.Duration, bool) { return 200 * time.Microsecond, true }
	s.kernel = func(time.Time) (KernelInfo, bool) { return KernelInfo{LastAckRecv: time.Millisecond}, true }
	s.run(t0.Add(10 * time.Second))
	if n := len(s.probes); n < 38 {
		t.Fatalf("%d probes in 10 s of a quiet peer with calls outstanding", n)
	}
}

// Without kernel evidence, DeadAfter decides.
func TestNoKernelEvidence(t *testing.T) {
	cfg := LAN()
	s := newSim(cfg)
	cut := t0.Add(time.Second)
	s.answer = func(at time.Time) (time.Duration, bool) { return time.Millisecond, at.Before(cut) }
	v, at := s.run(t0.Add(time.Minute))
	if v == nil || v.Kind != Unanswered {
		t.Fatalf("verdict %v", v)
	}
	if took := at.Sub(cut); took < cfg.DeadAfter || took > cfg.Interval+cfg.MinTimeout+cfg.DeadAfter {
		t.Fatalf("convicted after %v", took)
	}
}

// Bytes that arrive without completing frames (kernel LastDataRecv fresh)
// are not evidence: a peer that drips them and answers nothing is hung.
func TestTrickleIsNotLife(t *testing.T) {
	cfg := LAN()
	s := newSim(cfg)
	stuck := t0.Add(time.Second)
	s.answer = func(at time.Time) (time.Duration, bool) { return time.Millisecond, at.Before(stuck) }
	s.kernel = func(now time.Time) (KernelInfo, bool) {
		return KernelInfo{LastAckRecv: time.Millisecond, LastDataRecv: 5 * time.Millisecond, Unacked: 1}, true
	}
	v, at := s.run(t0.Add(time.Minute))
	if v == nil || v.Kind != Hung || at.Sub(stuck) > cfg.HangAfter+cfg.Interval+cfg.RetryInterval {
		t.Fatalf("verdict %v after %v", v, at.Sub(stuck))
	}
}

// When our own checks run late (we were paused), we re-probe instead of
// convicting: a peer that answers the fresh probe is fine.
func TestLateChecksReprobe(t *testing.T) {
	cfg := LAN()
	s := newSim(cfg)
	s.answer = func(time.Time) (time.Duration, bool) { return time.Millisecond, true }
	s.run(t0)
	// Paused 3 s: the peer's answers sat unread; when we run again, nothing
	// has been read for 3 s.
	s.lastRecv = t0
	s.now = t0.Add(3 * time.Second)
	due := t0.Add(cfg.Interval)
	s.kernel = func(time.Time) (KernelInfo, bool) { return KernelInfo{LastAckRecv: 3 * time.Second, Unacked: 1}, true }
	st := s.d.check(&s.cfg, s.now, due, s.lastRecv, true, func() (KernelInfo, bool) { return s.kernel(s.now) }, s.budget)
	if st.dead != nil || !st.probe {
		t.Fatalf("first check after a pause: %+v", st)
	}
	// Probing had not started: this starts a round. Pause again mid-round.
	s.now = st.next.Add(time.Second)
	st = s.d.check(&s.cfg, s.now, st.next, s.lastRecv, true, func() (KernelInfo, bool) { return s.kernel(s.now) }, s.budget)
	if st.dead != nil || !st.late || !st.probe {
		t.Fatalf("late check mid-round: %+v", st)
	}
}

func TestTimeoutAdapts(t *testing.T) {
	cfg := LAN()
	var e Estimator
	if got := e.Timeout(cfg.MinTimeout, cfg.MaxTimeout); got != cfg.MaxTimeout {
		t.Fatalf("timeout before samples %v", got)
	}
	for range 50 {
		e.Observe(100 * time.Microsecond)
	}
	if got := e.Timeout(cfg.MinTimeout, cfg.MaxTimeout); got != cfg.MinTimeout {
		t.Fatalf("loopback timeout %v, want the floor", got)
	}
	for i := range 200 { // a Tor-like path: 0.8-1.2 s
		e.Observe(800*time.Millisecond + time.Duration(i%5)*100*time.Millisecond)
	}
	got := e.Timeout(cfg.MinTimeout, cfg.MaxTimeout)
	if got < time.Second || got > cfg.MaxTimeout {
		t.Fatalf("timeout %v after 1 s round trips (SRTT %v, RTTVAR %v)", got, e.SRTT(), e.RTTVAR())
	}
	// RFC 6298 arithmetic on a known sequence.
	var f Estimator
	f.Observe(100 * time.Millisecond) // SRTT 100, RTTVAR 50
	f.Observe(200 * time.Millisecond) // RTTVAR 3/4·50 + 1/4·100 = 62.5; SRTT 7/8·100 + 1/8·200 = 112.5
	if f.SRTT() != 112500*time.Microsecond || f.RTTVAR() != 62500*time.Microsecond {
		t.Fatalf("SRTT %v RTTVAR %v", f.SRTT(), f.RTTVAR())
	}
	if to := f.Timeout(0, time.Hour); to != 362500*time.Microsecond {
		t.Fatalf("timeout %v, want 362.5ms", to)
	}
}

// A slow peer (answers take 400 ms, steadily) is learnt: its timeout grows
// and it is never suspected.
func TestSlowPeerIsNotSuspected(t *testing.T) {
	s := newSim(LAN())
	s.answer = func(time.Time) (time.Duration, bool) { return 400 * time.Millisecond, true }
	s.kernel = func(time.Time) (KernelInfo, bool) { return KernelInfo{LastAckRecv: time.Millisecond, Unacked: 1}, true }
	if v, _ := s.run(t0.Add(30 * time.Second)); v != nil {
		t.Fatalf("slow peer convicted: %v", v)
	}
	if len(s.suspects) > 2 { // the first answers may come before the estimator has learnt
		t.Fatalf("slow peer suspected %d times", len(s.suspects)/2)
	}
}

func TestPresetsValidate(t *testing.T) {
	for name, c := range map[string]Config{"LAN": LAN(), "Local": Local(), "WAN": WAN(), "LAN/100ms": LAN().WithInterval(100 * time.Millisecond)} {
		if err := c.Validate(); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	if err := (Config{}).Validate(); err == nil {
		t.Error("zero Config validated")
	}
}

// On a link that lately needed retries, the kernel must be silent for
// StallBound before the peer is convicted; a real partition is still
// noticed within Interval + StallBound.
func TestStalledLinkWaitsLonger(t *testing.T) {
	cfg := LAN()
	s := newSim(cfg)
	stall := t0.Add(time.Second)
	cut := t0.Add(10 * time.Second)
	s.answer = func(at time.Time) (time.Duration, bool) {
		if at.After(stall) && at.Before(stall.Add(time.Second)) {
			return stall.Add(time.Second).Sub(at), true // answers stall for a second
		}
		return 300 * time.Microsecond, at.Before(cut)
	}
	s.kernel = func(now time.Time) (KernelInfo, bool) {
		if now.After(cut) {
			return KernelInfo{LastAckRecv: now.Sub(cut), LastDataRecv: now.Sub(cut), Unacked: 4}, true
		}
		return KernelInfo{LastAckRecv: time.Millisecond, LastDataRecv: time.Millisecond, Unacked: 1}, true
	}
	v, at := s.run(t0.Add(time.Minute))
	if v == nil || v.Kind != Silent {
		t.Fatalf("verdict %v", v)
	}
	took := at.Sub(cut)
	if took < cfg.StallBound || took > cfg.Interval+cfg.StallBound+cfg.RetryInterval {
		t.Fatalf("partition of a stalled link noticed after %v, want between %v and %v", took, cfg.StallBound, cfg.Interval+cfg.StallBound+cfg.RetryInterval)
	}
}

// During bulk transfer, probes wait behind the data, so their round trips
// (and the adaptive timeout) swell; the kernel's evidence still convicts a
// silent peer on the kernel's time scale.
func TestSilentDuringBulkTransfer(t *testing.T) {
	cfg := LAN()
	s := newSim(cfg)
	cut := t0.Add(5 * time.Second)
	s.answer = func(at time.Time) (time.Duration, bool) {
		return 1500 * time.Millisecond, at.Add(1500 * time.Millisecond).Before(cut)
	}
	s.kernel = func(now time.Time) (KernelInfo, bool) {
		ki := KernelInfo{LastAckRecv: 5 * time.Millisecond, Unacked: 40, RTT: 30 * time.Millisecond, RTTVar: 10 * time.Millisecond}
		if now.After(cut) {
			ki.LastAckRecv = now.Sub(cut)
		}
		ki.LastDataRecv = ki.LastAckRecv
		return ki, true
	}
	v, at := s.run(t0.Add(time.Minute))
	if v == nil || v.Kind != Silent {
		t.Fatalf("verdict %v", v)
	}
	if took := at.Sub(cut); took > 2*time.Second {
		t.Fatalf("noticed after %v", took)
	}
}

// A node whose checks all run late (starved for good, as in a mass
// failure) still convicts a peer whose kernel acknowledges nothing: the
// kernel's evidence does not depend on our running.
func TestLateChecksStillConvictSilent(t *testing.T) {
	cfg := LAN()
	s := newSim(cfg)
	s.busy = true
	cut := t0.Add(2 * time.Second)
	s.answer = func(at time.Time) (time.Duration, bool) { return time.Millisecond, at.Before(cut) }
	s.kernel = func(now time.Time) (KernelInfo, bool) {
		if now.Before(cut) {
			return KernelInfo{LastAckRecv: time.Millisecond}, true
		}
		return KernelInfo{LastAckRecv: now.Sub(cut), Unacked: 3}, true
	}
	s.lag = func(time.Time) time.Duration { return 2 * cfg.LateSlack }
	v, at := s.run(t0.Add(time.Minute))
	if v == nil || v.Kind != Silent {
		t.Fatalf("verdict %v after %d late checks", v, s.late)
	}
	if took := at.Sub(cut); took > 3*time.Second {
		t.Fatalf("convicted %v after the cut, with every check late", took)
	}
	t.Logf("every check %v late: convicted %v after the cut (%d late checks)", 2*cfg.LateSlack, at.Sub(cut), s.late)
}

// An idle peer whose keepalive acknowledgement is lost once, and whose
// answer to the probe that follows is late (a lost segment, retransmitted),
// is not convicted: it owes answers from that round on, not from the last
// bytes it sent, which for a peer kept alive by the kernel may be long ago.
func TestIdlePeerLostKeepAliveIsNotConvicted(t *testing.T) {
	cfg := LAN()
	s := newSim(cfg)
	lost := t0.Add(20 * time.Second) // a keepalive acknowledgement lost about then
	s.answer = func(at time.Time) (time.Duration, bool) {
		if at.After(lost) && at.Before(lost.Add(3*time.Second)) {
			return 400 * time.Millisecond, true // the answer retransmitted after an RTO
		}
		return 200 * time.Microsecond, true
	}
	s.kernel = func(now time.Time) (KernelInfo, bool) {
		if now.Before(lost) || now.After(lost.Add(3*time.Second)) {
			return KernelInfo{LastAckRecv: 100 * time.Millisecond}, true
		}
		if p := s.probes[len(s.probes)-1]; p.After(lost) {
			return KernelInfo{LastAckRecv: now.Sub(p) / 2}, true // the probe's segment is acknowledged
		}
		return KernelInfo{LastAckRecv: cfg.KeepAlive + 300*time.Millisecond}, true
	}
	v, at := s.run(t0.Add(time.Minute))
	if v != nil {
		t.Fatalf("an idle live peer convicted %v after its acknowledgement was lost: %v", at.Sub(lost), v)
	}
	escalated := false
	for _, p := range s.probes {
		escalated = escalated || (p.After(lost) && p.Before(lost.Add(3*time.Second)))
	}
	if !escalated {
		t.Fatal("the lost acknowledgement started no round of probes: the test tests nothing")
	}
}
