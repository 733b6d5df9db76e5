package rpc

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/tetherrpc/tether/internal/ttest"
)

func TestCallRawAndCodec(t *testing.T) {
	forEachTransport(t, func(t *testing.T, tr string) {
		m := echoMux()
		type point struct{ X, Y int }
		m.Handle("swap", Typed(func(ctx context.Context, p point) (point, error) {
			return point{p.Y, p.X}, nil
		}))
		c, _ := pair(t, tr, nil, &Config{Mux: m})
		ctx := context.Background()

		var raw []byte
		if err := c.Call(ctx, "echo", []byte("hello"), &raw); err != nil || string(raw) != "hello" {
			t.Fatalf("echo: %q, %v", raw, err)
		}
		var p point
		if err := c.Call(ctx, "swap", point{1, 2}, &p); err != nil || p != (point{2, 1}) {
			t.Fatalf("swap: %+v, %v", p, err)
		}
		if err := c.Call(ctx, "echo", []byte("x"), nil); err != nil {
			t.Fatalf("nil reply: %v", err)
		}
		big := bytes.Repeat([]byte("0123456789"), 200_000) // 2 MB: several yamux frames
		if err := c.Call(ctx, "echo", big, &raw); err != nil || !bytes.Equal(raw, big) {
			t.Fatalf("2 MB echo: %d bytes, %v", len(raw), err)
		}
	})
}

func TestBothEndsCallAndServe(t *testing.T) {
	forEachTransport(t, func(t *testing.T, tr string) {
		cm, sm := NewMux(), NewMux()
		cm.Handle("who", Func(func(context.Context, []byte) ([]byte, error) { return []byte("client"), nil }))
		sm.Handle("who", Func(func(ctx context.Context, _ []byte) ([]byte, error) {
			// A handler calling back the peer that called it.
			var back []byte
			err := FromContext(ctx).Call(ctx, "who", nil, &back)
			return append([]byte("server+"), back...), err
		}))
		c, s := pair(t, tr, &Config{Mux: cm}, &Config{Mux: sm})
		var got []byte
		if err := c.Call(context.Background(), "who", nil, &got); err != nil || string(got) != "server+client" {
			t.Fatalf("client->server->client: %q, %v", got, err)
		}
		if err := s.Call(context.Background(), "who", nil, &got); err != nil || string(got) != "client" {
			t.Fatalf("server->client: %q, %v", got, err)
		}
		if c.RemoteID() != s.LocalID() || s.RemoteID() != c.LocalID() || c.RemoteID() == c.LocalID() {
			t.Fatalf("IDs: client sees %q/%q, server %q/%q", c.LocalID(), c.RemoteID(), s.LocalID(), s.RemoteID())
		}
	})
}

