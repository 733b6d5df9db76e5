package tether_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/internal/ttest"
	"github.com/tetherrpc/tether/rpc"
)

// connPair starts two nodes, b serving service on a Listener, and returns
// a conn from a to it and b's end of it.
func connPair(t *testing.T, service string) (a, b *tether.Node, ln net.Listener, client, server net.Conn) {
	t.Helper()
	a, b = node(t), node(t)
	ln = b.Listener(service)
	t.Cleanup(func() { ln.Close() })
	client, server = dialAccept(t, a, b, ln, service)
	return a, b, ln, client, server
}

func dialAccept(t *testing.T, a, b *tether.Node, ln net.Listener, service string) (client, server net.Conn) {
	t.Helper()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			t.Error(err)
		}
		accepted <- c
	}()
	ctx, cancel := context.WithTimeout(context.Background(), ttest.Scaled(5*time.Second))
	defer cancel()
	client, err := a.DialConn(ctx, b.Addr().String(), service)
	if err != nil {
		t.Fatal(err)
	}
	server = <-accepted
	if server == nil {
		t.FailNow()
	}
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

// Bytes both ways, a half-close each way, the addresses and IDs.
func TestConnHalfClose(t *testing.T) {
	a, b, ln, client, server := connPair(t, "echo")
	if got := client.RemoteAddr().(tether.Addr); got.ID != b.ID() || got.Net.String() != b.Addr().String() {
		t.Errorf("client's RemoteAddr %v, want %s@%s", got, b.ID(), b.Addr())
	}
	if got := server.RemoteAddr().(tether.Addr); got.ID != a.ID() {
		t.Errorf("server's RemoteAddr %v, want a's ID %s", got, a.ID())
	}
	if got := client.LocalAddr().(tether.Addr).ID; got != a.ID() {
		t.Errorf("client's LocalAddr's ID %s, want %s", got, a.ID())
	}
	if got := ln.Addr().String(); got != fmt.Sprintf("%s@%s", b.ID(), b.Addr()) || ln.Addr().Network() != "tether" {
		t.Errorf("listener's Addr %s %s", ln.Addr().Network(), got)
	}

	msg := bytes.Repeat([]byte("tether "), 100_000) // past yamux's window
	go func() {
		client.Write(msg)
		client.(interface{ CloseWrite() error }).CloseWrite()
	}()
	got, err := io.ReadAll(server)
	if err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("server read %d bytes, %v; want %d", len(got), err, len(msg))
	}
	// The client's reading side is still open.
	if _, err := server.Write([]byte("answer")); err != nil {
		t.Fatal(err)
	}
	server.(interface{ CloseWrite() error }).CloseWrite()
	if got, err := io.ReadAll(client); err != nil || string(got) != "answer" {
		t.Fatalf("client read %q, %v", got, err)
	}
}

// A closed conn's peer reads what was written, then io.EOF; the closed
// end's Read and Write say net.ErrClosed.
func TestConnClose(t *testing.T) {
	for _, side := range []string{"dialing", "accepting"} {
		t.Run(side, func(t *testing.T) {
			_, _, _, client, server := connPair(t, "echo")
			closer, other := client, server
			if side == "accepting" {
				closer, other = server, client
			}
			if _, err := closer.Write([]byte("last words")); err != nil {
				t.Fatal(err)
			}
			closer.Close()
			if got, err := io.ReadAll(other); err != nil || string(got) != "last words" {
				t.Fatalf("peer read %q, %v; want the words and io.EOF", got, err)
			}
			if _, err := closer.Read(make([]byte, 1)); !errors.Is(err, net.ErrClosed) {
				t.Errorf("Read after Close: %v", err)
			}
			if _, err := closer.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
				t.Errorf("Write after Close: %v", err)
			}
		})
	}
}

