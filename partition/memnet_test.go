package partition_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/tetherrpc/tether/internal/ttest"
	"github.com/tetherrpc/tether/partition"
)

func TestNetworkCarriesDataBothWays(t *testing.T) {
	n := partition.NewNetwork()
	defer n.Close()
	client, server := connect(t, n, "a", "b")

	write(t, client, "ping")
	if got := readN(t, server, 4, time.Second); string(got) != "ping" {
		t.Fatalf("server read %q", got)
	}
	write(t, server, "pong")
	if got := readN(t, client, 4, time.Second); string(got) != "pong" {
		t.Fatalf("client read %q", got)
	}

	for _, a := range []net.Addr{client.LocalAddr(), client.RemoteAddr(), server.LocalAddr(), server.RemoteAddr()} {
		if a.Network() != "mem" {
			t.Errorf("%v.Network() = %q, want mem", a, a.Network())
		}
	}
	if client.RemoteAddr() != server.LocalAddr() || client.LocalAddr() != server.RemoteAddr() {
		t.Errorf("addresses do not match: client %v->%v, server %v->%v",
			client.LocalAddr(), client.RemoteAddr(), server.LocalAddr(), server.RemoteAddr())
	}
	if a := client.LocalAddr().(partition.Addr); a.Host != "a" || a.Port == 0 {
		t.Errorf("client local address %v, want host a and a port", a)
	}
	if a := client.RemoteAddr().(partition.Addr); a.Host != "b" {
		t.Errorf("client remote address %v, want host b", a)
	}
}

func TestCutHoldsWritesUntilBufferFullThenBlocks(t *testing.T) {
	const size = 1024
	n := partition.NewNetwork(partition.WithBufferSize(size))
	defer n.Close()
	client, server := connect(t, n, "a", "b")
	n.Cut("a", "b")

	data := pattern(size, 1)
	if k, err := client.Write(data); k != size || err != nil {
		t.Fatalf("write into cut link = %d, %v; want %d, nil", k, err, size)
	}
	expectSilence(t, server, 100*time.Millisecond)

	client.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
	start := time.Now()
	k, err := client.Write([]byte("x"))
	if k != 0 || !isTimeout(err) {
		t.Fatalf("write into full cut link = %d, %v; want 0 and a timeout", k, err)
	}
	if waited := time.Since(start); waited < 90*time.Millisecond {
		t.Fatalf("write into full buffer returned after %v, before its deadline", waited)
	}
	client.SetWriteDeadline(time.Time{})

	n.Heal("a", "b")
	if got := readN(t, server, size, time.Second); !bytes.Equal(got, data) {
		t.Fatal("bytes held by the cut arrived changed")
	}
	write(t, client, "after")
	if got := readN(t, server, 5, time.Second); string(got) != "after" {
		t.Fatalf("after heal read %q", got)
	}
}

func TestPartialWriteWhenBufferFills(t *testing.T) {
	const size = 100
	n := partition.NewNetwork(partition.WithBufferSize(size))
	defer n.Close()
	client, server := connect(t, n, "a", "b")
	n.Cut("a", "b")

	client.SetWriteDeadline(time.Now().Add(50 * time.Millisecond))
	data := pattern(3*size, 2)
	k, err := client.Write(data)
	if k != size || !isTimeout(err) {
		t.Fatalf("oversize write into cut link = %d, %v; want %d and a timeout", k, err, size)
	}
	n.Heal("a", "b")
	if got := readN(t, server, size, time.Second); !bytes.Equal(got, data[:size]) {
		t.Fatal("the written part arrived changed")
	}
}

func TestBlockedWriteDrainsAsPeerReads(t *testing.T) {
	const size = 64
	n := partition.NewNetwork(partition.WithBufferSize(size))
	defer n.Close()
	client, server := connect(t, n, "a", "b")

	data := pattern(10*size, 3)
	res := make(chan error, 1)
	go func() {
		_, err := client.Write(data)
		res <- err
	}()
	if got := readN(t, server, len(data), 2*time.Second); !bytes.Equal(got, data) {
		t.Fatal("data written in pieces arrived changed")
	}
	if err, ok := ttest.Within(res, 2*time.Second); !ok || err != nil {
		t.Fatalf("write = %v (returned: %v)", err, ok)
	}
}

