package peer

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cenkalti/backoff/v4"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/tetherrpc/tether/rpc"
)

func observedLogger() (*zap.Logger, *observer.ObservedLogs) {
	core, logs := observer.New(zapcore.DebugLevel)
	return zap.New(core), logs
}

// warns returns the messages about kept addresses logged at Warn.
func warns(logs *observer.ObservedLogs) []string {
	var out []string
	for _, e := range logs.FilterLevelExact(zapcore.WarnLevel).All() {
		if strings.Contains(e.Message, "kept") || strings.Contains(e.Message, "keeping") {
			out = append(out, e.Message)
		}
	}
	return out
}

// A malformed address is an error at the call, and is not kept.
func TestKeepMalformedAddress(t *testing.T) {
	zl, logs := observedLogger()
	var dials atomic.Int64
	r := registry(t, Config{Logger: zl, Dial: func(ctx context.Context, addr string) (*rpc.Conn, error) {
		dials.Add(1)
		return nil, errors.New("never")
	}})
	for _, addr := range []string{"no-port-here", "", "host:", "@host:1", "id@no-port"} {
		if k, err := r.KeepAddr(addr); !errors.Is(err, ErrBadAddress) || k != nil || !strings.Contains(err.Error(), addr) {
			t.Errorf("KeepAddr(%q): %v, %v; want ErrBadAddress naming it", addr, k, err)
		}
	}
	for _, addr := range []string{"host:7000", "10.0.0.7:7000", "[::1]:7000", "7fq2@host:7000"} {
		if err := CheckAddr(addr); err != nil {
			t.Errorf("CheckAddr(%q): %v", addr, err)
		}
	}
	stop := r.Keep("no-port-here")
	stop()
	if w := warns(logs); len(w) != 1 || w[0] != "not keeping a malformed address" {
		t.Fatalf("Keep of a malformed address logged at Warn: %q", w)
	}
	if kept, _ := r.KeptReachable(); kept != 0 || dials.Load() != 0 {
		t.Fatalf("%d addresses kept, %d dials, after malformed ones", kept, dials.Load())
	}
}

// The first failed dial of a kept address is logged at Warn, once; the
// next ones at Debug. Wait, bounded by its context, says why it gave up.
func TestKeepUnreachableWarnsOnceAndWaitSaysWhy(t *testing.T) {
	zl, logs := observedLogger()
	var dials atomic.Int64
	r := registry(t, Config{
		Logger:     zl,
		NewBackOff: func() backoff.BackOff { return &constBackOff{d: time.Millisecond} },
		Dial: func(ctx context.Context, addr string) (*rpc.Conn, error) {
			dials.Add(1)
			return nil, errors.New("dial tcp 127.0.0.1:1: connect: connection refused")
		},
	})
	k, err := r.KeepAddr("127.0.0.1:1")
	if err != nil {
		t.Fatal(err)
	}
	defer k.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	p, err := k.Wait(ctx)
	if p != nil || !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "connection refused") {
		t.Fatalf("Wait: %v, %v; want the deadline, with the last dial's error", p, err)
	}
	waitFor(t, func() bool { return dials.Load() >= 5 }, "more attempts")
	w := warns(logs)
	if len(w) != 1 || w[0] != "kept address unreachable" {
		t.Fatalf("after %d failed dials, Warn lines %q; want one", dials.Load(), w)
	}
	e := logs.FilterMessage("kept address unreachable").All()[0]
	if e.ContextMap()["addr"] != "127.0.0.1:1" || !strings.Contains(e.ContextMap()["error"].(string), "refused") {
		t.Fatalf("the Warn line %v", e.ContextMap())
	}
	if logs.FilterMessage("reconnect failed").Len() == 0 {
		t.Fatal("the later failures were not logged at Debug")
	}

	k.Stop()
	if _, err := k.Wait(context.Background()); !errors.Is(err, ErrNotKept) {
		t.Fatalf("Wait after Stop: %v", err)
	}
}

// Wait returns the reference once the kept address connects, without
// polling; after a loss, failed redials do not log at Warn (the eviction
// did).
func TestKeepWaitForFirstConnection(t *testing.T) {
	zl, logs := observedLogger()
	var dials atomic.Int64
	var down atomic.Bool
	r := registry(t, Config{
		Logger:     zl,
		NewBackOff: func() backoff.BackOff { return &constBackOff{d: 5 * time.Millisecond} },
		Dial: func(ctx context.Context, addr string) (*rpc.Conn, error) {
			if n := dials.Add(1); n < 3 || down.Load() {
				return nil, errors.New("connection refused")
			}
			ours, _ := conns(t, "k", nil)
			return ours, nil
		},
	})
	k, err := r.KeepAddr("k:7000")
	if err != nil {
		t.Fatal(err)
	}
	defer k.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	p, err := k.Wait(ctx)
	if err != nil || p == nil || p.ID() != "k" || p.Err() != nil {
		t.Fatalf("Wait: %v, %v", p, err)
	}
	if again, err := k.Wait(ctx); again != p || err != nil {
		t.Fatalf("Wait while connected: %v, %v; want %v at once", again, err, p)
	}
	if other, err := r.KeepAddr("k:7000"); err != nil || other.Addr() != "k:7000" {
		t.Fatalf("KeepAddr of a kept address: %v", err)
	} else if q, err := other.Wait(ctx); q != p || err != nil {
		t.Fatalf("a second handle's Wait: %v, %v", q, err)
	} else {
		other.Stop() // does nothing: the first handle keeps it
	}
	before := len(warns(logs))
	down.Store(true)
	from := dials.Load()
	p.Evict(errors.New("lost"))
	waitFor(t, func() bool { return dials.Load() >= from+3 }, "redials")
	if w := warns(logs); len(w) != before {
		t.Fatalf("failed redials after a loss logged at Warn: %q", w[before:])
	}
	down.Store(false)
	p2, err := k.Wait(ctx)
	if err != nil || p2 == p || p2.Err() != nil {
		t.Fatalf("Wait after the loss: %v, %v", p2, err)
	}
}
