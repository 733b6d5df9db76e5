package hostile

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap/zapcore"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/internal/ttest"
	"github.com/tetherrpc/tether/internal/ttest/ttnode"
	"github.com/tetherrpc/tether/peer"
	"github.com/tetherrpc/tether/rpc"
)

// A stranger with a valid certificate of its own, not on V's list of
// members, dials V a hundred times a second: it is refused in the
// handshake every time (its error matches rpc.ErrNotAdmitted), never
// enters V's registry, is logged at Info (never Warn), and the member G's
// calls go on: their p99 latency rises at most twofold (the floor). Each
// refusal costs V one TLS handshake, as any failed handshake does.
func TestHostileStrangerWithValidCertificate(t *testing.T) {
	check := floorHolds
	if ttest.Race {
		// The race detector makes each TLS handshake cost several times
		// its CPU, and the victim pays for the stranger's: the floor is
		// checked without -race only (1.3x measured); the rest holds in
		// both.
		check = func(t *testing.T, what string, attempt func() float64) {
			t.Logf("%s: p99 latency rose %.1fx (under -race: no floor)", what, attempt())
		}
	}
	check(t, "a stranger with a valid certificate", func() float64 {
		certV, err := rpc.NewCertificate()
		if err != nil {
			t.Fatal(err)
		}
		certG, _ := rpc.NewCertificate()
		certH, _ := rpc.NewCertificate()
		id, err := rpc.TLSID(rpc.TLSConfig(certG))
		if err != nil {
			t.Fatal(err)
		}
		idG := peer.ID(id)
		zl, logs := ttnode.Observed()
		v := ttnode.Start(t, tether.WithTLS(rpc.TLSConfig(certV)), tether.WithLogger(zl),
			tether.WithAdmission(tether.AdmitIDs(idG)))
		v.Handle("echo", rpc.Func(ttnode.Echo))
		g := ttnode.Start(t, tether.WithTLS(rpc.TLSConfig(certG)))
		if g.ID() != idG {
			t.Fatalf("G's ID %q, expected %q", g.ID(), idG)
		}
		r := &rig{v: v, g: g, gp: ttnode.Dial(t, g, v), logs: logs}
		h := ttnode.Start(t, tether.WithTLS(rpc.TLSConfig(certH)))

		var tries, refused atomic.Int64
		var other atomic.Value
		rise := r.underLoad(t, "stranger", func(stop <-chan struct{}, ready func()) {
			tick := time.NewTicker(10 * time.Millisecond)
			defer tick.Stop()
			for {
				select {
				case <-stop:
					return
				case <-tick.C:
				}
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				_, err := h.Dial(ctx, v.Addr().String())
				cancel()
				tries.Add(1)
				if errors.Is(err, rpc.ErrNotAdmitted) {
					refused.Add(1)
				} else {
					other.CompareAndSwap(nil, err)
				}
				if tries.Load() >= 10 {
					ready()
				}
			}
		})
		if err := other.Load(); err != nil {
			t.Fatalf("a stranger's dial did not fail with ErrNotAdmitted: %v", err)
		}
		if tries.Load() < 20 || refused.Load() != tries.Load() {
			t.Fatalf("%d of the stranger's %d dials refused", refused.Load(), tries.Load())
		}
		if _, ok := v.Peers().Get(h.ID()); ok {
			t.Fatal("the stranger is in V's registry")
		}
		r.gWorks(t)
		ttest.WaitFor(t, 10*time.Second, func() bool {
			return countLogs(logs, zapcore.InfoLevel, "handshake refused", "not admitted") >= int(tries.Load())
		}, "each refusal logged at Info")
		if n := len(logs.FilterLevelExact(zapcore.WarnLevel).All()); n != 0 {
			t.Fatalf("V logged %d lines at Warn for a stranger", n)
		}
		t.Logf("the stranger dialed %d times, refused each", tries.Load())
		return rise
	})
}