func TestConnDeadlines(t *testing.T) {
	_, _, _, client, server := connPair(t, "echo")
	for name, c := range map[string]net.Conn{"dialing": client, "accepting": server} {
		c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
		_, err := c.Read(make([]byte, 1))
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() || !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("%s: Read past the deadline: %v", name, err)
		}
		c.SetReadDeadline(time.Time{}) // cleared: the conn goes on
	}
	if _, err := client.Write([]byte("on")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(server, make([]byte, 2)); err != nil {
		t.Fatalf("Read after clearing the deadline: %v", err)
	}
	// A Write blocks once the peer's window is full; its deadline ends it.
	client.SetWriteDeadline(time.Now().Add(200 * time.Millisecond))
	var err error
	for err == nil {
		_, err = client.Write(make([]byte, 64<<10))
	}
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Write past the deadline: %v", err)
	}
}

// ctx bounds the dial only: the conn outlives it, as net.Dialer's.
func TestDialConnContext(t *testing.T) {
	a, b := node(t), node(t)
	ln := b.Listener("echo")
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	ctx, cancel := context.WithCancel(context.Background())
	c, err := a.DialConn(ctx, b.Addr().String(), "echo")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	cancel()
	if _, err := c.Write([]byte("still here")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, make([]byte, 10)); err != nil {
		t.Fatalf("a conn whose dial context ended: %v", err)
	}
	if _, err := a.DialConn(ctx, b.Addr().String(), "echo"); !errors.Is(err, context.Canceled) {
		t.Fatalf("DialConn with an ended context: %v", err)
	}
	if _, err := a.DialConn(context.Background(), b.Addr().String(), "nothing"); !errors.Is(err, rpc.ErrUnknownMethod) {
		t.Fatalf("DialConn to a service not served: %v", err)
	}
}

// Closing a listener stops its service only: Accept says net.ErrClosed,
// new streams are refused, conns accepted before go on.
func TestListenerClose(t *testing.T) {
	a, b, ln, client, server := connPair(t, "svc")
	other := b.Listener("other")
	defer other.Close()
	accepted := make(chan error, 1)
	go func() {
		_, err := ln.Accept()
		accepted <- err
	}()
	ln.Close()
	if err, ok := ttest.Within(accepted, ttest.Scaled(5*time.Second)); !ok || !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Accept on a closed listener: %v", err)
	}
	refused(t, a, b, "svc")
	if _, err := client.Write([]byte("ok")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(server, make([]byte, 2)); err != nil {
		t.Fatalf("an accepted conn after its listener closed: %v", err)
	}
	dialAccept(t, a, b, other, "other") // the other service goes on
}