// Thousands of calls in flight at once from many goroutines, all held in
// their handlers until every one has arrived.
func TestThousandsInFlight(t *testing.T) {
	forEachTransport(t, func(t *testing.T, tr string) {
		const goroutines, perG = 50, 60 // 3000 calls in flight
		var arrived atomic.Int64
		release := make(chan struct{})
		m := NewMux()
		m.Handle("hold", Func(func(ctx context.Context, req []byte) ([]byte, error) {
			if arrived.Add(1) == goroutines*perG {
				close(release)
			}
			select {
			case <-release:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
			return req, nil
		}))
		c, s := pair(t, tr, nil, &Config{Mux: m, MaxConcurrentCalls: goroutines * perG})
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		var wg sync.WaitGroup
		errs := make(chan error, goroutines*perG)
		for g := range goroutines {
			for i := range perG {
				wg.Add(1)
				go func() {
					defer wg.Done()
					want := fmt.Sprintf("%d/%d", g, i)
					var got []byte
					if err := c.Call(ctx, "hold", []byte(want), &got); err != nil {
						errs <- err
					} else if string(got) != want {
						errs <- fmt.Errorf("got %q, want %q", got, want)
					}
				}()
			}
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		if st := s.Stats(); st.CallsIn != goroutines*perG || st.Serving != 0 {
			t.Fatalf("server stats: %+v", st)
		}
	})
}

// When the caller gives up, the remote handler's context ends promptly, the
// call returns at once, and the connection stays healthy.
func TestCancelReachesHandler(t *testing.T) {
	forEachTransport(t, func(t *testing.T, tr string) {
		started, ended := make(chan struct{}), make(chan time.Time, 1)
		m := echoMux()
		m.Handle("wait", Func(func(ctx context.Context, _ []byte) ([]byte, error) {
			close(started)
			<-ctx.Done()
			ended <- time.Now()
			return nil, ctx.Err()
		}))
		c, s := pair(t, tr, nil, &Config{Mux: m})
		ctx, cancel := context.WithCancel(context.Background())
		errc := make(chan error, 1)
		go func() { errc <- c.Call(ctx, "wait", nil, nil) }()
		within(t, 5*time.Second, started, "handler start")
		t0 := time.Now()
		cancel()
		err := within(t, time.Second, errc, "call return")
		returned := time.Since(t0)
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("call error %v, want context.Canceled", err)
		}
		lag := within(t, time.Second, ended, "handler cancel").Sub(t0)
		t.Logf("%s: call returned after %v, remote handler cancelled after %v", tr, returned, lag)
		if returned > 50*time.Millisecond || lag > 100*time.Millisecond {
			t.Fatalf("slow cancellation: returned after %v, handler after %v", returned, lag)
		}
		var out []byte
		if err := c.Call(context.Background(), "echo", []byte("still here"), &out); err != nil || string(out) != "still here" {
			t.Fatalf("after cancel: %q %v", out, err)
		}
		if st := c.Stats(); st.CancelsSent != 1 {
			t.Fatalf("client stats: %+v", st)
		}
		waitFor(t, func() bool { return s.Stats().Serving == 0 }, "server to release the call")
	})
}

func TestDeadlineTravels(t *testing.T) {
	forEachTransport(t, func(t *testing.T, tr string) {
		got := make(chan time.Duration, 1)
		m := NewMux()
		m.Handle("wait", Func(func(ctx context.Context, _ []byte) ([]byte, error) {
			dl, ok := ctx.Deadline()
			if !ok {
				got <- -1
			} else {
				got <- time.Until(dl)
			}
			<-ctx.Done()
			return nil, ctx.Err()
		}))
		c, _ := pair(t, tr, nil, &Config{Mux: m})
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		err := c.Call(ctx, "wait", nil, nil)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("error %v, want DeadlineExceeded", err)
		}
		left := within(t, time.Second, got, "handler")
		if left <= 0 || left > 300*time.Millisecond {
			t.Fatalf("handler saw %v left of a 300ms deadline", left)
		}
	})
}

// gatedConn blocks writes while its gate is shut: a transport stuck in the
// kernel.
type gatedConn struct {
	netConn
	mu   sync.Mutex
	shut chan struct{}
}

func (g *gatedConn) Write(p []byte) (int, error) {
	g.mu.Lock()
	ch := g.shut
	g.mu.Unlock()
	if ch != nil {
		<-ch
	}
	return g.netConn.Write(p)
}

func (g *gatedConn) close() { g.mu.Lock(); g.shut = make(chan struct{}); g.mu.Unlock() }
func (g *gatedConn) open()  { g.mu.Lock(); close(g.shut); g.shut = nil; g.mu.Unlock() }