func TestDeadlineSetWhileBlockedWakesTheCall(t *testing.T) {
	n := partition.NewNetwork(partition.WithBufferSize(16))
	defer n.Close()
	client, server := connect(t, n, "a", "b")
	n.Cut("a", "b")
	write(t, client, string(pattern(16, 4)))

	writeErr := make(chan error, 1)
	go func() {
		_, err := client.Write([]byte("blocked"))
		writeErr <- err
	}()
	readErr := make(chan error, 1)
	go func() {
		_, err := server.Read(make([]byte, 8))
		readErr <- err
	}()
	if err, ok := ttest.Within(writeErr, 50*time.Millisecond); ok {
		t.Fatalf("write into full cut link returned %v; want it to block", err)
	}
	if err, ok := ttest.Within(readErr, 10*time.Millisecond); ok {
		t.Fatalf("read across cut link returned %v; want it to block", err)
	}

	client.SetWriteDeadline(time.Now().Add(20 * time.Millisecond))
	if err, ok := ttest.Within(writeErr, 2*time.Second); !ok || !isTimeout(err) {
		t.Fatalf("blocked write after SetWriteDeadline = %v (returned: %v); want a timeout", err, ok)
	}
	server.SetReadDeadline(time.Now()) // already passed
	if err, ok := ttest.Within(readErr, 2*time.Second); !ok || !isTimeout(err) {
		t.Fatalf("blocked read after SetReadDeadline = %v (returned: %v); want a timeout", err, ok)
	}
}

func TestDeadlines(t *testing.T) {
	n := partition.NewNetwork()
	defer n.Close()
	client, server := connect(t, n, "a", "b")
	write(t, client, "data")

	server.SetReadDeadline(time.Now().Add(-time.Second))
	if _, err := server.Read(make([]byte, 4)); !isTimeout(err) {
		t.Fatalf("read past deadline, data waiting = %v; want a timeout", err)
	}
	server.SetReadDeadline(time.Time{})
	if got := readN(t, server, 4, time.Second); string(got) != "data" {
		t.Fatalf("read after clearing the deadline = %q", got)
	}

	client.SetDeadline(time.Now().Add(-time.Second))
	if _, err := client.Write([]byte("x")); !isTimeout(err) {
		t.Fatalf("write past deadline = %v; want a timeout", err)
	}
	if _, err := client.Read(make([]byte, 1)); !isTimeout(err) {
		t.Fatalf("read past SetDeadline = %v; want a timeout", err)
	}

	start := time.Now()
	server.SetReadDeadline(start.Add(50 * time.Millisecond))
	_, err := server.Read(make([]byte, 1))
	if !isTimeout(err) {
		t.Fatalf("read with nothing to read = %v; want a timeout", err)
	}
	if waited := time.Since(start); waited < 45*time.Millisecond || waited > 2*time.Second {
		t.Fatalf("read deadline of 50ms returned after %v", waited)
	}
}

func TestHealDeliversHeldBytesInOrder(t *testing.T) {
	n := partition.NewNetwork()
	defer n.Close()
	client, server := connect(t, n, "a", "b")
	n.Cut("a", "b")
	var want bytes.Buffer
	for i := range 100 {
		msg := fmt.Sprintf("message %03d;", i)
		want.WriteString(msg)
		write(t, client, msg)
	}
	expectSilence(t, server, 50*time.Millisecond)
	n.Heal("a", "b")
	if got := readN(t, server, want.Len(), time.Second); !bytes.Equal(got, want.Bytes()) {
		t.Fatalf("after heal got %q", got)
	}
}

func TestCutOneWay(t *testing.T) {
	n := partition.NewNetwork()
	defer n.Close()
	client, server := connect(t, n, "a", "b")
	n.CutOneWay("a", "b")

	write(t, client, "lost")
	write(t, server, "flows")
	if got := readN(t, client, 5, time.Second); string(got) != "flows" {
		t.Fatalf("open direction read %q", got)
	}
	expectSilence(t, server, 100*time.Millisecond)

	n.Heal("a", "b")
	if got := readN(t, server, 4, time.Second); string(got) != "lost" {
		t.Fatalf("after heal read %q", got)
	}
}