// Evicting a peer fails every conn to it at once, on both sides, with
// ErrDeadReference and the cause: blocked Reads, Writes, and 1,000 idle
// conns. Once they and the nodes are closed, no goroutine is left behind.
func TestConnsFailOnEviction(t *testing.T) {
	const n = 1000
	noLeaks(t)
	a, b := node(t), node(t)
	ln := b.Listener("svc")
	defer ln.Close()
	clients, servers := make([]net.Conn, n), make([]net.Conn, n)
	for i := range n {
		clients[i], servers[i] = dialAccept(t, a, b, ln, "svc")
	}
	cause := errors.New("evicted by the test")

	var wg sync.WaitGroup
	errs := make(chan error, 2*n)
	for i := range n {
		wg.Add(2)
		go func() { // blocked in Write (every tenth: its peer reads nothing), else in Read
			defer wg.Done()
			var err error
			if i%10 == 0 {
				for err == nil {
					_, err = clients[i].Write(make([]byte, 64<<10))
				}
			} else {
				_, err = clients[i].Read(make([]byte, 1))
			}
			errs <- err
		}()
		go func() { // blocked in Read on the accepting side, but for the tenths
			defer wg.Done()
			if i%10 != 0 {
				_, err := servers[i].Read(make([]byte, 1))
				errs <- err
			}
		}()
	}
	waitFor(t, func() bool { return runtime.NumGoroutine() > 2*n-n/10 }, "the readers and writers to start")
	time.Sleep(100 * time.Millisecond) // not a synchronisation: more of them blocked, not yet running
	t0 := time.Now()
	if !a.Peers().Evict(b.ID(), cause) {
		t.Fatal("b not registered at a")
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	if _, ok := ttest.Within(done, ttest.Scaled(5*time.Second)); !ok {
		t.Fatal("conns outlived the eviction")
	}
	t.Logf("%d blocked Reads and Writes failed %v after the eviction", len(errs), time.Since(t0))
	close(errs)
	for err := range errs {
		if !errors.Is(err, rpc.ErrDeadReference) {
			t.Fatalf("after eviction: %v", err)
		}
	}
	// Every conn, either end, fails both ways from now on (once what it
	// had received is read: the writers' tenths sent some).
	for i := range n {
		for side, c := range map[string]net.Conn{"dialing": clients[i], "accepting": servers[i]} {
			if _, err := io.Copy(io.Discard, c); !errors.Is(err, rpc.ErrDeadReference) {
				t.Fatalf("conn %d, %s end: Read after the eviction: %v", i, side, err)
			}
			if _, err := c.Write([]byte("x")); !errors.Is(err, rpc.ErrDeadReference) {
				t.Fatalf("conn %d, %s end: Write after the eviction: %v", i, side, err)
			}
		}
	}
	// The evicting side's errors carry the cause; b learns of a reset.
	if _, err := clients[1].Write([]byte("x")); !errors.Is(err, rpc.ErrDeadReference) || !errors.Is(err, cause) {
		t.Fatalf("Write on an evicted peer's conn: %v", err)
	}
	if _, err := servers[0].Write([]byte("x")); !errors.Is(err, rpc.ErrDeadReference) {
		t.Fatalf("Write on the evicting peer's conn: %v", err)
	}
}

// Closing a listener and its conns leaves no goroutine behind, with 1,000
// conns open, some waiting to be accepted.
func TestListenerCloseManyConns(t *testing.T) {
	const n = 1000
	a, b := node(t), node(t)
	ln := b.Listener("svc")
	c, s := dialAccept(t, a, b, ln, "svc") // the tether connection's goroutines start
	conns := []net.Conn{c, s}
	waitFor(t, func() bool { return b.Peers().Stats().Peers == 1 }, "b to register a")
	base := runtime.NumGoroutine()
	for range n - 11 {
		c, s := dialAccept(t, a, b, ln, "svc")
		conns = append(conns, c, s)
	}
	for range 10 { // opened, never accepted
		c, err := a.DialConn(context.Background(), b.Addr().String(), "svc")
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	ln.Close()
	for _, c := range conns {
		c.Close()
	}
	waitFor(t, func() bool { return runtime.NumGoroutine() <= base+2 },
		"the conns' goroutines to end")
}

// noLeaks checks, once the test and its cleanups (registered after this
// call: its nodes' Close, its conns') are done, that no goroutine started
// since is left.
func noLeaks(t *testing.T) {
	t.Helper()
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
}

// The node's Close and Abort close its Listeners: a blocked Accept
// returns net.ErrClosed, and so does every Accept after, on every
// Listener the node made (one taken over by a second, one made after
// the close); conns accepted die with the node. Nothing is left running.
func TestNodeCloseClosesListeners(t *testing.T) {
	for _, how := range []string{"Close", "Abort"} {
		t.Run(how, func(t *testing.T) {
			noLeaks(t)
			a, b := node(t), node(t)
			blocked := b.Listener("blocked")
			accepting := make(chan error, 1)
			go func() {
				_, err := blocked.Accept()
				accepting <- err
			}()
			served := b.Listener("served")
			client, server := dialAccept(t, a, b, served, "served")
			replaced := b.Listener("served") // served is still open, but takes no new streams

			if how == "Close" {
				b.Close()
			} else {
				b.Abort()
			}
			if err, ok := ttest.Within(accepting, ttest.Scaled(5*time.Second)); !ok || !errors.Is(err, net.ErrClosed) {
				t.Fatalf("Accept blocked at %s: %v", how, err)
			}
			late := b.Listener("late")
			for name, ln := range map[string]net.Listener{"blocked": blocked, "served": served, "replaced": replaced, "late": late} {
				if _, err := ln.Accept(); !errors.Is(err, net.ErrClosed) {
					t.Fatalf("Accept on the %s listener after %s: %v", name, how, err)
				}
				if err := ln.Close(); err != nil {
					t.Fatalf("Close of the %s listener after %s: %v", name, how, err)
				}
			}
			for name, c := range map[string]net.Conn{"dialing": client, "accepting": server} {
				c.SetReadDeadline(time.Now().Add(ttest.Scaled(5 * time.Second)))
				if _, err := c.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
					t.Fatalf("%s end of a conn after %s: Read %v", name, how, err)
				}
			}
		})
	}
}

// A second Listener for a service takes over new streams; closing the
// first then leaves the second serving, and closing the second stops the
// service.
func TestListenerTakeover(t *testing.T) {
	a, b := node(t), node(t)
	first := b.Listener("svc")
	defer first.Close()
	second := b.Listener("svc")
	defer second.Close()
	dialAccept(t, a, b, second, "svc")
	first.Close()
	dialAccept(t, a, b, second, "svc")
	second.Close()
	refused(t, a, b, "svc")
}

// refused checks that a stream a opens to b's closed service is refused
// (ErrUnknownMethod, where the node's mux forgets the service), or ends at
// once.
func refused(t *testing.T, a, b *tether.Node, service string) {
	t.Helper()
	c, err := a.DialConn(context.Background(), b.Addr().String(), service)
	if err != nil {
		if !errors.Is(err, rpc.ErrUnknownMethod) {
			t.Fatalf("DialConn to a closed service: %v", err)
		}
		return
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(ttest.Scaled(5 * time.Second)))
	if _, err := c.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("a stream opened to a closed service read %v, want io.EOF", err)
	}
}

