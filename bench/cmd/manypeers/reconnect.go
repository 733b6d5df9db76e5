package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"time"

	"github.com/tetherrpc/tether/internal/scale"
	"github.com/tetherrpc/tether/partition"
)

// runReconnect is -reconnect: a connection storm after a healed partition
// (scale.RunReconnect), in a private network namespace. It returns the
// exit code.
func runReconnect(peers, steady int, hold time.Duration, jsonOut, quiet bool) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	inside, err := partition.Reexec(ctx)
	switch {
	case !inside && err == nil:
		return 0 // the copy in its own namespace did the work
	case !inside:
		fmt.Fprintln(os.Stderr, "manypeers: -reconnect needs a private network namespace, root and iptables:", err)
		return 1
	}
	if err := scale.TuneNamespace(); err != nil {
		fmt.Fprintln(os.Stderr, "manypeers: tuning the namespace:", err)
	}
	logf := func(format string, args ...any) {
		fmt.Fprintf(os.Stderr, "%s  "+format+"\n", append([]any{time.Now().UTC().Format("15:04:05.000")}, args...)...)
	}
	if quiet {
		logf = nil
	}
	r, err := scale.RunReconnect(ctx, scale.ReconnectConfig{Peers: peers, Steady: steady, Hold: hold, Logf: logf})
	if jsonOut {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		enc.Encode(struct {
			Go     string                 `json:"go"`
			CPUs   int                    `json:"cpus"`
			Result *scale.ReconnectResult `json:"result"`
		}{runtime.Version(), runtime.NumCPU(), r})
	} else if r != nil {
		fmt.Printf("%d kept peers partitioned at once and healed, %d steady peers; loopback, %d CPUs, %s\n\n", r.Peers, r.Steady, runtime.NumCPU(), runtime.Version())
		fmt.Printf("  evicted: by the node within %.0f ms (first to last %.0f ms), by the peers within %.0f ms; healed %.0f ms later\n", r.NodeEvictMS, r.PeersEvictSpan, r.PeersEvictMS, r.HoldMS)
		fmt.Printf("  back: %d of %d; after the heal p50 %.0f ms, p90 %.0f ms, first %.0f ms, last %.0f ms (bound %.0f ms)\n", r.Back, r.Peers, r.BackP50MS, r.BackP90MS, r.WaveStartMS, r.BackMaxMS, r.BoundMS)
		fmt.Printf("  spread: at most %d back in one 100 ms window, %.1f on average\n", r.Max100ms, r.Mean100ms)
		fmt.Printf("  failed dials: %d while partitioned, %d after the heal; node handshakes refused %d, cut off %d\n", r.FailedBefore, r.FailedAfter, r.HandshakesRefused, r.HandshakesCut)
		fmt.Printf("  steady calls: p50 %.2f ms, p99 %.2f ms before (%d calls); p50 %.2f ms, p99 %.2f ms, max %.2f ms in the wave (%d calls); %d failed; %d steady peers lost\n",
			r.CallP50Before, r.CallP99Before, r.CallsBefore, r.CallP50Wave, r.CallP99Wave, r.CallMaxWave, r.CallsWave, r.CallsFailed, r.SteadyLost)
		fmt.Printf("  node CPU in the wave: %.0f%% of a core; %d lines at Warn, %d incident files\n", 100*r.WaveCPUCore, r.WarnLines, r.Incidents)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "manypeers:", err)
		return 1
	}
	return 0
}
