// Package liveness decides when a peer is dead, and when this process is
// not well.
//
// Failure detection: a Monitor watches any number of peers with one
// goroutine and a heap of timers. Any inbound byte is evidence of life; a
// peer quiet for Config.Interval is probed; the probe's timeout adapts to
// measured round trips (Estimator, RFC 6298); on Linux the kernel's
// TCP_INFO (KernelSource) separates a silent partition (no TCP
// acknowledgement at all: dead at once) from a lossy link or a hung process
// (acknowledgements but no answer: wait for HangAfter). Checks that run
// late mean this process was paused, so the peer is probed again rather
// than convicted. The logic (detector) is pure over the times it is given
// and is tested on a fake Clock. Presets LAN (the default), Local and WAN
// carry the reason for each value.
//
//	mon, _ := liveness.NewMonitor(liveness.LAN(), nil)
//	liveness.SetKeepAlive(conn.NetConn(), mon.Config().KeepAlive)
//	w := mon.Watch(conn, liveness.KernelSource(conn.NetConn()), liveness.Events{
//		Suspect: func(s bool) { ... },            // no answer in time: route work elsewhere
//		Dead:    func(v *liveness.Verdict) { ... }, // evict
//	})
//	defer w.Stop()
//
// # Idle peers at scale
//
// A node with thousands of peers has nearly all of them idle, so the cost
// of an idle peer is what limits it. Probing each idle peer every Interval
// from user space cost, measured on a 2-core machine with the peers in a
// second process: about 49 µs of CPU per probe round trip (two syscalls,
// about 17 µs, and the rest goroutine hand-offs through yamux's send loop
// and the connection's writer), so 2,000 idle peers took 39% of a core and
// 10,000 more than a core, with false evictions from the starvation.
//
// The alternatives, measured or reckoned the same way:
//
//   - Cheaper probes (fewer hand-offs, batched timers): at best the two
//     syscalls, about 17 µs; four a second for 10,000 peers is still 68%
//     of a core. Not enough on its own.
//   - Probes from one end only, or idle peers probed once a second: a
//     quarter or an eighth of the cost, still 10-30% of a core at 10,000,
//     and a silent idle peer noticed only after a second or more anyway.
//   - The kernel's TCP keepalive (chosen): the kernel sends a keepalive on
//     a connection quiet for KeepAlive and the peer's kernel acknowledges
//     it, without waking either process; the acknowledgement shows in
//     TCP_INFO's last-ACK time. An idle peer is then checked by one
//     TCP_INFO read (about 1 µs), scheduled for the instant its
//     acknowledgement could next be overdue, so about once a KeepAlive;
//     checks due within 10 ms share one wake-up of the Monitor. 10,000
//     idle peers: 6% of a core (from 110%); 2,000: 2% (from 39%).
//
// What it costs: the kernel counts keepalive in whole seconds, so a silent
// idle peer is noticed within KeepAlive + MinTimeout after its last
// acknowledgement plus a round of probes, 0.78-1.68 s at the default (p50
// 1.28 s) against 0.25-0.5 s when every idle peer is probed four times a
// second (KeepAlive zero). A peer with calls outstanding, or to which a
// call goes out after a quiet spell, is probed as before and noticed within
// 0.5 s, which is what callers wait on. A hung process whose kernel still
// acknowledges is found at the first call to it, or by the user-space probe
// every IdleProbe (30 s).
//
// Where there is no kernel evidence (KeepAlive zero, not TCP: in-memory
// pipes, Unix sockets, a TLS conn that does not unwrap; not Linux), only a
// probe tells whether an idle peer lives, and probing each every Interval
// does not scale: measured with 10,000 such peers in a second process,
// 59% of a core. So the probes of those peers are bounded per Monitor by
// Config.IdleProbeBudget (2,000 a second in LAN, about 10% of a core): an
// idle peer due for a probe takes the next free slot, 1/budget after the
// last one handed out, and is probed when its slot comes, so N such peers
// are each probed about every max(Interval, N/budget). Measured again:
// 8.3% of a core (the probes, and a look at each waiting peer every
// second). A silent idle peer without kernel evidence is then noticed
// within about max(Interval, N/budget) + DeadAfter: 1.75 s up to 500 such
// peers, as before; 6.5 s at 10,000 (measured 1.2-5.0 s, p50 3.5 s). Nothing
// that waits on a peer waits for a slot: a peer with calls outstanding,
// or to which a call goes out after a quiet spell (Watch.Kick), is probed
// at once and noticed within Interval + DeadAfter as before (a waiting
// peer with calls outstanding that was not kicked, having sent something
// just before the call, is found within a second); the first probe of a new
// peer, the rounds of probes of an overdue one, and idle peers with kernel
// evidence are not counted against the budget. Slots are handed out
// first come, first served, and unused ones are not saved up, so the
// budget is never exceeded in a burst.
//
// A probe itself is a yamux ping (package rpc): the peer's session reader
// answers it, so it wakes neither side's control-stream reader nor any
// handler, and it costs about 20 µs of CPU a round trip where a frame on
// the control stream cost 28-35 µs (measured with 2,000 peers probed with
// no bound: 16-17% of a core against 22-28%).
//
// The rest of an idle connection's cost is in package rpc: its control
// stream's reader parks after a second of quiet and the stream acceptor
// runs only while streams are opened, so an idle connection runs only
// yamux's two goroutines.
//
// Process watchdog: a Watchdog times handler calls (Begin/End, about 15 ns
// and no allocation), finds calls stuck past a bound whether or not they
// honour their context, a dispatcher that makes no progress, and goroutine
// and memory growth past hard bounds or steady trends; Healthy reports it
// in sentences, and OnUnhealthy acts on a sustained episode.
package liveness
