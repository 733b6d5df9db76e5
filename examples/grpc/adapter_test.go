package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/internal/ttest"
	"github.com/tetherrpc/tether/internal/ttest/ttnode"
)

// The gRPC adapter under the load gRPC puts on a net.Conn: deadlines,
// many conns and calls at once, streams each way, a peer evicted
// mid-stream, half-close. Each test runs a client node a and a server
// node b on loopback TCP.

// pair starts a client node and a server node serving the Echo service
// with sopts; the server stops at the end of the test.
func pair(t *testing.T, sopts ...grpc.ServerOption) (a, b *tether.Node) {
	t.Helper()
	a, b = ttnode.Start(t), ttnode.Start(t)
	srv := newServer(sopts...)
	served := make(chan struct{})
	go func() { Serve(b, srv); close(served) }()
	t.Cleanup(func() { srv.Stop(); <-served }) // before the nodes close
	return a, b
}

// dial is Dial from a to b, closed at the end of the test.
func dial(t *testing.T, a, b *tether.Node) *grpc.ClientConn {
	t.Helper()
	cc, err := Dial(a, b.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// onUnary hands the context of each call of method to f before the
// handler runs.
func onUnary(method string, f func(context.Context)) grpc.ServerOption {
	return grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		if strings.HasSuffix(info.FullMethod, "/"+method) {
			f(ctx)
		}
		return h(ctx, req)
	})
}

// servingOf returns how many streams of a's run on b now (a gRPC conn over
// tether is one).
func servingOf(t *testing.T, b, a *tether.Node) int {
	t.Helper()
	p, ok := b.Peers().Get(a.ID())
	if !ok {
		t.Fatalf("%v has no connection to %v", b.ID(), a.ID())
	}
	return p.Conn().Stats().Serving
}

// A call's deadline: a call with a 200 ms deadline on a handler that
// blocks fails with DeadlineExceeded, the handler's context ends, and the
// conn serves the next call.
func TestDeadline(t *testing.T) {
	held := make(chan context.Context, 1)
	a, b := pair(t, onUnary("Hold", func(ctx context.Context) { held <- ctx }))
	cc := dial(t, a, b)
	ctx, cancel := context.WithTimeout(context.Background(), ttest.Scaled(5*time.Second))
	defer cancel()
	if _, err := call(ctx, cc, "Echo", []byte("warm")); err != nil { // the conn is up
		t.Fatal(err)
	}

	const deadline = 200 * time.Millisecond
	short, cancelShort := context.WithTimeout(context.Background(), deadline)
	defer cancelShort()
	t0 := time.Now()
	_, err := call(short, cc, "Hold", nil)
	took := time.Since(t0)
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("Hold with a %v deadline: %v", deadline, err)
	}
	if took > deadline+ttest.Scaled(time.Second) {
		t.Errorf("Hold with a %v deadline failed after %v", deadline, took)
	}
	t.Logf("Hold with a %v deadline failed after %v: %v", deadline, took, err)

	sctx, ok := ttest.Within(held, ttest.Scaled(time.Second))
	if !ok {
		t.Fatal("the Hold call never reached the server")
	}
	if _, ok := ttest.Within(sctx.Done(), ttest.Scaled(2*time.Second)); !ok {
		t.Fatal("the handler's context outlived the call's deadline by 2 s")
	}
	t.Logf("the handler's context ended %v after the call began: %v", time.Since(t0), sctx.Err())

	if resp, err := call(ctx, cc, "Echo", []byte("again")); err != nil || string(resp) != "again" {
		t.Fatalf("Echo after the deadline: %q, %v", resp, err)
	}
}

