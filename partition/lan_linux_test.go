package partition_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tetherrpc/tether/internal/ttest"
	"github.com/tetherrpc/tether/partition"
)

// lanConnect returns both ends of a new TCP connection from host from to
// host to of lan.
func lanConnect(t *testing.T, lan *partition.LAN, from, to int) (client, server net.Conn) {
	t.Helper()
	ln, err := lan.Host(to).Listen("tcp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
	}()
	ctx, cancel := context.WithTimeout(context.Background(), ttest.Scaled(5*time.Second))
	defer cancel()
	client, err = lan.Host(from).Dial(ctx, "tcp", lanAddr(lan, to, ln.Addr()))
	if err != nil {
		t.Fatal(err)
	}
	server, ok := <-accepted
	if !ok {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

// lanAddr returns host i's address with the port of addr.
func lanAddr(lan *partition.LAN, i int, addr net.Addr) string {
	_, port, _ := net.SplitHostPort(addr.String())
	return net.JoinHostPort(lan.Host(i).Addr().String(), port)
}

// lanDial dials address from host from within d and closes what it got.
func lanDial(lan *partition.LAN, from int, address string, d time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	c, err := lan.Host(from).Dial(ctx, "tcp", address)
	if err == nil {
		c.Close()
	}
	return err
}

// timedOut reports whether err is a dial or read that ran out of time,
// not one refused or reset.
func timedOut(err error) bool {
	var ne net.Error
	return errors.Is(err, context.DeadlineExceeded) || errors.As(err, &ne) && ne.Timeout()
}

func TestLANHostsReachEachOther(t *testing.T) {
	lan := partition.LANForTest(t, 3)
	for from := range lan.Len() {
		for to := range lan.Len() {
			if from == to {
				continue
			}
			client, server := lanConnect(t, lan, from, to)
			if got := server.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap(); got != lan.Host(from).Addr() {
				t.Errorf("%v accepted a connection from %v; want %v", lan.Host(to), got, lan.Host(from))
			}
			if _, err := client.Write([]byte("hello")); err != nil {
				t.Fatal(err)
			}
			readN(t, server, 5, ttest.Scaled(5*time.Second))
		}
	}
	// The hosts are not on this process's network: its loopback listener
	// is not theirs.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if err := lanDial(lan, 0, ln.Addr().String(), ttest.Scaled(5*time.Second)); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dialing this process's loopback listener from %v: %v; want connection refused", lan.Host(0), err)
	}
}

func TestLANSilenceIsSilent(t *testing.T) {
	lan := partition.LANForTest(t, 3)
	closedPort := lan.Host(1).Addr().String() + ":9"
	// A connection to a closed port is refused: RST.
	if err := lanDial(lan, 0, closedPort, ttest.Scaled(5*time.Second)); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial to a closed port before the silence: %v; want connection refused", err)
	}
	// A datagram to a closed port is answered with ICMP port unreachable.
	if err := udpProbe(lan, 0, 1, ttest.Scaled(5*time.Second)); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("datagram to a closed port before the silence: %v; want connection refused", err)
	}
	client, server := lanConnect(t, lan, 0, 1)
	other, _ := lanConnect(t, lan, 2, 0)

	heal, err := lan.Silence(1)
	if err != nil {
		t.Fatal(err)
	}
	// No RST, no ICMP: the dial waits out its deadline.
	if err := lanDial(lan, 0, closedPort, 500*time.Millisecond); !timedOut(err) {
		t.Fatalf("dial to a closed port of the silenced host: %v; want a timeout", err)
	}
	if err := udpProbe(lan, 0, 1, 500*time.Millisecond); !timedOut(err) {
		t.Fatalf("datagram to a closed port of the silenced host: %v; want no answer", err)
	}
	// An established connection's writes are accepted, never acknowledged,
	// and retransmitted; the other side reads nothing, and no error.
	if _, err := client.Write([]byte("lost")); err != nil {
		t.Fatal(err)
	}
	server.SetReadDeadline(time.Now().Add(time.Second))
	if n, err := server.Read(make([]byte, 4)); !timedOut(err) {
		t.Fatalf("read on the silenced host: %d bytes, %v; want a timeout", n, err)
	}
	info := tcpInfo(t, client)
	if info.Unacked == 0 || info.Total_retrans == 0 {
		t.Fatalf("writer to the silenced host: %d segments unacknowledged, %d retransmitted; want both > 0", info.Unacked, info.Total_retrans)
	}
	// The other hosts still talk.
	if _, err := other.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	if err := lanDial(lan, 2, lan.Host(0).Addr().String()+":9", ttest.Scaled(5*time.Second)); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial between hosts not silenced: %v; want connection refused", err)
	}

	if err := heal(); err != nil {
		t.Fatal(err)
	}
	server.SetReadDeadline(time.Time{})
	if got := string(readN(t, server, 4, ttest.Scaled(15*time.Second))); got != "lost" {
		t.Fatalf("after the heal the silenced host read %q; want the held bytes", got)
	}
	if err := lanDial(lan, 0, closedPort, ttest.Scaled(5*time.Second)); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial to a closed port after the heal: %v; want connection refused", err)
	}
	if err := heal(); err != nil {
		t.Fatalf("second heal: %v", err)
	}
}