func TestCutIsPerHostPair(t *testing.T) {
	n := partition.NewNetwork()
	defer n.Close()
	ab, ba := connect(t, n, "a", "b")
	ac, ca := connect(t, n, "a", "c")
	n.Cut("a", "b")

	write(t, ab, "x")
	write(t, ac, "y")
	if got := readN(t, ca, 1, time.Second); string(got) != "y" {
		t.Fatalf("a to c read %q", got)
	}
	expectSilence(t, ba, 50*time.Millisecond)
	n.HealAll()
	if got := readN(t, ba, 1, time.Second); string(got) != "x" {
		t.Fatalf("after HealAll read %q", got)
	}
}

func TestDelay(t *testing.T) {
	const d = 50 * time.Millisecond
	n := partition.NewNetwork()
	defer n.Close()
	client, server := connect(t, n, "a", "b")
	n.Delay("a", "b", d)

	start := time.Now()
	write(t, client, "ping")
	if elapsed := time.Since(start); elapsed > d/2 {
		t.Fatalf("write on a delayed link took %v; want it to return at once", elapsed)
	}
	readN(t, server, 4, 2*time.Second)
	if oneWay := time.Since(start); oneWay < d || oneWay > 2*time.Second {
		t.Fatalf("one way took %v; want at least %v", oneWay, d)
	}
	write(t, server, "pong")
	readN(t, client, 4, 2*time.Second)
	if rtt := time.Since(start); rtt < 2*d || rtt > 3*time.Second {
		t.Fatalf("round trip took %v; want at least %v", rtt, 2*d)
	}

	n.Delay("a", "b", 0)
	start = time.Now()
	write(t, client, "fast")
	readN(t, server, 4, time.Second)
	if elapsed := time.Since(start); elapsed >= d {
		t.Fatalf("after removing the delay one way took %v", elapsed)
	}
}

func TestDelayKeepsOrder(t *testing.T) {
	n := partition.NewNetwork()
	defer n.Close()
	client, server := connect(t, n, "a", "b")

	n.DelayOneWay("a", "b", 100*time.Millisecond)
	write(t, client, "first;")
	n.DelayOneWay("a", "b", 0)
	write(t, client, "second")
	start := time.Now()
	if got := readN(t, server, 12, 2*time.Second); string(got) != "first;second" {
		t.Fatalf("read %q; a later, faster chunk overtook an earlier one", got)
	}
	if elapsed := time.Since(start); elapsed < 80*time.Millisecond {
		t.Fatalf("delayed chunk arrived after %v", elapsed)
	}
}

func TestCutHoldsChunksInFlight(t *testing.T) {
	n := partition.NewNetwork()
	defer n.Close()
	client, server := connect(t, n, "a", "b")
	n.Delay("a", "b", 100*time.Millisecond)
	write(t, client, "in flight")
	n.Cut("a", "b") // the chunk is lost on the wire, kept for resending
	expectSilence(t, server, 200*time.Millisecond)
	n.Heal("a", "b") // also ends the delay
	if got := readN(t, server, 9, time.Second); string(got) != "in flight" {
		t.Fatalf("after heal read %q", got)
	}
}

func TestCloseWhileCut(t *testing.T) {
	n := partition.NewNetwork()
	defer n.Close()
	client, server := connect(t, n, "a", "b")
	n.Cut("a", "b")
	write(t, client, "bye")
	if err := client.Close(); err != nil {
		t.Fatal(err)
	}
	expectSilence(t, server, 100*time.Millisecond) // no EOF: the FIN is held too
	write(t, server, "still writable")

	n.Heal("a", "b")
	if got := readN(t, server, 3, time.Second); string(got) != "bye" {
		t.Fatalf("after heal read %q", got)
	}
	server.SetReadDeadline(time.Now().Add(time.Second))
	if _, err := server.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("read after the peer's close arrived = %v; want io.EOF", err)
	}
	if _, err := server.Write([]byte("x")); !errors.Is(err, syscall.EPIPE) {
		t.Fatalf("write after the peer's close arrived = %v; want EPIPE", err)
	}
}