// A call cancelled before its request is written is never written.
func TestCancelledBeforeWriteIsNeverSent(t *testing.T) {
	var served atomic.Int64
	m := NewMux()
	m.Handle("count", Func(func(ctx context.Context, req []byte) ([]byte, error) {
		served.Add(1)
		return req, nil
	}))
	cn, sn := netPair(t, "tcp")
	g := &gatedConn{netConn: cn}
	c, s := pairOver(t, "tcp", g, sn, nil, &Config{Mux: m})

	g.close()
	first := make(chan error, 1)
	go func() { first <- c.Call(context.Background(), "count", []byte("1"), nil) }()
	// The writer takes the first call and blocks in the transport; the second
	// waits in the queue behind it.
	waitFor(t, func() bool { return c.Outstanding() == 1 && c.writerBusy() }, "writer to block")
	ctx, cancel := context.WithCancel(context.Background())
	second := make(chan error, 1)
	go func() { second <- c.Call(ctx, "count", []byte("2"), nil) }()
	waitFor(t, func() bool { return c.Outstanding() == 2 }, "second call to queue")
	cancel()
	if err := within(t, time.Second, second, "cancelled call"); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled call: %v", err)
	}
	g.open()
	if err := within(t, 5*time.Second, first, "first call"); err != nil {
		t.Fatal(err)
	}
	if err := c.Call(context.Background(), "count", []byte("3"), nil); err != nil {
		t.Fatal(err)
	}
	if n := served.Load(); n != 2 {
		t.Fatalf("server ran %d calls, want 2 (the cancelled one must never be sent)", n)
	}
	if st := c.Stats(); st.Unsent != 1 || st.CancelsSent != 0 {
		t.Fatalf("client stats %+v: want Unsent 1, CancelsSent 0", st)
	}
	if st := s.Stats(); st.CallsIn != 2 {
		t.Fatalf("server stats %+v", st)
	}
}

func (c *Conn) writerBusy() bool {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.writing
}

func TestRemoteErrors(t *testing.T) {
	forEachTransport(t, func(t *testing.T, tr string) {
		m := echoMux()
		m.Handle("fail", Func(func(context.Context, []byte) ([]byte, error) { return nil, errors.New("disk on fire") }))
		m.Handle("coded", Func(func(context.Context, []byte) ([]byte, error) {
			return nil, Errorf(CodeBadRequest, "share %d is not here", 7)
		}))
		m.Handle("panic", Func(func(context.Context, []byte) ([]byte, error) { panic("boom") }))
		m.Handle("typed", Typed(func(ctx context.Context, n int) (int, error) { return n * 2, nil }))
		c, s := pair(t, tr, nil, &Config{Mux: m})
		ctx := context.Background()
		var re *RemoteError

		err := c.Call(ctx, "nope", nil, nil)
		if !errors.Is(err, ErrUnknownMethod) || !errors.As(err, &re) || re.Code != CodeUnknownMethod || re.Method != "nope" {
			t.Fatalf("unknown method: %v", err)
		}
		err = c.Call(ctx, "fail", nil, nil)
		if !errors.As(err, &re) || re.Code != CodeApplication || re.Message != "disk on fire" || errors.Is(err, ErrDeadReference) {
			t.Fatalf("application error: %v", err)
		}
		err = c.Call(ctx, "coded", nil, nil)
		if !errors.As(err, &re) || re.Code != CodeBadRequest || re.Message != "share 7 is not here" {
			t.Fatalf("coded error: %v", err)
		}
		err = c.Call(ctx, "panic", nil, nil)
		if !errors.As(err, &re) || re.Code != CodeInternal {
			t.Fatalf("panic: %v", err)
		}
		err = c.Call(ctx, "typed", []byte{0xff}, nil) // not CBOR
		if !errors.As(err, &re) || re.Code != CodeBadRequest {
			t.Fatalf("bad request: %v", err)
		}
		var n int
		if err := c.Call(ctx, "typed", 21, &n); err != nil || n != 42 {
			t.Fatalf("typed: %d %v", n, err)
		}
		if err := c.Call(ctx, "echo", []byte("ok"), nil); err != nil || c.Err() != nil {
			t.Fatalf("connection hurt by remote errors: %v %v", err, c.Err())
		}
		if st := s.Stats(); st.HandlerPanics != 1 || st.Rejected != 1 {
			t.Fatalf("server stats %+v", st)
		}
	})
}

