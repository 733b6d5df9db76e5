package logport_test

import (
	"context"
	"encoding/json"
	"net"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.uber.org/zap"

	"github.com/tetherrpc/tether/incident/logport"
	"github.com/tetherrpc/tether/rpc"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// env is a port served on an rpc mux, with connections to it.
type env struct {
	t    testing.TB
	port *logport.Port
	mux  *rpc.Mux
	log  *zap.Logger
}

func newEnv(t testing.TB, opts ...logport.Option) *env {
	t.Helper()
	p := logport.New(opts...)
	mux := rpc.NewMux()
	p.Register(mux)
	e := &env{t: t, port: p, mux: mux, log: zap.New(p.Core())}
	t.Cleanup(func() { p.Close() })
	return e
}

// connect returns a new client connection to the port's mux over TCP
// loopback, and the server's end of it. Both are closed at cleanup.
func (e *env) connect() (client, server *rpc.Conn) {
	t := e.t
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	type res struct {
		c   *rpc.Conn
		err error
	}
	ch := make(chan res, 1)
	go func() {
		nc, err := ln.Accept()
		if err != nil {
			ch <- res{nil, err}
			return
		}
		c, err := rpc.Server(ctx, nc, &rpc.Config{Mux: e.mux})
		ch <- res{c, err}
	}()
	nc, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	client, err = rpc.Client(ctx, nc, nil)
	if err != nil {
		t.Fatal(err)
	}
	r := <-ch
	if r.err != nil {
		t.Fatal(r.err)
	}
	t.Cleanup(func() {
		client.Close()
		r.c.Close()
	})
	return client, r.c
}

// item is one thing a subscription handed its function, copied.
type item struct {
	seq  uint64
	json string
	loss logport.Loss
}

// sub is a subscription running in a goroutine. Its function hands each
// entry to items, unbuffered: a test that stops reading items stalls the
// subscriber, which then stops granting credit.
type sub struct {
	items   chan item
	started chan logport.Position
	done    chan struct{}
	cancel  context.CancelFunc
	pos     logport.Position
	err     error
}

func subscribe(t testing.TB, s logport.Streamer, opts ...logport.SubscribeOption) *sub {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	x := &sub{
		items:   make(chan item),
		started: make(chan logport.Position, 1),
		done:    make(chan struct{}),
		cancel:  cancel,
	}
	opts = append(opts, logport.OnStart(func(p logport.Position) { x.started <- p }))
	go func() {
		defer close(x.done)
		x.pos, x.err = logport.Subscribe(ctx, s, func(e logport.Entry) {
			it := item{seq: e.Seq, json: string(e.JSON), loss: e.Lost}
			select {
			case x.items <- it:
			case <-ctx.Done():
			}
		}, opts...)
	}()
	t.Cleanup(func() {
		cancel()
		<-x.done
	})
	select {
	case <-x.started:
	case <-x.done:
		t.Fatalf("subscribe: %v", x.err)
	case <-time.After(10 * time.Second):
		t.Fatal("subscribe: no answer in 10 s")
	}
	return x
}

// next returns the next item, failing the test after 10 s.
func (x *sub) next(t testing.TB) item {
	t.Helper()
	select {
	case it := <-x.items:
		return it
	case <-x.done:
		t.Fatalf("subscription ended: %v", x.err)
	case <-time.After(10 * time.Second):
		t.Fatal("no entry in 10 s")
	}
	return item{}
}

// stop cancels the subscription and waits for it to end.
func (x *sub) stop() error {
	x.cancel()
	<-x.done
	return x.err
}

// wait waits for the subscription to end by itself, discarding what it
// still delivers.
func (x *sub) wait(t testing.TB) error {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case <-x.items:
		case <-x.done:
			return x.err
		case <-timeout:
			t.Fatal("subscription still running after 10 s")
		}
	}
}

// decode parses an entry's JSON.
func decode(t testing.TB, s string) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(s), &m); err != nil {
		t.Fatalf("entry %q: %v", s, err)
	}
	return m
}

// ended collects subscriptions' final stats, for WithSubscriptionEnd.
type ended struct {
	ch chan endInfo
}

type endInfo struct {
	st  logport.SubscriberStats
	err error
}

func newEnded() *ended { return &ended{ch: make(chan endInfo, 16)} }

func (e *ended) option() logport.Option {
	return logport.WithSubscriptionEnd(func(st logport.SubscriberStats, err error) { e.ch <- endInfo{st, err} })
}

func (e *ended) next(t testing.TB) endInfo {
	t.Helper()
	select {
	case i := <-e.ch:
		return i
	case <-time.After(10 * time.Second):
		t.Fatal("no subscription ended in 10 s")
	}
	return endInfo{}
}

// checkStats checks the port's accounting identity.
func checkStats(t testing.TB, st logport.Stats) {
	t.Helper()
	if st.Produced != st.Delivered+st.Dropped+st.Queued {
		t.Fatalf("produced %d != delivered %d + dropped %d + queued %d", st.Produced, st.Delivered, st.Dropped, st.Queued)
	}
	if st.MemoryBytes > st.Budget {
		t.Fatalf("memory %d over the budget %d", st.MemoryBytes, st.Budget)
	}
}