func TestCloseEndsLocalCalls(t *testing.T) {
	n := partition.NewNetwork(partition.WithBufferSize(8))
	defer n.Close()
	client, _ := connect(t, n, "a", "b")
	n.Cut("a", "b")
	write(t, client, "12345678")

	readErr := make(chan error, 1)
	go func() {
		_, err := client.Read(make([]byte, 1))
		readErr <- err
	}()
	writeErr := make(chan error, 1)
	go func() {
		_, err := client.Write([]byte("more"))
		writeErr <- err
	}()
	if _, ok := ttest.Within(readErr, 20*time.Millisecond); ok {
		t.Fatal("read returned before Close")
	}
	if err := client.Close(); err != nil {
		t.Fatal(err)
	}
	for name, ch := range map[string]chan error{"read": readErr, "write": writeErr} {
		if err, ok := ttest.Within(ch, 2*time.Second); !ok || !errors.Is(err, net.ErrClosed) {
			t.Errorf("blocked %s after Close = %v (returned: %v); want net.ErrClosed", name, err, ok)
		}
	}
	if err := client.Close(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("second Close = %v; want net.ErrClosed", err)
	}
	if err := client.SetDeadline(time.Now()); !errors.Is(err, net.ErrClosed) {
		t.Errorf("SetDeadline after Close = %v; want net.ErrClosed", err)
	}
}

func TestCloseDeliversEOFAfterData(t *testing.T) {
	n := partition.NewNetwork()
	defer n.Close()
	client, server := connect(t, n, "a", "b")
	write(t, client, "last words")
	client.Close()
	server.SetReadDeadline(time.Now().Add(time.Second))
	got, err := io.ReadAll(server)
	if err != nil || string(got) != "last words" {
		t.Fatalf("ReadAll = %q, %v", got, err)
	}
}

func TestDialAcrossCutWaitsForContext(t *testing.T) {
	for _, cut := range []struct {
		name string
		do   func(*partition.Network)
	}{
		{"both ways", func(n *partition.Network) { n.Cut("a", "b") }},
		{"SYN lost", func(n *partition.Network) { n.CutOneWay("a", "b") }},
		{"SYN-ACK lost", func(n *partition.Network) { n.CutOneWay("b", "a") }},
	} {
		t.Run(cut.name, func(t *testing.T) {
			n := partition.NewNetwork()
			defer n.Close()
			ln, err := n.Host("b").Listen(":80")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			cut.do(n)
			ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
			defer cancel()
			start := time.Now()
			c, err := n.Host("a").Dial(ctx, "b:80")
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("Dial across a cut = %v, %v; want context.DeadlineExceeded", c, err)
			}
			if waited := time.Since(start); waited < 90*time.Millisecond {
				t.Fatalf("Dial gave up after %v, before its context ended", waited)
			}
		})
	}
}

func TestDialCompletesAfterHeal(t *testing.T) {
	n := partition.NewNetwork()
	defer n.Close()
	ln, err := n.Host("b").Listen("b:80")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	n.Cut("a", "b")

	type result struct {
		c   net.Conn
		err error
	}
	dialed := make(chan result, 1)
	go func() {
		c, err := n.Host("a").Dial(context.Background(), "b:80")
		dialed <- result{c, err}
	}()
	if _, ok := ttest.Within(dialed, 50*time.Millisecond); ok {
		t.Fatal("Dial across a cut returned")
	}
	n.Heal("a", "b")
	r, ok := ttest.Within(dialed, 2*time.Second)
	if !ok || r.err != nil {
		t.Fatalf("Dial after heal = %v (returned: %v)", r.err, ok)
	}
	defer r.c.Close()
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	write(t, r.c, "hi")
	if got := readN(t, s, 2, time.Second); string(got) != "hi" {
		t.Fatalf("read %q", got)
	}
}