// Many gRPC conns from one node to another, each a stream over their one
// tether connection, with many calls on each, all in flight at once; then
// the conns close and their streams end.
func TestConcurrentConnsAndCalls(t *testing.T) {
	const conns, calls = 32, 16
	var arrived atomic.Int64
	all := make(chan struct{})
	a, b := pair(t, grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		if arrived.Add(1) == conns*calls {
			close(all)
		}
		select { // every call is in flight at once
		case <-all:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		return h(ctx, req)
	}))
	ccs := make([]*grpc.ClientConn, conns)
	for i := range ccs {
		ccs[i] = dial(t, a, b)
	}
	ctx, cancel := context.WithTimeout(context.Background(), ttest.Scaled(20*time.Second))
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, conns*calls)
	for i, cc := range ccs {
		for j := range calls {
			wg.Go(func() {
				req := fmt.Appendf(nil, "conn %d call %d", i, j)
				resp, err := call(ctx, cc, "Echo", req)
				if err == nil && !bytes.Equal(resp, req) {
					err = fmt.Errorf("%s answered %q", req, resp)
				}
				errs <- err
			})
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}

	if n := len(a.Peers().List()); n != 1 {
		t.Fatalf("%d tether connections for %d gRPC conns, want 1", n, conns)
	}
	if n := servingOf(t, b, a); n != conns {
		t.Errorf("the server runs %d streams of the client's, want %d (one a gRPC conn)", n, conns)
	}
	for _, cc := range ccs {
		cc.Close()
	}
	ttest.WaitFor(t, 5*time.Second, func() bool { return servingOf(t, b, a) == 0 }, "the closed conns' streams to end on the server")
}

// A stream each way in progress when the client's node evicts the server:
// the client's Recv fails within a second with Unavailable and tether's
// cause, and the server's stream context ends. And the same when the
// server's node aborts, as a crash would.
func TestEvictedMidStream(t *testing.T) {
	for _, how := range []string{"evicted", "aborted"} {
		t.Run(how, func(t *testing.T) {
			streams := make(chan context.Context, 1)
			a, b := pair(t, grpc.ChainStreamInterceptor(func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
				streams <- ss.Context()
				return h(srv, ss)
			}))
			cc := dial(t, a, b)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			s, err := stream(ctx, cc, &chatDesc)
			if err != nil {
				t.Fatal(err)
			}
			for i := range 10 {
				req := []byte(strconv.Itoa(i))
				var resp []byte
				if err := s.SendMsg(req); err != nil {
					t.Fatal(err)
				}
				if err := s.RecvMsg(&resp); err != nil || !bytes.Equal(resp, req) {
					t.Fatalf("Chat: %q answered %q, %v", req, resp, err)
				}
			}
			sctx, ok := ttest.Within(streams, ttest.Scaled(time.Second))
			if !ok {
				t.Fatal("the stream never reached the server")
			}
			recvd := make(chan error, 1)
			go func() {
				var resp []byte
				recvd <- s.RecvMsg(&resp) // waits: nothing was sent
			}()

			cause := errors.New("evicted by the test")
			t0 := time.Now()
			if how == "evicted" {
				if !a.Peers().Evict(b.ID(), cause) {
					t.Fatal("the client's node had no connection to evict")
				}
			} else {
				b.Abort()
			}
			err, ok = ttest.Within(recvd, time.Second)
			if !ok {
				t.Fatal("the client's Recv outlived the server by 1 s")
			}
			t.Logf("the client's Recv failed after %v: %v", time.Since(t0), err)
			if status.Code(err) != codes.Unavailable {
				t.Fatalf("the client's Recv: %v, want code Unavailable", err)
			}
			if how == "evicted" && !strings.Contains(err.Error(), cause.Error()) {
				t.Fatalf("the client's Recv: %v, want the cause %q", err, cause)
			}
			if _, ok := ttest.Within(sctx.Done(), ttest.Scaled(2*time.Second)); !ok {
				t.Fatal("the server's stream context outlived the connection by 2 s")
			}
			t.Logf("the server's stream context ended after %v: %v", time.Since(t0), sctx.Err())
		})
	}
}

// Half-close: the client streams requests, small and past yamux's window,
// then CloseSend; the server reads to io.EOF and answers how many came.
func TestHalfClose(t *testing.T) {
	const n = 1000
	a, b := pair(t)
	cc := dial(t, a, b)
	ctx, cancel := context.WithTimeout(context.Background(), ttest.Scaled(20*time.Second))
	defer cancel()
	s, err := stream(ctx, cc, &countDesc)
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		size := i % 100
		if i%50 == 0 {
			size = 300 << 10
		}
		if err := s.SendMsg(bytes.Repeat([]byte{byte(i)}, size)); err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
	}
	if err := s.CloseSend(); err != nil {
		t.Fatal(err)
	}
	var resp []byte
	if err := s.RecvMsg(&resp); err != nil || string(resp) != strconv.Itoa(n) {
		t.Fatalf("Count: %q, %v; want %d", resp, err, n)
	}
	if err := s.RecvMsg(&resp); !errors.Is(err, io.EOF) {
		t.Fatalf("after the answer: %v, want io.EOF", err)
	}
}
