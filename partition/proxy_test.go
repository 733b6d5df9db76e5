package partition_test

import (
	"bytes"
	"errors"
	"io"
	"net"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/tetherrpc/tether/internal/ttest"
	"github.com/tetherrpc/tether/partition"
)

// tcpServer is a target for the proxy that hands each accepted connection
// to the test.
type tcpServer struct {
	ln    net.Listener
	conns chan net.Conn
	wg    sync.WaitGroup
}

func startServer(t testing.TB) *tcpServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &tcpServer{ln: ln, conns: make(chan net.Conn, 16)}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.conns <- c
		}
	}()
	t.Cleanup(s.close)
	return s
}

func (s *tcpServer) close() {
	s.ln.Close()
	s.wg.Wait()
	for {
		select {
		case c := <-s.conns:
			c.Close()
		default:
			return
		}
	}
}

// accept returns the server's next connection, failing t after d.
func (s *tcpServer) accept(t testing.TB, d time.Duration) net.Conn {
	t.Helper()
	c, ok := ttest.Within(s.conns, d)
	if !ok {
		t.Fatalf("target accepted no connection within %v", d)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func startProxy(t testing.TB, target string) *partition.Proxy {
	t.Helper()
	p, err := partition.NewProxy(target)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func dialProxy(t testing.TB, p *partition.Proxy) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", p.Addr(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestProxyForwards(t *testing.T) {
	srv := startServer(t)
	p := startProxy(t, srv.ln.Addr().String())
	client := dialProxy(t, p)
	server := srv.accept(t, 5*time.Second)

	write(t, client, "ping")
	if got := readN(t, server, 4, 5*time.Second); string(got) != "ping" {
		t.Fatalf("target read %q", got)
	}
	big := pattern(1<<20, 9)
	go server.Write(big)
	if got := readN(t, client, len(big), 5*time.Second); !bytes.Equal(got, big) {
		t.Fatal("1 MiB from the target arrived changed")
	}
	if n := p.Conns(); n != 1 {
		t.Errorf("Conns() = %d, want 1", n)
	}

	// A client's half-close reaches the target as EOF.
	client.(*net.TCPConn).CloseWrite()
	server.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := server.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("target read after client CloseWrite = %v, want io.EOF", err)
	}
	write(t, server, "still open")
	if got := readN(t, client, 10, 5*time.Second); string(got) != "still open" {
		t.Fatalf("client read after its half-close %q", got)
	}
}

func TestProxyBlackholeHoldsConnectionsOpen(t *testing.T) {
	srv := startServer(t)
	p := startProxy(t, srv.ln.Addr().String())
	client := dialProxy(t, p)
	server := srv.accept(t, 5*time.Second)
	write(t, client, "ping")
	readN(t, server, 4, 5*time.Second)

	p.Blackhole()
	write(t, client, "held") // the proxy's kernel takes it
	write(t, server, "back")
	expectSilence(t, client, 300*time.Millisecond)
	expectSilence(t, server, 100*time.Millisecond)
	if n := p.Conns(); n != 1 {
		t.Errorf("Conns() while blackholed = %d, want 1", n)
	}

	p.Heal()
	if got := readN(t, server, 4, 5*time.Second); string(got) != "held" {
		t.Fatalf("target read after heal %q", got)
	}
	if got := readN(t, client, 4, 5*time.Second); string(got) != "back" {
		t.Fatalf("client read after heal %q", got)
	}
}

func TestProxyBlackholeDefersNewConnections(t *testing.T) {
	srv := startServer(t)
	p := startProxy(t, srv.ln.Addr().String())
	p.Blackhole()
	client := dialProxy(t, p) // the proxy's kernel completes the handshake
	write(t, client, "early")
	if c, ok := ttest.Within(srv.conns, 200*time.Millisecond); ok {
		c.Close()
		t.Fatal("the target got a connection through a blackholed proxy")
	}
	p.Heal()
	server := srv.accept(t, 5*time.Second)
	if got := readN(t, server, 5, 5*time.Second); string(got) != "early" {
		t.Fatalf("target read %q", got)
	}
}

func TestProxyDelay(t *testing.T) {
	const d = 100 * time.Millisecond
	srv := startServer(t)
	p := startProxy(t, srv.ln.Addr().String())
	client := dialProxy(t, p)
	server := srv.accept(t, 5*time.Second)

	p.Delay(d)
	start := time.Now()
	write(t, client, "ping")
	readN(t, server, 4, 5*time.Second)
	write(t, server, "pong")
	readN(t, client, 4, 5*time.Second)
	if rtt := time.Since(start); rtt < 2*d || rtt > 5*time.Second {
		t.Fatalf("round trip through a %v proxy delay took %v; want at least %v", d, rtt, 2*d)
	}

	p.Delay(0)
	start = time.Now()
	write(t, client, "ping")
	readN(t, server, 4, 5*time.Second)
	if oneWay := time.Since(start); oneWay >= d {
		t.Fatalf("after Delay(0) one way took %v", oneWay)
	}
}

func TestProxyReset(t *testing.T) {
	srv := startServer(t)
	p := startProxy(t, srv.ln.Addr().String())
	client := dialProxy(t, p)
	server := srv.accept(t, 5*time.Second)
	write(t, client, "ping")
	readN(t, server, 4, 5*time.Second)

	p.Reset()
	if n := p.Conns(); n != 0 {
		t.Errorf("Conns() after Reset = %d, want 0", n)
	}
	for name, c := range map[string]net.Conn{"client": client, "target": server} {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("%s read after Reset = %v; want ECONNRESET", name, err)
		}
	}

	// The proxy still serves new connections.
	again := dialProxy(t, p)
	server2 := srv.accept(t, 5*time.Second)
	write(t, again, "again")
	if got := readN(t, server2, 5, 5*time.Second); string(got) != "again" {
		t.Fatalf("after Reset read %q", got)
	}
}