func TestMessageSizeLimits(t *testing.T) {
	forEachTransport(t, func(t *testing.T, tr string) {
		m := NewMux()
		m.Handle("grow", Func(func(_ context.Context, req []byte) ([]byte, error) {
			return make([]byte, 2000), nil
		}))
		c, s := pair(t, tr, &Config{MaxMessageSize: 1000}, &Config{Mux: m, MaxMessageSize: 1000})
		err := c.Call(context.Background(), "grow", make([]byte, 1001), nil)
		if !errors.Is(err, ErrMessageTooLarge) {
			t.Fatalf("oversize request: %v", err)
		}
		if st := s.Stats(); st.CallsIn != 0 {
			t.Fatalf("an oversize request went out: server stats %+v", st)
		}
		err = c.Call(context.Background(), "grow", make([]byte, 10), nil)
		var re *RemoteError
		if !errors.Is(err, ErrMessageTooLarge) || !errors.As(err, &re) {
			t.Fatalf("oversize reply: %v", err)
		}
		if c.Err() != nil || s.Err() != nil {
			t.Fatal("a size limit killed the connection")
		}
	})
}

func TestConcurrencyLimit(t *testing.T) {
	release := make(chan struct{})
	m := NewMux()
	m.Handle("hold", Func(func(ctx context.Context, _ []byte) ([]byte, error) {
		<-release
		return nil, nil
	}))
	c, s := pair(t, "tcp", nil, &Config{Mux: m, MaxConcurrentCalls: 2})
	errs := make(chan error, 2)
	for range 2 {
		go func() { errs <- c.Call(context.Background(), "hold", nil, nil) }()
	}
	waitFor(t, func() bool { return s.Stats().Serving == 2 }, "two calls to run")
	// The client knows the limit from the handshake: no I/O.
	if err := c.Call(context.Background(), "hold", nil, nil); !errors.Is(err, ErrTooManyCalls) {
		t.Fatalf("third call: %v", err)
	}
	// A peer that ignores the limit is refused by the server.
	c.remote.maxCalls = 100
	err := c.Call(context.Background(), "hold", nil, nil)
	var re *RemoteError
	if !errors.Is(err, ErrTooManyCalls) || !errors.As(err, &re) || re.Code != CodeResourceExhausted {
		t.Fatalf("over the server's limit: %v", err)
	}
	close(release)
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}

// Killing a connection fails every outstanding call at once with a
// DeadError naming the cause; new calls fail without I/O.
func TestAbortFailsOutstandingCalls(t *testing.T) {
	forEachTransport(t, func(t *testing.T, tr string) {
		const n = 500
		var running atomic.Int64
		cancelled := make(chan struct{}, n)
		m := NewMux()
		m.Handle("hold", Func(func(ctx context.Context, _ []byte) ([]byte, error) {
			running.Add(1)
			<-ctx.Done()
			cancelled <- struct{}{}
			return nil, ctx.Err()
		}))
		c, s := pair(t, tr, nil, &Config{Mux: m})
		errs := make(chan error, n)
		for range n {
			go func() { errs <- c.Call(context.Background(), "hold", nil, nil) }()
		}
		waitFor(t, func() bool { return running.Load() == n }, "calls to run")
		cause := errors.New("missed heartbeats for 820ms")
		t0 := time.Now()
		if got := c.Abort(cause); got != n {
			t.Fatalf("Abort failed %d calls, want %d", got, n)
		}
		for range n {
			err := within(t, time.Second, errs, "failed call")
			var de *DeadError
			if !errors.Is(err, ErrDeadReference) || !errors.Is(err, cause) || !errors.As(err, &de) || de.Peer != s.LocalID() {
				t.Fatalf("call error %v", err)
			}
		}
		t.Logf("%s: %d calls failed within %v of the abort", tr, n, time.Since(t0))
		select {
		case <-c.Done():
		default:
			t.Fatal("Done not closed")
		}
		if !errors.Is(c.Err(), ErrDeadReference) {
			t.Fatalf("Err %v", c.Err())
		}
		// The server notices the transport closing and cancels its handlers.
		for range n {
			within(t, 5*time.Second, cancelled, "server handler cancel")
		}
		within(t, 5*time.Second, s.Done(), "server side death")
		if err := c.Call(context.Background(), "hold", nil, nil); !errors.Is(err, cause) {
			t.Fatalf("call after abort: %v", err)
		}
	})
}