// Concurrent DialConns to a peer not yet connected share one tether
// connection: none is lost to the registry keeping only one.
func TestDialConnConcurrent(t *testing.T) {
	const n = 50
	a, b := node(t), node(t)
	ln := b.Listener("svc")
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Go(func() {
			c, err := a.DialConn(context.Background(), b.Addr().String(), "svc")
			if err == nil {
				_, err = c.Write([]byte("hi"))
				if err == nil {
					_, err = io.ReadFull(c, make([]byte, 2))
				}
				c.Close()
			}
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if st := a.Peers().Stats(); st.Connects != 1 {
		t.Fatalf("%d connections made for %d concurrent DialConns, want 1", st.Connects, n)
	}
}

// An HTTP server and client over tether: the server takes the node's
// Listener in place of a TCP listener, the client's Transport dials with
// DialConn. A silent server is then noticed in about a second, and every
// request to it fails at once with rpc.ErrDeadReference.
func ExampleNode_Listener() {
	server, err := tether.Listen("127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer server.Close()
	client, err := tether.Listen("127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer client.Close()

	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := r.Context().Value(http.LocalAddrContextKey).(tether.Addr).ID // this node
		fmt.Fprintf(w, "hello over tether from %v", id == server.ID())
	})}
	go srv.Serve(server.Listener("http"))
	defer srv.Close()

	hc := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
			return client.DialConn(ctx, addr, "http")
		},
	}}
	defer hc.CloseIdleConnections()
	resp, err := hc.Get("http://" + server.Addr().String() + "/")
	if err != nil {
		panic(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	fmt.Println(string(body))
	// Output: hello over tether from true
}
