package partition_test

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
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

func TestLANCloseLeavesNothing(t *testing.T) {
	if err := partition.LANSupport(); err != nil {
		t.Skip(err)
	}
	before := interfaces(t)
	lan, err := partition.NewLAN(context.Background(), 3)
	if err != nil {
		t.Fatal(err)
	}
	var namespaces []string
	for _, h := range lan.Hosts() {
		out, err := h.Command(context.Background(), "readlink", "/proc/self/ns/net").Output()
		if err != nil {
			t.Fatal(err)
		}
		namespaces = append(namespaces, strings.TrimSpace(string(out)))
	}
	if held := holders(t, namespaces); len(held) != len(namespaces) {
		t.Fatalf("namespaces %v held by %v; want each held by this process", namespaces, held)
	}
	heal, err := lan.Silence(0)
	if err != nil {
		t.Fatal(err)
	}
	cmd := lan.Host(0).Command(context.Background(), "true")
	if err := lan.Close(); err != nil {
		t.Fatal(err)
	}
	if held := holders(t, namespaces); len(held) > 0 {
		t.Fatalf("after Close the hosts' namespaces are still held: %v", held)
	}
	if after := interfaces(t); after != before {
		t.Fatalf("this process's network interfaces changed from %s to %s", before, after)
	}
	if err := heal(); err != nil {
		t.Fatalf("heal after Close: %v", err)
	}
	if err := cmd.Run(); err == nil {
		t.Fatal("a command made before Close ran in a host after it")
	}
	if err := lan.Host(1).Command(context.Background(), "true").Run(); err == nil {
		t.Fatal("a command ran in a host after Close")
	}
	if ln, err := lan.Host(1).Listen("tcp", ":0"); err == nil {
		ln.Close()
		t.Fatal("Listen in a host succeeded after Close")
	}
	if err := lan.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

func TestLANVanishesWithAKilledProcess(t *testing.T) {
	if err := partition.LANSupport(); err != nil {
		t.Skip(err)
	}
	before := interfaces(t)
	child := ttest.StartChild(t, "lan hold")
	namespaces := strings.Fields(child.ReadLine(t))
	if held := holders(t, namespaces); len(held) != len(namespaces) {
		t.Fatalf("the child's namespaces %v are held by %v; want each held by the child", namespaces, held)
	}
	if err := child.Cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	child.Cmd.Wait()
	if held := holders(t, namespaces); len(held) > 0 {
		t.Fatalf("after the child was killed its namespaces are still held: %v", held)
	}
	if after := interfaces(t); after != before {
		t.Fatalf("this process's network interfaces changed from %s to %s", before, after)
	}
}

// interfaces lists the network interfaces of this process's namespace.
func interfaces(t *testing.T) string {
	t.Helper()
	ifs, err := net.Interfaces()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, i := range ifs {
		names = append(names, i.Name)
	}
	return strings.Join(names, ",")
}

// holders returns, for each of namespaces ("net:[inode]") that a process
// of this machine has open or lives in, the first such place found.
func holders(t *testing.T, namespaces []string) map[string]string {
	t.Helper()
	want := map[string]bool{}
	for _, ns := range namespaces {
		want[ns] = true
	}
	held := map[string]string{}
	var links []string
	for _, pattern := range []string{"/proc/[0-9]*/fd/*", "/proc/[0-9]*/task/[0-9]*/ns/net"} {
		m, err := filepath.Glob(pattern)
		if err != nil {
			t.Fatal(err)
		}
		links = append(links, m...)
	}
	for _, l := range links {
		if target, err := os.Readlink(l); err == nil && want[target] && held[target] == "" {
			held[target] = l
		}
	}
	return held
}

func TestLANProcessesTalk(t *testing.T) {
	lan := partition.LANForTest(t, 2)
	server := startInHost(t, lan.Host(1), "lan serve")
	if line := server.ReadLine(t); line != "ready" {
		t.Fatalf("server said %q; want ready", line)
	}
	client := startInHost(t, lan.Host(0), "lan ping "+lan.Host(1).Addr().String()+":7100")
	if got, want := client.ReadLine(t), "pong to "+lan.Host(0).Addr().String(); got != want {
		t.Fatalf("client said %q; want %q", got, want)
	}
}

// startInHost starts this test binary in host h, playing role, as
// ttest.StartChild does in this process's namespace.
func startInHost(t *testing.T, h *partition.LANHost, role string) *ttest.Child {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := h.Command(context.Background(), exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), ttest.EnvRole+"="+role, "GORACE=atexit_sleep_ms=0")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close()
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		if _, ok := ttest.Within(done, ttest.Scaled(5*time.Second)); !ok {
			cmd.Process.Kill()
			<-done
		}
	})
	return &ttest.Child{Cmd: cmd, Stdin: stdin, Out: bufio.NewReader(stdout)}
}

