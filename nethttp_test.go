package tether_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/internal/ttest"
	"github.com/tetherrpc/tether/liveness"
	"github.com/tetherrpc/tether/partition"
	"github.com/tetherrpc/tether/rpc"
)

// net/http over tether: an http.Server on b.Listener("http"), an
// http.Client whose Transport dials with a.DialConn.

func startHTTP(t *testing.T, b *tether.Node, h http.Handler) *http.Server {
	t.Helper()
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 200 * time.Millisecond}
	ln := b.Listener("http")
	served := make(chan struct{})
	go func() { srv.Serve(ln); close(served) }()
	t.Cleanup(func() { srv.Close(); <-served })
	return srv
}

func httpClient(t *testing.T, a *tether.Node) *http.Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
			return a.DialConn(ctx, addr, "http")
		},
		MaxIdleConnsPerHost: 1000,
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

// Many concurrent requests, each on a conn of its own (HTTP/1.1 runs one
// request at a time on a conn): the server sees the client's node ID in
// Request.RemoteAddr.
func TestHTTPConcurrentConns(t *testing.T) {
	const n = 200
	a, b := node(t), node(t)
	var arrived sync.WaitGroup
	arrived.Add(n)
	all := make(chan struct{})
	go func() { arrived.Wait(); close(all) }()
	startHTTP(t, b, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		arrived.Done()
		<-all // every request is in flight at once: n conns
		fmt.Fprint(w, r.RemoteAddr)
	}))
	c := httpClient(t, a)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Go(func() {
			resp, err := c.Get("http://" + b.Addr().String() + "/")
			if err != nil {
				errs <- err
				return
			}
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err == nil && !strings.HasPrefix(string(body), string(a.ID())+"@") {
				err = fmt.Errorf("the server saw RemoteAddr %q, want %s@...", body, a.ID())
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
}

// The server's deadlines work on tether conns (ReadHeaderTimeout closes a
// conn that sends half a header), and a half-closed request is answered
// (the client writes its request, CloseWrite, and reads to io.EOF).
func TestHTTPDeadlineAndHalfClose(t *testing.T) {
	a, b := node(t), node(t)
	startHTTP(t, b, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "hello") }))
	ctx := context.Background()

	slow, err := a.DialConn(ctx, b.Addr().String(), "http")
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	slow.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n")) // and no more
	t0 := time.Now()
	slow.SetReadDeadline(time.Now().Add(ttest.Scaled(5 * time.Second)))
	if _, err := io.ReadAll(slow); err != nil {
		t.Fatalf("the server did not close a conn past its ReadHeaderTimeout: %v", err)
	}
	t.Logf("the server closed the slow conn after %v (ReadHeaderTimeout 200ms)", time.Since(t0))

	c, err := a.DialConn(ctx, b.Addr().String(), "http")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("GET / HTTP/1.0\r\n\r\n"))
	c.(interface{ CloseWrite() error }).CloseWrite()
	resp, err := io.ReadAll(c)
	if err != nil || !strings.HasPrefix(string(resp), "HTTP/1.0 200 OK") || !strings.HasSuffix(string(resp), "hello") {
		t.Fatalf("half-closed request: %q, %v", resp, err)
	}
}

// A response body being streamed when the server's node is evicted: the
// client's Read fails at once with ErrDeadReference and the cause, and so
// does a request waiting for its response.
func TestHTTPEvictedMidStream(t *testing.T) {
	a, b := node(t), node(t)
	started := make(chan struct{}, 2)
	startHTTP(t, b, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		started <- struct{}{}
		if r.URL.Path == "/wait" {
			<-r.Context().Done()
			return
		}
		for r.Context().Err() == nil { // a body that never ends
			w.Write([]byte("more "))
			w.(http.Flusher).Flush()
			time.Sleep(10 * time.Millisecond)
		}
	}))
	c := httpClient(t, a)
	base := "http://" + b.Addr().String()
	resp, err := c.Get(base + "/stream")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if _, err := io.ReadFull(resp.Body, make([]byte, 10)); err != nil {
		t.Fatal(err)
	}
	waiting := make(chan error, 1)
	go func() {
		_, err := c.Get(base + "/wait")
		waiting <- err
	}()
	<-started
	<-started

	cause := errors.New("evicted by the test")
	a.Peers().Evict(b.ID(), cause)
	read := make(chan error, 1)
	go func() {
		_, err := io.Copy(io.Discard, resp.Body)
		read <- err
	}()
	for what, ch := range map[string]chan error{"the body's Read": read, "the waiting request": waiting} {
		err, ok := ttest.Within(ch, ttest.Scaled(2*time.Second))
		if !ok {
			t.Fatalf("%s outlived the eviction", what)
		}
		if !errors.Is(err, rpc.ErrDeadReference) || !errors.Is(err, cause) {
			t.Fatalf("%s: %v", what, err)
		}
	}
}

// A silent partition (the in-memory network drops everything between
// the two hosts, as iptables would): a request waiting for its response
// fails within 2 s, where over TCP it would wait about 15 minutes. (With
// no kernel evidence off TCP, a peer is dead after liveness's DeadAfter,
// 1.5 s in LAN, of unanswered probes; over TCP, a silent one within 1 s:
// see examples/grpc.)
func TestHTTPSilentPartition(t *testing.T) {
	a, b, addr, nw := memPair(t)
	arrived := make(chan struct{}, 1)
	startHTTP(t, b, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		arrived <- struct{}{}
		<-r.Context().Done()
	}))
	c := httpClient(t, a)
	waiting := make(chan error, 1)
	go func() {
		_, err := c.Get("http://" + addr + "/wait")
		waiting <- err
	}()
	<-arrived
	time.Sleep(time.Second) // the request waits a while: the connection is quiet
	nw.Cut("a", "b")
	defer nw.HealAll()
	t0 := time.Now()
	err, ok := ttest.Within(waiting, 10*time.Second)
	if !ok {
		t.Fatal("the request outlived the partition by 10 s")
	}
	took := time.Since(t0)
	var v *liveness.Verdict
	if !errors.Is(err, rpc.ErrDeadReference) || !errors.As(err, &v) {
		t.Fatalf("the request: %v", err)
	}
	t.Logf("the waiting request failed %v after the partition: %v", took, err)
	if took > ttest.Scaled(2*time.Second) {
		t.Errorf("took %v, floor 2 s", took)
	}
}

// memPair starts nodes a and b on hosts "a" and "b" of an in-memory
// network of their own, where a partition needs no root (Network.Cut),
// and returns them, b's address and the network.
func memPair(t *testing.T, opts ...tether.Option) (a, b *tether.Node, addr string, nw *partition.Network) {
	t.Helper()
	nw = partition.NewNetwork()
	start := func(host string) *tether.Node {
		h := nw.Host(host)
		ln, err := h.Listen(host + ":7000")
		if err != nil {
			t.Fatal(err)
		}
		n, err := tether.New(append([]tether.Option{tether.WithDialer(h.Dial)}, opts...)...)
		if err != nil {
			t.Fatal(err)
		}
		served := make(chan error, 1)
		go func() { served <- n.Serve(ln) }()
		t.Cleanup(func() {
			n.Close()
			<-served
		})
		return n
	}
	return start("a"), start("b"), "b:7000", nw
}
