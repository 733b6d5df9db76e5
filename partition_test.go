package tether_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap/zapcore"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/internal/ttest"
	"github.com/tetherrpc/tether/internal/ttest/ttnode"
	"github.com/tetherrpc/tether/liveness"
	"github.com/tetherrpc/tether/partition"
	"github.com/tetherrpc/tether/peer"
	"github.com/tetherrpc/tether/rpc"
)

// The heart of tether: a real silent partition (iptables DROP in a private
// network namespace) with hundreds of calls outstanding. The peer is evicted
// in about a second at the default heartbeat, every call fails at once with
// ErrDeadReference, the other side cancels its handlers, one line is logged,
// and the peer is reconnected after the heal.
func TestSilentPartitionKernel(t *testing.T) {
	if !partition.Isolated(t) {
		return
	}
	zl, logs := observed()
	a := ttnode.Start(t, tether.WithLogger(zl)) // default heartbeat: 250 ms
	b := ttnode.Start(t, tether.WithRPCConfig(rpc.Config{MaxConcurrentCalls: 5000}))
	running, cancelled := hold(b)
	ev := ttnode.Subscribe(t, a.Peers())
	evb := ttnode.Subscribe(t, b.Peers())
	stop := a.Peers().Keep(b.Addr().String())
	defer stop()
	p := ev.Next(t, peer.Connected, 5*time.Second).Peer
	waitFor(t, func() bool { _, ok := b.Peers().Get(a.ID()); return ok }, "b to register a")

	const n = 500
	errs := make(chan error, n)
	for range n {
		go func() { errs <- p.Call(context.Background(), "hold", nil, nil) }()
	}
	waitFor(t, func() bool { return running.Load() == n }, "calls to reach b")
	time.Sleep(600 * time.Millisecond) // an idle stretch: a few probes teach a the round trip

	t0 := time.Now()
	heal, err := partition.DropPort(ttnode.Port(t, b))
	if err != nil {
		t.Fatal(err)
	}
	d := ev.Next(t, peer.Disconnected, 10*time.Second)
	detect := time.Since(t0)
	var v *liveness.Verdict
	if !errors.As(d.Cause, &v) || v.Kind != liveness.Silent || d.Calls != n {
		t.Fatalf("eviction %+v (cause %v)", d, d.Cause)
	}
	t.Logf("silent peer evicted %v after the partition (%v); %d calls failed", detect, d.Cause, d.Calls)
	if detect > time.Second {
		t.Errorf("detection took %v, floor 1s", detect)
	}
	for range n {
		select {
		case err := <-errs:
			if !errors.Is(err, rpc.ErrDeadReference) || !errors.Is(err, liveness.ErrMissedHeartbeats) {
				t.Fatalf("call error %v", err)
			}
		case <-time.After(time.Second):
			t.Fatal("a call outlived the eviction")
		}
	}
	// b, cut off too, evicts a by itself and cancels the handlers serving it.
	db := evb.Next(t, peer.Disconnected, 10*time.Second)
	if !errors.Is(db.Cause, liveness.ErrMissedHeartbeats) {
		t.Fatalf("b's eviction of a: %v", db.Cause)
	}
	for range n {
		select {
		case <-cancelled:
		case <-time.After(5 * time.Second):
			t.Fatal("b's handlers were not cancelled")
		}
	}
	a.Logger().Sync() // the node's log goes through incident.Async
	if w := logs.FilterLevelExact(zapcore.WarnLevel).All(); len(w) != 1 || w[0].Message != "peer evicted" {
		t.Fatalf("want one Warn line, got %+v", w)
	}

	if err := heal(); err != nil {
		t.Fatal(err)
	}
	t1 := time.Now()
	c := ev.Next(t, peer.Connected, 20*time.Second)
	if !c.Reconnect || c.ID != b.ID() {
		t.Fatalf("reconnect %+v", c)
	}
	t.Logf("reconnected %v after the heal", time.Since(t1))
	if err := c.Peer.Call(context.Background(), "nope", nil, nil); !errors.Is(err, rpc.ErrUnknownMethod) {
		t.Fatalf("call after reconnecting: %v", err)
	}
}