func init() {
	if role, ok := strings.CutPrefix(ttest.Role(), "lan "); ok {
		os.Exit(lanChild(role))
	}
}

// lanChild plays a child's part: "serve" answers one line on port 7100
// with "pong to " and the caller's address; "ping ADDR" sends a line to
// ADDR and prints the answer; "hold" makes a LAN of 3 hosts, prints their
// namespaces and waits to be killed. Each ends when its stdin closes.
func lanChild(role string) int {
	fail := func(err error) int { fmt.Fprintln(os.Stderr, "lan child:", role, err); return 1 }
	switch fields := strings.Fields(role); fields[0] {
	case "serve":
		ln, err := net.Listen("tcp", ":7100")
		if err != nil {
			return fail(err)
		}
		fmt.Println("ready")
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				line, _ := bufio.NewReader(c).ReadString('\n')
				if line == "ping\n" {
					fmt.Fprintf(c, "pong to %v\n", c.RemoteAddr().(*net.TCPAddr).IP)
				}
				c.Close()
			}
		}()
	case "ping":
		c, err := net.DialTimeout("tcp", fields[1], 10*time.Second)
		if err != nil {
			return fail(err)
		}
		fmt.Fprintln(c, "ping")
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			return fail(err)
		}
		fmt.Print(line)
	case "hold":
		lan, err := partition.NewLAN(context.Background(), 3)
		if err != nil {
			return fail(err)
		}
		var namespaces []string
		for _, h := range lan.Hosts() {
			out, err := h.Command(context.Background(), "readlink", "/proc/self/ns/net").Output()
			if err != nil {
				return fail(err)
			}
			namespaces = append(namespaces, strings.TrimSpace(string(out)))
		}
		fmt.Println(strings.Join(namespaces, " "))
	default:
		return fail(errors.New("unknown role"))
	}
	io.Copy(io.Discard, os.Stdin)
	return 0
}

func TestLANOfTwentyHosts(t *testing.T) {
	if err := partition.LANSupport(); err != nil {
		t.Skip(err)
	}
	const n = 20
	start := time.Now()
	lan, err := partition.NewLAN(context.Background(), n)
	if err != nil {
		t.Fatal(err)
	}
	made := time.Since(start)
	closed := false
	defer func() {
		if !closed {
			lan.Close()
		}
	}()
	// Each host listens, and dials the next.
	var wg sync.WaitGroup
	for i := range n {
		ln, err := lan.Host(i).Listen("tcp", ":7000")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		wg.Go(func() {
			if c, err := ln.Accept(); err == nil {
				c.Close()
			}
		})
	}
	for i := range n {
		next := lan.Host((i+1)%n).Addr().String() + ":7000"
		if err := lanDial(lan, i, next, ttest.Scaled(5*time.Second)); err != nil {
			t.Fatalf("dial from host %d to %s: %v", i, next, err)
		}
	}
	wg.Wait()
	start = time.Now()
	heal, err := lan.Silence(7)
	if err != nil {
		t.Fatal(err)
	}
	silenced := time.Since(start)
	if err := lanDial(lan, 3, lan.Host(7).Addr().String()+":7000", 300*time.Millisecond); !timedOut(err) {
		t.Fatalf("dial to the silenced host: %v; want a timeout", err)
	}
	start = time.Now()
	if err := heal(); err != nil {
		t.Fatal(err)
	}
	healed := time.Since(start)
	start = time.Now()
	if err := lan.Close(); err != nil {
		t.Fatal(err)
	}
	closed = true
	t.Logf("%d hosts: made in %v, a host silenced in %v and healed in %v, closed in %v",
		n, made.Round(time.Millisecond), silenced.Round(time.Millisecond), healed.Round(time.Millisecond), time.Since(start).Round(time.Microsecond))
}