func TestDialErrors(t *testing.T) {
	n := partition.NewNetwork()
	defer n.Close()
	a := n.Host("a")
	n.Host("b")
	ctx := context.Background()

	if _, err := a.Dial(ctx, "b:80"); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("Dial with no listener = %v; want ECONNREFUSED", err)
	}
	var dnsErr *net.DNSError
	if _, err := a.Dial(ctx, "nowhere:80"); !errors.As(err, &dnsErr) || !dnsErr.IsNotFound {
		t.Errorf("Dial to an unknown host = %v; want a not-found *net.DNSError", err)
	}
	if _, err := a.Dial(ctx, "b"); err == nil {
		t.Error("Dial to an address with no port succeeded")
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := a.Dial(cancelled, "b:80"); !errors.Is(err, context.Canceled) {
		t.Errorf("Dial with a cancelled context = %v; want context.Canceled", err)
	}
	var opErr *net.OpError
	if _, err := a.Dial(ctx, "b:80"); !errors.As(err, &opErr) || opErr.Op != "dial" || opErr.Net != "mem" {
		t.Errorf("Dial error %v is not a dial *net.OpError on mem", err)
	}
}

func TestDialSelf(t *testing.T) {
	n := partition.NewNetwork()
	defer n.Close()
	client, server := connect(t, n, "a", "a")
	write(t, client, "loop")
	if got := readN(t, server, 4, time.Second); string(got) != "loop" {
		t.Fatalf("read %q", got)
	}
}

func TestListen(t *testing.T) {
	n := partition.NewNetwork()
	defer n.Close()
	h := n.Host("srv")

	for _, addr := range []string{"80", ":81", "srv:82"} {
		ln, err := h.Listen(addr)
		if err != nil {
			t.Fatalf("Listen(%q) = %v", addr, err)
		}
		defer ln.Close()
		if a := ln.Addr(); a.Network() != "mem" || a.(partition.Addr).Host != "srv" {
			t.Errorf("Listen(%q).Addr() = %v", addr, a)
		}
	}
	if _, err := h.Listen(":80"); !errors.Is(err, syscall.EADDRINUSE) {
		t.Errorf("Listen on a used port = %v; want EADDRINUSE", err)
	}
	if _, err := h.Listen("other:90"); !errors.Is(err, syscall.EADDRNOTAVAIL) {
		t.Errorf("Listen on another host's address = %v; want EADDRNOTAVAIL", err)
	}
	if _, err := h.Listen(":99999"); err == nil {
		t.Error("Listen on port 99999 succeeded")
	}
	l1, err := h.Listen("")
	if err != nil {
		t.Fatal(err)
	}
	defer l1.Close()
	l2, err := h.Listen(":0")
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Close()
	if l1.Addr() == l2.Addr() || l1.Addr().(partition.Addr).Port == 0 {
		t.Errorf("ephemeral listeners got %v and %v", l1.Addr(), l2.Addr())
	}
}

func TestListenerClose(t *testing.T) {
	n := partition.NewNetwork()
	defer n.Close()
	ln, err := n.Host("b").Listen(":80")
	if err != nil {
		t.Fatal(err)
	}
	queued, err := n.Host("a").Dial(context.Background(), "b:80")
	if err != nil {
		t.Fatal(err)
	}
	defer queued.Close()

	accepted := make(chan error, 2)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				accepted <- err
				return
			}
			c.Close() // only the queued one; then Accept blocks
			accepted <- nil
		}
	}()
	if err, ok := ttest.Within(accepted, time.Second); !ok || err != nil {
		t.Fatalf("Accept of the queued conn = %v (returned: %v)", err, ok)
	}
	if err, ok := ttest.Within(accepted, 20*time.Millisecond); ok {
		t.Fatalf("Accept with nothing queued returned %v", err)
	}
	if err := ln.Close(); err != nil {
		t.Fatal(err)
	}
	if err, ok := ttest.Within(accepted, 2*time.Second); !ok || !errors.Is(err, net.ErrClosed) {
		t.Fatalf("blocked Accept after Close = %v (returned: %v); want net.ErrClosed", err, ok)
	}
	if err := ln.Close(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("second Close = %v", err)
	}
	if _, err := n.Host("a").Dial(context.Background(), "b:80"); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("Dial to a closed listener = %v; want ECONNREFUSED", err)
	}

	// A connection dialed but never accepted is closed with the listener.
	ln2, _ := n.Host("b").Listen(":81")
	pending, err := n.Host("a").Dial(context.Background(), "b:81")
	if err != nil {
		t.Fatal(err)
	}
	defer pending.Close()
	ln2.Close()
	pending.SetReadDeadline(time.Now().Add(time.Second))
	if _, err := pending.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("read on a conn whose listener closed before Accept = %v; want io.EOF", err)
	}
}