// A peer that says goodbye is dead at once, with cause ErrPeerLeft.
func TestCloseTellsThePeer(t *testing.T) {
	forEachTransport(t, func(t *testing.T, tr string) {
		c, s := pair(t, tr, nil, &Config{Mux: echoMux()})
		s.Close()
		within(t, time.Second, c.Done(), "client to see the goodbye")
		if err := c.Err(); !errors.Is(err, ErrPeerLeft) {
			t.Fatalf("cause %v, want ErrPeerLeft", err)
		}
	})
}

// A late answer (the caller already gave up) is dropped and counted; an
// answer to a call never made is a protocol violation.
func TestLateAndBogusResponses(t *testing.T) {
	c, _ := pair(t, "tcp", nil, &Config{Mux: echoMux()})
	if err := c.Call(context.Background(), "echo", nil, nil); err != nil {
		t.Fatal(err)
	}
	if err := c.handleFrame(header{kind: kindResponse, id: 1}, nil); err != nil {
		t.Fatalf("late response: %v", err)
	}
	if st := c.Stats(); st.LateResponses != 1 {
		t.Fatalf("stats %+v", st)
	}
	err := c.handleFrame(header{kind: kindResponse, id: 99}, nil)
	if !errors.Is(err, ErrProtocolViolation) {
		t.Fatalf("bogus response: %v", err)
	}
}

func TestCallOnDeadConnDoesNoIO(t *testing.T) {
	c, _ := pair(t, "tcp", nil, &Config{Mux: echoMux()})
	c.Abort(errors.New("evicted"))
	sent := c.LastSent()
	for range 100 {
		if err := c.Call(context.Background(), "echo", []byte("x"), nil); !errors.Is(err, ErrDeadReference) {
			t.Fatal(err)
		}
	}
	if _, err := c.OpenStream(context.Background(), "x"); !errors.Is(err, ErrDeadReference) {
		t.Fatal(err)
	}
	if c.LastSent() != sent {
		t.Fatal("a call on a dead connection wrote to the transport")
	}
}

func waitFor(t testing.TB, cond func() bool, what string) {
	t.Helper()
	ttest.WaitFor(t, 10*time.Second, cond, what)
}

var _ io.ReadWriteCloser = (*Stream)(nil)

// Abort resets the TCP connection, so the peer learns at once even when
// our unacknowledged segments would hold a FIN back (as in a one-way
// partition); Close says goodbye instead.
func TestAbortResetsCloseSaysGoodbye(t *testing.T) {
	for _, tr := range []string{"tcp", "tls"} {
		t.Run(tr, func(t *testing.T) {
			c, s := pair(t, tr, nil, nil)
			s.Abort(errors.New("judged dead"))
			select {
			case <-c.Done():
			case <-time.After(5 * time.Second):
				t.Fatal("the peer of an aborted connection did not notice")
			}
			// (Over TLS too: no close_notify alert goes ahead of the reset.)
			if err := c.Err(); !errors.Is(err, syscall.ECONNRESET) {
				t.Fatalf("the peer saw %v, want a connection reset", err)
			}

			c, s = pair(t, tr, nil, nil)
			s.Close()
			<-c.Done()
			if err := c.Err(); !errors.Is(err, ErrPeerLeft) {
				t.Fatalf("the peer of a closed connection saw %v, want ErrPeerLeft", err)
			}
		})
	}
}