func TestProxyResetWhileBlackholed(t *testing.T) {
	srv := startServer(t)
	p := startProxy(t, srv.ln.Addr().String())
	p.Blackhole()
	client := dialProxy(t, p)
	waitConns(t, p, 1)
	p.Reset()
	client.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := client.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("client read after Reset = %v; want ECONNRESET", err)
	}
	if c, ok := ttest.Within(srv.conns, 100*time.Millisecond); ok {
		c.Close()
		t.Fatal("a connection reset before it was forwarded reached the target")
	}
}

func TestProxyTargetDown(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	target := ln.Addr().String()
	ln.Close() // nothing listens there now
	p := startProxy(t, target)
	// The refusal comes back as a RST, which may beat the client's own
	// connect to the finish.
	client, err := net.DialTimeout("tcp", p.Addr(), 5*time.Second)
	if err == nil {
		defer client.Close()
		client.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err = client.Read(make([]byte, 1))
	}
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("client through a proxy whose target refuses got %v; want ECONNRESET", err)
	}
}

func TestProxyCloseLeaksNothing(t *testing.T) {
	before := goleak.IgnoreCurrent()
	srv := startServer(t)
	p, err := partition.NewProxy(srv.ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	forwarding, _ := net.Dial("tcp", p.Addr())
	defer forwarding.Close()
	s1 := srv.accept(t, 5*time.Second)
	p.Delay(time.Hour)
	write(t, forwarding, "due in an hour")
	write(t, s1, "due in an hour too")
	p.Blackhole()
	waiting, _ := net.Dial("tcp", p.Addr()) // accepted, target never dialed
	defer waiting.Close()
	waitConns(t, p, 2)

	closed := make(chan error, 1)
	go func() { closed <- p.Close() }()
	if err, ok := ttest.Within(closed, 5*time.Second); !ok || err != nil {
		t.Fatalf("Close = %v (returned: %v)", err, ok)
	}
	if n := p.Conns(); n != 0 {
		t.Errorf("Conns() after Close = %d", n)
	}
	for _, c := range []net.Conn{forwarding, waiting} {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err == nil || isTimeout(err) {
			t.Errorf("client read after proxy Close = %v; want the connection closed", err)
		}
	}
	if _, err := net.DialTimeout("tcp", p.Addr(), time.Second); err == nil {
		t.Error("the proxy still accepts connections after Close")
	}
	forwarding.Close()
	waiting.Close()
	s1.Close()
	srv.close()
	goleak.VerifyNone(t, before)
}

// waitConns waits until the proxy holds n connections: the proxy registers
// an accepted connection on its own goroutine, and nothing else signals it.
func waitConns(t *testing.T, p *partition.Proxy, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for p.Conns() != n {
		if time.Now().After(deadline) {
			t.Fatalf("Conns() = %d, want %d", p.Conns(), n)
		}
		waitFor(time.Millisecond)
	}
}