// udpProbe sends a datagram from host from to a closed port of host to and
// returns the error of a read that waits d for an answer.
func udpProbe(lan *partition.LAN, from, to int, d time.Duration) error {
	c, err := lan.Host(from).Dial(context.Background(), "udp", lan.Host(to).Addr().String()+":9")
	if err != nil {
		return err
	}
	defer c.Close()
	if _, err := c.Write([]byte("probe")); err != nil {
		return err
	}
	c.SetReadDeadline(time.Now().Add(d))
	_, err = c.Read(make([]byte, 10))
	return err
}

// tcpInfo returns the kernel's TCP_INFO for c.
func tcpInfo(t *testing.T, c net.Conn) *unix.TCPInfo {
	t.Helper()
	raw, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var info *unix.TCPInfo
	var ierr error
	if err := raw.Control(func(fd uintptr) { info, ierr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO) }); err != nil {
		t.Fatal(err)
	}
	if ierr != nil {
		t.Fatal(ierr)
	}
	return info
}

func TestLANCutOneWay(t *testing.T) {
	lan := partition.LANForTest(t, 3)
	conns := make([]net.PacketConn, lan.Len())
	for i := range conns {
		c, err := lan.Host(i).ListenPacket("udp", ":9000")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		conns[i] = c
	}
	// send has host from send a datagram to host to, and reports whether
	// it arrived within d.
	send := func(from, to int, d time.Duration) bool {
		t.Helper()
		dst := &net.UDPAddr{IP: lan.Host(to).Addr().AsSlice(), Port: 9000}
		msg := fmt.Sprintf("%d to %d at %v", from, to, time.Now().UnixNano())
		if _, err := conns[from].WriteTo([]byte(msg), dst); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 100)
		conns[to].SetReadDeadline(time.Now().Add(d))
		for {
			n, _, err := conns[to].ReadFrom(buf)
			if timedOut(err) {
				return false
			}
			if err != nil {
				t.Fatal(err)
			}
			if string(buf[:n]) == msg {
				return true
			}
		}
	}
	long, short := ttest.Scaled(5*time.Second), 500*time.Millisecond
	heal, err := lan.CutOneWay(0, 1)
	if err != nil {
		t.Fatal(err)
	}
	if send(0, 1, short) {
		t.Fatal("a datagram crossed the cut from host 0 to host 1")
	}
	for _, l := range [][2]int{{1, 0}, {2, 1}, {0, 2}} {
		if !send(l[0], l[1], long) {
			t.Fatalf("a datagram from host %d to host %d was lost; only 0 to 1 is cut", l[0], l[1])
		}
	}
	if err := heal(); err != nil {
		t.Fatal(err)
	}
	if !send(0, 1, long) {
		t.Fatal("after the heal a datagram from host 0 to host 1 was lost")
	}
}

func TestLANSplitSeparatesTheGroups(t *testing.T) {
	lan := partition.LANForTest(t, 5)
	ports := make([]string, lan.Len())
	for i := range ports {
		ln, err := lan.Host(i).Listen("tcp", ":7000")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				c.Close()
			}
		}()
		ports[i] = lan.Host(i).Addr().String() + ":7000"
	}
	rack := map[int]bool{0: true, 1: true}
	// check dials from every host to every other at once, the dials across
	// a split expected to time out.
	check := func(split bool) {
		t.Helper()
		var wg sync.WaitGroup
		for from := range lan.Len() {
			for to := range lan.Len() {
				if from == to {
					continue
				}
				cut := split && rack[from] != rack[to]
				d := ttest.Scaled(5 * time.Second)
				if cut {
					d = 500 * time.Millisecond
				}
				wg.Go(func() {
					err := lanDial(lan, from, ports[to], d)
					switch {
					case cut && !timedOut(err):
						t.Errorf("split: dial from host %d to host %d: %v; want a timeout", from, to, err)
					case !cut && err != nil:
						t.Errorf("split %v: dial from host %d to host %d: %v", split, from, to, err)
					}
				})
			}
		}
		wg.Wait()
	}
	heal, err := lan.Split(0, 1)
	if err != nil {
		t.Fatal(err)
	}
	check(true)
	if err := heal(); err != nil {
		t.Fatal(err)
	}
	check(false)
	for _, bad := range [][]int{{}, {0, 1, 2, 3, 4}, {0, 0}, {5}, {-1}} {
		if _, err := lan.Split(bad...); err == nil {
			t.Errorf("Split(%v) succeeded", bad)
		}
	}
}

