package peer

import (
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cenkalti/backoff/v4"
	"go.uber.org/goleak"

	"github.com/tetherrpc/tether/liveness"
	"github.com/tetherrpc/tether/rpc"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// conns returns a connected pair over net.Pipe: ours (local ID "local")
// and theirs (ID remote), with theirs serving mux.
func conns(t *testing.T, remote string, mux *rpc.Mux) (ours, theirs *rpc.Conn) {
	t.Helper()
	a, b := net.Pipe()
	ctx := context.Background()
	ch := make(chan *rpc.Conn, 1)
	go func() {
		c, err := rpc.Server(ctx, b, &rpc.Config{ID: remote, Mux: mux})
		if err != nil {
			t.Error(err)
		}
		ch <- c
	}()
	ours, err := rpc.Client(ctx, a, &rpc.Config{ID: "local"})
	if err != nil {
		t.Fatal(err)
	}
	theirs = <-ch
	t.Cleanup(func() { ours.Close(); theirs.Close() })
	return ours, theirs
}

func registry(t *testing.T, cfg Config) *Registry {
	t.Helper()
	if cfg.LocalID == "" {
		cfg.LocalID = "local"
	}
	if cfg.Liveness == (liveness.Config{}) {
		cfg.Liveness = liveness.Local()
	}
	r, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

type recorder struct {
	mu sync.Mutex
	ev []Event
	ch chan Event
}

func record(r *Registry) *recorder {
	rec := &recorder{ch: make(chan Event, 100)}
	r.Subscribe(func(ev Event) {
		rec.mu.Lock()
		rec.ev = append(rec.ev, ev)
		rec.mu.Unlock()
		rec.ch <- ev
	})
	return rec
}

func (r *recorder) next(t *testing.T) Event {
	t.Helper()
	select {
	case ev := <-r.ch:
		return ev
	case <-time.After(5 * time.Second):
		t.Fatal("no event")
	}
	return Event{}
}

func TestAddGetEvict(t *testing.T) {
	r := registry(t, Config{})
	rec := record(r)
	held := make(chan struct{})
	mux := rpc.NewMux()
	mux.Handle("hold", rpc.Func(func(ctx context.Context, _ []byte) ([]byte, error) {
		held <- struct{}{}
		<-ctx.Done()
		return nil, ctx.Err()
	}))
	ours, _ := conns(t, "b", mux)
	p, err := r.add(ours, "pipe", true)
	if err != nil {
		t.Fatal(err)
	}
	if ev := rec.next(t); ev.Kind != Connected || ev.ID != "b" || ev.Peer != p || ev.Reconnect {
		t.Fatalf("event %+v", ev)
	}
	if got, ok := r.Get("b"); !ok || got != p {
		t.Fatal("Get")
	}
	if l := r.List(); len(l) != 1 || l[0] != p {
		t.Fatalf("List %v", l)
	}
	errc := make(chan error, 3)
	for range 3 {
		go func() { errc <- p.Call(context.Background(), "hold", nil, nil) }()
		<-held
	}
	cause := errors.New("operator")
	if !r.Evict("b", cause) {
		t.Fatal("Evict")
	}
	for range 3 {
		if err := <-errc; !errors.Is(err, rpc.ErrDeadReference) || !errors.Is(err, cause) {
			t.Fatal(err)
		}
	}
	ev := rec.next(t)
	if ev.Kind != Disconnected || !errors.Is(ev.Cause, cause) || ev.Calls != 3 {
		t.Fatalf("event %+v", ev)
	}
	if _, ok := r.Get("b"); ok || len(r.List()) != 0 {
		t.Fatal("evicted peer still listed")
	}
	if r.Evict("b", nil) {
		t.Fatal("evicted twice")
	}
}

func TestDuplicateConnections(t *testing.T) {
	// Same dialer twice: the newer wins.
	r := registry(t, Config{LocalID: "m"})
	c1, _ := conns(t, "z", nil)
	c2, _ := conns(t, "z", nil)
	p1, _ := r.add(c1, "x", true)
	p2, _ := r.add(c2, "x", true)
	<-p1.Done() // retired: it had nothing in flight, so at once
	if p2.conn != c2 || !errors.Is(p1.Err(), ErrReplaced) {
		t.Fatalf("same dialer: kept %v, old err %v", p2.conn == c2, p1.Err())
	}
	// Each side dialed one: the one dialed by the smaller ID ("m" < "z",
	// so ours) stays, whatever the order.
	c3, _ := conns(t, "z", nil)
	p3, _ := r.add(c3, "from z", false)
	<-c3.Done()
	if p3 != p2 || !errors.Is(c3.Err(), ErrReplaced) {
		t.Fatalf("cross dial: got %v (c3 err %v)", p3, c3.Err())
	}
	r2 := registry(t, Config{LocalID: "zz"}) // now the peer's ID is smaller
	c4, _ := conns(t, "a", nil)
	c5, _ := conns(t, "a", nil)
	q4, _ := r2.add(c4, "x", true)
	q5, _ := r2.add(c5, "from a", false)
	<-q4.Done()
	if q5.conn != c5 || !errors.Is(q4.Err(), ErrReplaced) {
		t.Fatal("cross dial: the peer-dialed connection should win when the peer's ID is smaller")
	}
}

// constBackOff records how often it was asked.
type constBackOff struct {
	d     time.Duration
	calls atomic.Int64
	stop  bool
}

func (b *constBackOff) NextBackOff() time.Duration {
	b.calls.Add(1)
	if b.stop {
		return backoff.Stop
	}
	return b.d
}
func (b *constBackOff) Reset() {}

func TestKeepRedialsUntilItWorks(t *testing.T) {
	// A BackOff that gives up does not end the loop: it goes on at 10 s.
	k := &keeper{bo: &constBackOff{stop: true}}
	if d := k.next(); d != 10*time.Second {
		t.Fatalf("after backoff.Stop: %v", d)
	}

	var attempts atomic.Int64
	r2 := registry(t, Config{
		NewBackOff: func() backoff.BackOff { return &constBackOff{d: 5 * time.Millisecond} },
		Dial: func(ctx context.Context, addr string) (*rpc.Conn, error) {
			if attempts.Add(1) < 4 {
				return nil, errors.New("connection refused")
			}
			ours, _ := conns(t, "k", nil)
			return ours, nil
		},
	})
	rec := record(r2)
	stop2 := r2.Keep("addr:1")
	defer stop2()
	ev := rec.next(t)
	if ev.Kind != Connected || ev.Reconnect || attempts.Load() != 4 {
		t.Fatalf("first connect %+v after %d attempts", ev, attempts.Load())
	}
	// Lose it: Keep dials again and tells subscribers it reconnected.
	ev.Peer.Evict(errors.New("lost"))
	if ev := rec.next(t); ev.Kind != Disconnected {
		t.Fatalf("%+v", ev)
	}
	if ev := rec.next(t); ev.Kind != Connected || !ev.Reconnect {
		t.Fatalf("reconnect %+v", ev)
	}
}

func TestDefaultBackOffNeverGivesUp(t *testing.T) {
	b := DefaultBackOff()
	var last time.Duration
	for range 1000 {
		d := b.NextBackOff()
		if d == backoff.Stop {
			t.Fatal("the default backoff gave up")
		}
		last = d
	}
	if last > 15*time.Second || last < 5*time.Second {
		t.Fatalf("capped interval %v, want about 10s with jitter", last)
	}
}

func TestSubscribeOrderAndCancel(t *testing.T) {
	r := registry(t, Config{})
	var mu sync.Mutex
	var got []EventKind
	cancel := r.Subscribe(func(ev Event) {
		mu.Lock()
		got = append(got, ev.Kind)
		mu.Unlock()
	})
	rec := record(r)
	ours, _ := conns(t, "s", nil)
	p, _ := r.add(ours, "x", true)
	rec.next(t)
	p.Evict(nil)
	rec.next(t)
	cancel()
	ours2, _ := conns(t, "s2", nil)
	r.add(ours2, "y", true)
	rec.next(t)
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 2 || got[0] != Connected || got[1] != Disconnected {
		t.Fatalf("events %v", got)
	}
}

func TestHedgeLearnsP95(t *testing.T) {
	h := NewHedge()
	if h.Delay() != hedgeCold {
		t.Fatal("cold delay")
	}
	for i := range 200 {
		h.Observe(time.Duration(i+1) * time.Millisecond)
	}
	if d := h.Delay(); d != 191*time.Millisecond {
		t.Fatalf("p95 of 1..200 ms is %v", d)
	}
	for range 300 {
		h.Observe(time.Microsecond)
	}
	if d := h.Delay(); d != HedgeFloor {
		t.Fatalf("delay %v, want the floor", d)
	}
}

// A Disconnected event's Cause is the reference's Err: the *rpc.DeadError
// its calls fail with, through which the cause of death is found.
func TestEventCauseIsPeerErr(t *testing.T) {
	r := registry(t, Config{})
	rec := record(r)
	ours, _ := conns(t, "b", rpc.NewMux())
	p, err := r.add(ours, "pipe", true)
	if err != nil {
		t.Fatal(err)
	}
	rec.next(t) // Connected
	cause := errors.New("operator")
	p.Evict(cause)
	ev := rec.next(t)
	var de *rpc.DeadError
	if ev.Kind != Disconnected || ev.Cause != p.Err() || !errors.Is(ev.Cause, rpc.ErrDeadReference) ||
		!errors.Is(ev.Cause, cause) || !errors.As(ev.Cause, &de) || de.Peer != "b" {
		t.Fatalf("event cause %v (%T), peer's Err %v: want the same *rpc.DeadError", ev.Cause, ev.Cause, p.Err())
	}
}
