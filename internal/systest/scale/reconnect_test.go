package scale_test

import (
	"context"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/tetherrpc/tether/internal/scale"
	"github.com/tetherrpc/tether/internal/ttest"
	"github.com/tetherrpc/tether/partition"
)

// TestReconnectStorm partitions N kept peers (each a peer.Registry of its
// own, in a second process, keeping the node's address with the default
// backoff) from a node at once, heals the partition once both sides have
// evicted them all, and asserts that the node admits them all back
// steadily: every one back within the backoff's bound plus slack, no
// handshake refused, no 100 ms window holding a wave of them, and the
// calls of established peers that were never partitioned (in a third
// process) keep their latency: p99 within twice that before the partition
// plus 10 ms, unless a busy machine held the node off the CPU meanwhile
// for longer than that (then it skips, saying so).
//
// N is 2,000; 500 with -short; 200 under the race detector;
// TETHER_RECONNECT_PEERS sets it.
func TestReconnectStorm(t *testing.T) {
	if !partition.Isolated(t) {
		return
	}
	if err := scale.TuneNamespace(); err != nil {
		t.Logf("tuning the namespace: %v", err)
	}
	peers := 2000
	switch {
	case raceEnabled:
		peers = 200
	case testing.Short():
		peers = 500
	}
	if v := os.Getenv("TETHER_RECONNECT_PEERS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			t.Fatalf("TETHER_RECONNECT_PEERS=%q: want a positive number", v)
		}
		peers = n
	}
	const slack = 5 * time.Second
	bound := scale.BackBound(0) + slack
	stalls := ttest.WatchStalls(25 * time.Millisecond)
	defer stalls.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	r, err := scale.RunReconnect(ctx, scale.ReconnectConfig{Peers: peers, BackTimeout: bound, Logf: t.Logf})
	if r != nil {
		t.Logf("arrivals by 100 ms after the heal: %v", r.Arrivals)
	}
	if err != nil {
		t.Fatal(err)
	}
	if r.BackMaxMS > ms(bound) {
		t.Errorf("the last kept peer was back %.0f ms after the heal, over the bound of %v", r.BackMaxMS, bound)
	}
	// Handshakes that failed because their dialer gave up (its dial
	// timeout, begun while partitioned, ran out before the node read its
	// hello) are retried, and every peer came back; any other failure is
	// the node refusing a good peer.
	for why, n := range r.RefusedWhy {
		switch why {
		case "EOF", "connection reset by peer", "i/o timeout":
			t.Logf("%d handshakes failed after the heal: %s (the dialer gave up; it came back)", n, why)
		default:
			t.Errorf("the node refused %d handshakes of good peers after the heal: %s", n, why)
		}
	}
	if r.HandshakesCut != 0 {
		t.Logf("the node cut off %d handshakes after the heal (slots full); their peers came back", r.HandshakesCut)
	}
	// A wave: a large share of the peers in one 100 ms window. Measured: at
	// most a quarter (the peers' evictions, and so their redials' SYN
	// retransmissions, bunch on the kernel's keepalive ticks).
	if most := r.Max100ms; float64(most) > 0.4*float64(peers) {
		t.Errorf("%d of %d peers came back in one 100 ms window (%.1f on average): a wave", most, peers, r.Mean100ms)
	}
	if r.SteadyLost != 0 || r.CallsFailed != 0 {
		t.Errorf("established peers: %d evicted, %d calls failed during the storm", r.SteadyLost, r.CallsFailed)
	}
	if r.CallsBefore == 0 || r.CallsWave == 0 {
		t.Fatalf("established peers' calls: %d timed before the partition, %d in the wave", r.CallsBefore, r.CallsWave)
	}
	limit := 2*r.CallP99Before + 10
	if r.CallP99Wave > limit {
		// The machine's doing, not the node's, if this process stalled in
		// the wave, or if its threads waited on the kernel's run queues
		// (runnable, held off the CPU by other work) longer than the
		// latency went over.
		stalled := stalls.Overlap(r.HealAt, r.BackAt)
		if stalled > 0 || r.RunWaitMS > r.CallP99Wave-limit {
			t.Skipf("established peers' calls: p99 %.2f ms in the wave against %.2f ms before, over %.2f ms; but this process stalled %v and its threads were held off the CPU %.0f ms in the %.0f ms of the wave (a busy machine), so not judged",
				r.CallP99Wave, r.CallP99Before, limit, stalled, r.RunWaitMS, ms(r.BackAt.Sub(r.HealAt)))
		}
		t.Errorf("established peers' calls: p99 %.2f ms in the wave against %.2f ms before, over the bound of %.2f ms", r.CallP99Wave, r.CallP99Before, limit)
	}
}