func TestLANCutIsBetweenTwoHosts(t *testing.T) {
	lan := partition.LANForTest(t, 3)
	heal, err := lan.Cut(0, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer heal()
	for _, l := range [][2]int{{0, 1}, {1, 0}} {
		if err := lanDial(lan, l[0], lan.Host(l[1]).Addr().String()+":9", 300*time.Millisecond); !timedOut(err) {
			t.Errorf("dial from host %d to host %d across the cut: %v; want a timeout", l[0], l[1], err)
		}
	}
	for _, l := range [][2]int{{0, 2}, {2, 1}} {
		if err := lanDial(lan, l[0], lan.Host(l[1]).Addr().String()+":9", ttest.Scaled(5*time.Second)); !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("dial from host %d to host %d: %v; want connection refused", l[0], l[1], err)
		}
	}
}

func TestLANLossRoughlyAsConfigured(t *testing.T) {
	const (
		p = 0.3
		n = 1000
	)
	lan := partition.LANForTest(t, 2)
	rx, err := lan.Host(1).ListenPacket("udp", ":9000")
	if err != nil {
		t.Fatal(err)
	}
	defer rx.Close()
	// A receive buffer for every datagram, so that only the rule drops any.
	raw, _ := rx.(*net.UDPConn).SyscallConn()
	raw.Control(func(fd uintptr) { unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 16<<20) })
	tx, err := lan.Host(0).Dial(context.Background(), "udp", lan.Host(1).Addr().String()+":9000")
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Close()

	heal, err := lan.Loss(p)
	if err != nil {
		t.Fatal(err)
	}
	defer heal()
	// Datagrams 0 to n-1, then the end mark (n) until the receiver has
	// seen it: datagrams of one flow arrive in order, so by then each of
	// the others has arrived or been dropped.
	got := make(chan int, 1)
	go func() {
		seen := map[uint32]bool{}
		buf := make([]byte, 8)
		for {
			k, _, err := rx.ReadFrom(buf)
			if err != nil || k != 4 {
				close(got)
				return
			}
			seq := binary.BigEndian.Uint32(buf)
			if seq == n {
				got <- len(seen)
				return
			}
			seen[seq] = true
		}
	}()
	for seq := range uint32(n) {
		if _, err := tx.Write(binary.BigEndian.AppendUint32(nil, seq)); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.After(ttest.Scaled(10 * time.Second))
	var received int
	for sent := false; !sent; {
		if _, err := tx.Write(binary.BigEndian.AppendUint32(nil, n)); err != nil {
			t.Fatal(err)
		}
		select {
		case r, ok := <-got:
			if !ok {
				t.Fatal("receiver failed")
			}
			received, sent = r, true
		case <-time.After(10 * time.Millisecond):
		case <-deadline:
			t.Fatal("the end mark never arrived")
		}
	}
	loss := 1 - float64(received)/n
	t.Logf("loss %.3f (%d of %d datagrams) at probability %v", loss, n-received, n, p)
	// The standard deviation is 0.015: 0.1 is nearly 7 of them.
	if loss < p-0.1 || loss > p+0.1 {
		t.Fatalf("loss %.3f; want %v +- 0.1", loss, p)
	}
	if _, err := lan.Loss(0); err == nil {
		t.Fatal("Loss(0) succeeded")
	}
}

func TestLANDelay(t *testing.T) {
	if err := partition.DelaySupport(); err != nil {
		t.Skip(err)
	}
	lan := partition.LANForTest(t, 2)
	const d = 100 * time.Millisecond
	heal, err := lan.Delay(1, d)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := lanDial(lan, 0, lan.Host(1).Addr().String()+":9", ttest.Scaled(5*time.Second)); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial: %v; want connection refused", err)
	}
	if rtt := time.Since(start); rtt < 2*d {
		t.Fatalf("a round trip to the delayed host took %v; want >= %v", rtt, 2*d)
	}
	if err := heal(); err != nil {
		t.Fatal(err)
	}
}
