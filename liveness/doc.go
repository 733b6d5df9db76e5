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
//	w := mon.Watch(conn, liveness.KernelSource(conn.NetConn()), liveness.Events{
//		Suspect: func(s bool) { ... },            // overdue: route work elsewhere
//		Dead:    func(v *liveness.Verdict) { ... }, // evict
//	})
//	defer w.Stop()
//
// Process watchdog: a Watchdog times handler calls (Begin/End, about 15 ns
// and no allocation), finds calls stuck past a bound whether or not they
// honour their context, a dispatcher that makes no progress, and goroutine
// and memory growth past hard bounds or steady trends; Healthy reports it
// in sentences, and OnUnhealthy acts on a sustained episode.
package liveness
