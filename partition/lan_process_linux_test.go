package partition_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tetherrpc/tether/internal/ttest"
	"github.com/tetherrpc/tether/partition"
)

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

// TestLANOfTwentyHosts is the size of a cluster test: a node process on
// each of 20 hosts.
func TestLANOfTwentyHosts(t *testing.T) {
	if err := partition.LANSupport(); err != nil {
		t.Skip(err)
	}
	iptables := ttest.NeedIptables(t)
	const n = 20
	start := time.Now()
	lan, err := partition.NewLAN(context.Background(), n)
	if err != nil {
		t.Fatal(err)
	}
	made := time.Since(start)
	defer lan.Close()

	start = time.Now()
	servers := make([]*ttest.Child, n)
	for i := range n {
		servers[i] = startInHost(t, lan.Host(i), "lan serve")
	}
	for i, s := range servers {
		if line := s.ReadLine(t); line != "ready" {
			t.Fatalf("server on host %d said %q; want ready", i, line)
		}
	}
	started := time.Since(start)
	// ping has host from ask host to's server for its pong, within d.
	ping := func(from, to int, d time.Duration) error {
		ctx, cancel := context.WithTimeout(context.Background(), d)
		defer cancel()
		c, err := lan.Host(from).Dial(ctx, "tcp", lan.Host(to).Addr().String()+":7100")
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(d))
		fmt.Fprintln(c, "ping")
		line, err := bufio.NewReader(c).ReadString('\n')
		if want := "pong to " + lan.Host(from).Addr().String() + "\n"; err == nil && line != want {
			return fmt.Errorf("answer %q; want %q", line, want)
		}
		return err
	}
	for i := range n {
		if err := ping((i+1)%n, i, ttest.Scaled(5*time.Second)); err != nil {
			t.Fatalf("ping from host %d to host %d: %v", (i+1)%n, i, err)
		}
	}

	start = time.Now()
	heal, err := lan.Silence(7)
	if err != nil {
		t.Fatal(err)
	}
	silenced := time.Since(start)
	if err := ping(3, 7, 300*time.Millisecond); !timedOut(err) {
		t.Fatalf("ping to the silenced host: %v; want a timeout", err)
	}
	if err := ping(3, 8, ttest.Scaled(5*time.Second)); err != nil {
		t.Fatalf("ping to a host not silenced: %v", err)
	}
	start = time.Now()
	if err := heal(); err != nil {
		t.Fatal(err)
	}
	healed := time.Since(start)
	if err := ping(3, 7, ttest.Scaled(5*time.Second)); err != nil {
		t.Fatalf("ping to the healed host: %v", err)
	}
	// The heal left no rule behind.
	for _, h := range lan.Hosts() {
		out, err := h.Command(context.Background(), iptables, "-w", "-S", "INPUT").Output()
		if err != nil {
			t.Fatal(err)
		}
		if rules := strings.TrimSpace(string(out)); rules != "-P INPUT ACCEPT" {
			t.Fatalf("after the heal %v has the rules %q", h, rules)
		}
	}

	for _, s := range servers {
		s.Stdin.Close()
		s.Cmd.Wait()
	}
	start = time.Now()
	if err := lan.Close(); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d hosts: made in %v, their %d servers started in %v, a host silenced in %v and healed in %v, closed in %v",
		n, made.Round(time.Millisecond), n, started.Round(time.Millisecond), silenced.Round(time.Millisecond), healed.Round(time.Millisecond), time.Since(start).Round(time.Microsecond))
}