// A call failed by its connection's death may still be in the writer's
// hands; it must not be recycled for the next call while the writer copies
// its request (the race detector watches this test).
func TestAbortWhileWritingRecyclesNothingInUse(t *testing.T) {
	args := bytes.Repeat([]byte("x"), 2048)
	for range 20 {
		c, _ := pair(t, "tcp", nil, &Config{Mux: echoMux()})
		spare, _ := pair(t, "tcp", nil, &Config{Mux: echoMux()})
		var wg sync.WaitGroup
		for range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < 200; i++ {
					conn := c
					if c.Err() != nil {
						conn = spare // calls from the pool, while c's writer may still copy
					}
					if err := conn.Call(context.Background(), "echo", args, nil); err != nil && !errors.Is(err, ErrDeadReference) {
						t.Error(err)
						return
					}
				}
			}()
		}
		time.Sleep(time.Millisecond)
		c.Abort(errors.New("evicted"))
		wg.Wait()
	}
}

// readGate is a net.Conn whose reads can be held, as those of a peer whose
// reader is busy elsewhere; its writes go on.
type readGate struct {
	net.Conn
	mu   sync.Mutex
	open chan struct{} // closed while reads may go on
	shut chan struct{} // closed by Close
	once sync.Once
}

func newReadGate(c net.Conn) *readGate {
	g := &readGate{Conn: c, open: make(chan struct{}), shut: make(chan struct{})}
	close(g.open)
	return g
}

func (g *readGate) hold()    { g.mu.Lock(); g.open = make(chan struct{}); g.mu.Unlock() }
func (g *readGate) release() { g.mu.Lock(); close(g.open); g.mu.Unlock() }

func (g *readGate) Read(p []byte) (int, error) {
	g.mu.Lock()
	open := g.open
	g.mu.Unlock()
	select {
	case <-open:
	case <-g.shut:
		return 0, net.ErrClosed
	}
	return g.Conn.Read(p)
}

func (g *readGate) Close() error {
	g.once.Do(func() { close(g.shut) })
	return g.Conn.Close()
}

func (g *readGate) NetConn() net.Conn { return g.Conn }

// Close always says goodbye first: a peer that keeps writing while its
// reader is busy, and reads our goodbye only later, still sees ErrPeerLeft,
// not a reset our side provoked (a half-close would make the next write of
// ours fail, and a transport closed with the peer's bytes unread answers
// them with a reset, which fails the peer's writes before its reader gets
// to the goodbye).
func TestCloseSaysGoodbyeToAPeerStillWriting(t *testing.T) {
	for _, tr := range []string{"tcp", "tls"} {
		t.Run(tr, func(t *testing.T) {
			cn, sn := netPair(t, tr)
			gate := newReadGate(sn)
			c, s := pairOver(t, tr, cn, gate, nil, nil)
			gate.hold()
			// A read of the server's already under way when the gate shut
			// takes this ping (and its yamux answers); the server reads
			// nothing more until released. If none was under way, the ping
			// goes unanswered: the server reads nothing either way.
			ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
			c.Ping(ctx)
			cancel()
			closed := make(chan struct{})
			go func() { c.Close(); close(closed) }()
			// The server goes on writing (probes, which c answers) while it
			// reads nothing, for a while.
			tick := time.NewTicker(time.Millisecond)
			defer tick.Stop()
			busy := time.NewTimer(100 * time.Millisecond)
			defer busy.Stop()
		writing:
			for {
				s.Probe(func(time.Duration) {})
				select {
				case <-tick.C:
				case <-busy.C:
					break writing
				case <-s.Done():
					break writing
				}
			}
			gate.release()
			within(t, 5*time.Second, s.Done(), "the server to see the goodbye")
			if err := s.Err(); !errors.Is(err, ErrPeerLeft) {
				t.Fatalf("the peer of a closed connection saw %v, want ErrPeerLeft", err)
			}
			within(t, 5*time.Second, closed, "Close to return")
			if err := c.Err(); !errors.Is(err, ErrClosed) {
				t.Fatalf("the closed side's cause %v, want ErrClosed", err)
			}
		})
	}
}