// Detection time of an idle peer over repeated partitions: at the default
// configuration, where an idle peer is kept alive by the kernel's TCP
// keepalive (floor 2 s), and with user-space probes every heartbeat
// (KeepAlive off) at 250 ms and 100 ms (floor 1 s). TETHER_TRIALS sets the
// number of trials (default 8).
func TestSilentPartitionDetectionTimes(t *testing.T) {
	if !partition.Isolated(t) {
		return
	}
	trials := ttnode.EnvInt("TETHER_TRIALS", 8)
	if testing.Short() {
		trials = 2
	}
	probed := func(hb time.Duration) liveness.Config {
		c := liveness.LAN().WithInterval(hb)
		c.KeepAlive = 0
		return c
	}
	for _, mode := range []struct {
		name  string
		cfg   liveness.Config
		floor time.Duration
	}{
		{"default (kernel keepalive)", liveness.LAN(), 2 * time.Second},
		{"probes every 250ms", probed(250 * time.Millisecond), time.Second},
		{"probes every 100ms", probed(100 * time.Millisecond), time.Second},
	} {
		a := ttnode.Start(t, tether.WithLiveness(mode.cfg))
		var times []time.Duration
		for i := range trials {
			b := ttnode.Start(t)
			b.Handle("ping", rpc.Func(echo))
			ev := ttnode.Subscribe(t, a.Peers())
			p := dial(t, a, b)
			// Traffic, then quiet for a random part of a keepalive period,
			// as real partitions come at any phase of the probe cycle.
			for range 5 {
				p.Call(context.Background(), "ping", nil, nil)
			}
			time.Sleep(time.Duration(i) * time.Second / time.Duration(trials))
			t0 := time.Now()
			heal, err := partition.DropPort(ttnode.Port(t, b))
			if err != nil {
				t.Fatal(err)
			}
			ev.Next(t, peer.Disconnected, 10*time.Second)
			times = append(times, time.Since(t0))
			heal()
			b.Close()
		}
		slices.Sort(times)
		p50, max := times[len(times)/2], times[len(times)-1]
		t.Logf("%s: %d partitions noticed after p50 %v, max %v (all: %v)", mode.name, trials, p50, max, times)
		if max > mode.floor {
			t.Errorf("%s: a partition took %v to notice, floor %v", mode.name, max, mode.floor)
		}
	}
}

// FirstK with one silent peer: reads keep completing on alternates at about
// the fault-free latency, long before the peer is evicted.
func TestFirstKWithSilentPeer(t *testing.T) {
	if !partition.Isolated(t) {
		return
	}
	client := ttnode.Start(t)
	var nodes []*tether.Node
	var refs []*peer.Peer
	for i := range 5 {
		s := ttnode.Start(t)
		s.Handle("get", rpc.Func(func(ctx context.Context, key []byte) ([]byte, error) {
			return []byte(fmt.Sprintf("share %d of %s", i, key)), nil
		}))
		nodes = append(nodes, s)
		refs = append(refs, dial(t, client, s))
	}
	ev := ttnode.Subscribe(t, client.Peers())
	read := func() (time.Duration, error) {
		t0 := time.Now()
		_, err := peer.FirstK(context.Background(), refs, 3, func(ctx context.Context, p *peer.Peer) ([]byte, error) {
			var share []byte
			err := p.Call(ctx, "get", []byte("k"), &share)
			return share, err
		})
		return time.Since(t0), err
	}
	measure := func(n int) []time.Duration {
		var ds []time.Duration
		for range n {
			d, err := read()
			if err != nil {
				t.Fatalf("read: %v", err)
			}
			ds = append(ds, d)
		}
		slices.Sort(ds)
		return ds
	}
	p99 := func(ds []time.Duration) time.Duration { return ds[len(ds)*99/100] }
	measure(200) // warm up: the hedge learns
	before := measure(300)

	var evicted atomic.Bool
	go func() {
		ev.Next(t, peer.Disconnected, 10*time.Second)
		evicted.Store(true)
	}()
	heal, err := partition.DropPort(ttnode.Port(t, nodes[0]))
	if err != nil {
		t.Fatal(err)
	}
	defer heal()
	var during []time.Duration
	for !evicted.Load() {
		d, err := read()
		if err != nil {
			t.Fatalf("read during the partition: %v", err)
		}
		during = append(during, d)
	}
	slices.Sort(during)
	hedge := client.Peers().Hedge().Delay()
	t.Logf("k=3 of 5, one silent: p99 %v before, %v during the partition (%d reads, hedge delay %v)",
		p99(before), p99(during), len(during), hedge)
	// The floor is 1.5x plus the hedge delay; the slack absorbs a loaded
	// CI machine's scheduling noise, and is far below the ~0.5 s a read
	// would wait if it waited for the eviction.
	if bound := p99(before)*3/2 + hedge + ttest.Scaled(2*time.Millisecond); p99(during) > bound {
		t.Errorf("read p99 during the partition %v > 1.5x before (%v) + hedge delay (%v)", p99(during), p99(before), hedge)
	}
}
