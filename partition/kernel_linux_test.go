package partition_test

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/tetherrpc/tether/internal/ttest"
	"github.com/tetherrpc/tether/partition"
)

// hostRules returns iptables -S, or "" when iptables cannot be run here (a
// test that needs it then skips in Isolated). Only a parent's answer is
// compared; in an isolated copy it lists the copy's own namespace.
// iptables is looked for where partition looks for it, PATH or not.
func hostRules(t *testing.T) string {
	t.Helper()
	iptables, err := ttest.Tool("iptables")
	if err != nil {
		return ""
	}
	out, err := exec.Command(iptables, "-S").CombinedOutput()
	if err != nil {
		t.Logf("iptables -S: %v", err)
		return ""
	}
	return string(out)
}

// tcpPair returns a connected client and server on 127.0.0.1 and the
// server's port.
func tcpPair(t *testing.T) (client, server net.Conn, port int) {
	t.Helper()
	c, s := ttest.TCPPair(t)
	return c, s, ttest.Port(t, s.LocalAddr())
}

func TestDropPortIsSilent(t *testing.T) {
	t.Parallel()
	before := hostRules(t)
	if !partition.Isolated(t) {
		if after := hostRules(t); after != before {
			t.Errorf("the host's iptables rules changed:\nbefore:\n%s\nafter:\n%s", before, after)
		}
		return
	}
	if err := partition.CheckNamespace(); err != nil {
		t.Fatal(err)
	}
	client, server, port := tcpPair(t)
	write(t, client, "ping")
	readN(t, server, 4, 5*time.Second)

	heal, err := partition.DropPort(port)
	if err != nil {
		t.Fatal(err)
	}
	if rules := hostRules(t); strings.Count(rules, "-j DROP") != 2 {
		t.Errorf("rules in the namespace:\n%s", rules)
	}
	write(t, client, "held") // the kernel buffers it
	write(t, server, "back")
	expectSilence(t, client, 500*time.Millisecond)
	expectSilence(t, server, 100*time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", server.LocalAddr().String())
	if ne := net.Error(nil); !errors.As(err, &ne) || !ne.Timeout() {
		if c != nil {
			c.Close()
		}
		t.Fatalf("dial during the partition = %v; want it to time out with no answer", err)
	}

	if err := heal(); err != nil {
		t.Fatal(err)
	}
	if err := heal(); err != nil {
		t.Errorf("second heal = %v", err)
	}
	if rules := hostRules(t); strings.Contains(rules, "DROP") {
		t.Errorf("rules left after heal:\n%s", rules)
	}
	// Retransmission backs off (200 ms, 400 ms, 800 ms, ...): allow for it.
	if got := readN(t, server, 4, 10*time.Second); string(got) != "held" {
		t.Fatalf("server read after heal %q", got)
	}
	if got := readN(t, client, 4, 10*time.Second); string(got) != "back" {
		t.Fatalf("client read after heal %q", got)
	}
	write(t, client, "flows")
	if got := readN(t, server, 5, 5*time.Second); string(got) != "flows" {
		t.Fatalf("server read %q", got)
	}
}

func TestDropPortOneWay(t *testing.T) {
	t.Parallel()
	if !partition.Isolated(t) {
		return
	}
	client, server, port := tcpPair(t)
	heal, err := partition.DropPortOneWay(port, partition.ToPort)
	if err != nil {
		t.Fatal(err)
	}
	write(t, client, "lost")
	write(t, server, "arrives")
	if got := readN(t, client, 7, 5*time.Second); string(got) != "arrives" {
		t.Fatalf("client read %q", got)
	}
	expectSilence(t, server, 300*time.Millisecond)
	if err := heal(); err != nil {
		t.Fatal(err)
	}
	if got := readN(t, server, 4, 10*time.Second); string(got) != "lost" {
		t.Fatalf("server read after heal %q", got)
	}
	if _, err := partition.DropPortOneWay(port, partition.Direction(0)); err == nil {
		t.Error("DropPortOneWay accepted an unknown direction")
	}
}

func TestLossKeepsConnectionsAlive(t *testing.T) {
	t.Parallel()
	if !partition.Isolated(t) {
		return
	}
	client, server, port := tcpPair(t)
	heal, err := partition.Loss(port, 0.05)
	if err != nil {
		t.Fatal(err)
	}
	if rules := hostRules(t); strings.Count(rules, "-m statistic --mode random --probability 0.0") != 2 {
		t.Errorf("rules in the namespace:\n%s", rules)
	}
	go io.Copy(server, server) // echo; ends when the test closes server
	msg := pattern(4<<10, 5)
	for range 50 {
		if _, err := client.Write(msg); err != nil {
			t.Fatal(err)
		}
		if got := readN(t, client, len(msg), 10*time.Second); string(got) != string(msg) {
			t.Fatal("echo through a lossy link arrived changed")
		}
	}
	if err := heal(); err != nil {
		t.Fatal(err)
	}
	if rules := hostRules(t); strings.Contains(rules, "DROP") {
		t.Errorf("rules left after heal:\n%s", rules)
	}
	for _, p := range []float64{0, -1, 1.5} {
		if _, err := partition.Loss(port, p); err == nil {
			t.Errorf("Loss accepted probability %v", p)
		}
	}
}

func TestLimitRate(t *testing.T) {
	t.Parallel()
	ttest.NeedShaping(t)
	if !partition.Isolated(t) {
		return
	}
	client, server, _ := tcpPair(t)
	transfer := func() time.Duration {
		data := pattern(1<<20, 6)
		start := time.Now()
		go client.Write(data)
		readN(t, server, len(data), 20*time.Second)
		return time.Since(start)
	}
	heal, err := partition.LimitRate("lo", "8mbit") // 1 MB/s
	if err != nil {
		t.Fatal(err)
	}
	if limited := transfer(); limited < 500*time.Millisecond {
		t.Errorf("1 MiB at 8 mbit/s took %v; want about a second", limited)
	}
	if err := heal(); err != nil {
		t.Fatal(err)
	}
	if free := transfer(); free > ttest.Scaled(400*time.Millisecond) {
		t.Errorf("1 MiB after heal took %v", free)
	}
	if _, err := partition.LimitRate("nosuchdevice", "1mbit"); err == nil {
		t.Error("LimitRate on a missing device succeeded")
	}
}

func TestSetMTU(t *testing.T) {
	t.Parallel()
	if !partition.Isolated(t) {
		return
	}
	mtu := func() int {
		lo, err := net.InterfaceByName("lo")
		if err != nil {
			t.Fatal(err)
		}
		return lo.MTU
	}
	before := mtu()
	restore, err := partition.SetMTU("lo", 1500)
	if err != nil {
		t.Fatal(err)
	}
	if got := mtu(); got != 1500 {
		t.Errorf("lo's MTU after SetMTU(1500) = %d", got)
	}
	if err := restore(); err != nil {
		t.Fatal(err)
	}
	if got := mtu(); got != before {
		t.Errorf("lo's MTU after restore = %d, want %d", got, before)
	}
	if _, err := partition.SetMTU("nosuchdevice", 1500); err == nil {
		t.Error("SetMTU on a missing device succeeded")
	}
}

func TestShapingSupport(t *testing.T) {
	err := partition.ShapingSupport()
	t.Logf("ShapingSupport() = %v", err)
	if err != nil && !errors.Is(err, partition.ErrNoKernelSupport) {
		t.Fatalf("ShapingSupport() = %v; want nil or ErrNoKernelSupport", err)
	}
	if err == nil && partition.KernelSupport() != nil {
		t.Fatal("ShapingSupport() = nil without KernelSupport")
	}
}

func TestRulesRefusedOutsideNamespace(t *testing.T) {
	if partition.CheckNamespace() == nil {
		t.Skip("this process already runs in a private network namespace")
	}
	before := hostRules(t)
	attempts := map[string]func() (func() error, error){
		"DropPort":       func() (func() error, error) { return partition.DropPort(9) },
		"DropPortOneWay": func() (func() error, error) { return partition.DropPortOneWay(9, partition.FromPort) },
		"Loss":           func() (func() error, error) { return partition.Loss(9, 0.5) },
		"LimitRate":      func() (func() error, error) { return partition.LimitRate("lo", "1mbit") },
		"SetMTU":         func() (func() error, error) { return partition.SetMTU("lo", 1500) },
	}
	for name, try := range attempts {
		heal, err := try()
		if !errors.Is(err, partition.ErrNotIsolated) {
			t.Errorf("%s on the host = %v; want ErrNotIsolated", name, err)
		}
		if heal != nil {
			heal()
		}
	}
	if after := hostRules(t); after != before {
		t.Errorf("the host's iptables rules changed:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}

func TestKernelSupport(t *testing.T) {
	err := partition.KernelSupport()
	t.Logf("KernelSupport() = %v", err)
	if err != nil {
		if !errors.Is(err, partition.ErrNoKernelSupport) {
			t.Fatalf("KernelSupport() = %v; want nil or ErrNoKernelSupport", err)
		}
		if len(err.Error()) <= len(partition.ErrNoKernelSupport.Error())+2 {
			t.Errorf("KernelSupport() = %q gives no reason", err)
		}
	}
	if again := partition.KernelSupport(); again != err {
		t.Errorf("KernelSupport() changed its answer: %v, then %v", err, again)
	}
}

func TestIsolatedSubtests(t *testing.T) {
	t.Parallel()
	for _, name := range []string{"first", "second"} {
		t.Run(name, func(t *testing.T) {
			if !partition.Isolated(t) {
				return
			}
			if err := partition.CheckNamespace(); err != nil {
				t.Fatal(err)
			}
			if got := os.Getenv("TETHER_PARTITION_TEST"); got != t.Name() {
				t.Errorf("copy for %q runs %s", got, t.Name())
			}
			client, server, _ := tcpPair(t) // lo is up
			write(t, client, name)
			readN(t, server, len(name), 5*time.Second)
		})
	}
}

// helperEnv marks a run of this binary as a helper for the tests below.
const helperEnv = "PARTITION_TEST_HELPER"

// runHelper runs one helper test of this binary in a new process, as the
// go tool would run it, and returns its output.
func runHelper(t *testing.T, test, mode string) (string, error) {
	t.Helper()
	ttest.NeedKernelPartitions(t)
	out, err := ttest.RunTest(t, test, helperEnv+"="+mode)
	t.Logf("helper %s (%s):\n%s", test, mode, out)
	return out, err
}

// TestIsolatedHelper is run by the tests below, in a process of its own,
// as an isolated test whose outcome they choose. Run directly, it skips.
func TestIsolatedHelper(t *testing.T) {
	mode := os.Getenv(helperEnv)
	if mode == "" {
		t.Skip("helper for TestIsolatedPassesOnVerdict")
	}
	if !partition.Isolated(t) {
		return
	}
	self, _ := os.Readlink("/proc/self/ns/net")
	switch mode {
	case "pass":
		t.Log("inside", self)
	case "fail":
		t.Fatal("failing inside", self)
	case "skip":
		t.Skip("skipping inside", self)
	}
}

func TestIsolatedPassesOnVerdict(t *testing.T) {
	t.Parallel()
	self, _ := os.Readlink("/proc/self/ns/net")
	for mode, want := range map[string]string{
		"pass": "--- PASS: TestIsolatedHelper",
		"fail": "--- FAIL: TestIsolatedHelper",
		"skip": "--- SKIP: TestIsolatedHelper",
	} {
		out, err := runHelper(t, "TestIsolatedHelper", mode)
		if (err != nil) != (mode == "fail") {
			t.Errorf("%s: helper exit = %v", mode, err)
		}
		// The copy's own verdict line, passed up through t.Log, and the
		// parent's, which must agree.
		if got := strings.Count(out, want); got != 2 {
			t.Errorf("%s: %d lines %q, want 2 (the copy's and the parent's)", mode, got, want)
		}
		if !strings.Contains(out, "side net:[") || strings.Contains(out, "side "+self) {
			t.Errorf("%s: the copy did not report a namespace of its own", mode)
		}
	}
}

// TestReexecHelper is run by TestReexec in a process of its own, as a
// program that calls Reexec. Run directly, it skips.
func TestReexecHelper(t *testing.T) {
	if os.Getenv(helperEnv) != "reexec" {
		t.Skip("helper for TestReexec")
	}
	inside, err := partition.Reexec(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if !inside {
		t.Log("parent: the copy has run")
		return
	}
	if err := partition.CheckNamespace(); err != nil {
		t.Fatal(err)
	}
	self, _ := os.Readlink("/proc/self/ns/net")
	ln, err := net.Listen("tcp", "127.0.0.1:0") // lo is up
	if err != nil {
		t.Fatal(err)
	}
	ln.Close()
	t.Log("copy: inside", self)
}

func TestReexec(t *testing.T) {
	t.Parallel()
	out, err := runHelper(t, "TestReexecHelper", "reexec")
	if err != nil {
		t.Fatalf("helper failed: %v", err)
	}
	self, _ := os.Readlink("/proc/self/ns/net")
	if !strings.Contains(out, "copy: inside net:[") || strings.Contains(out, "inside "+self) {
		t.Error("the copy did not run in a namespace of its own")
	}
	if !strings.Contains(out, "parent: the copy has run") {
		t.Error("Reexec did not return false in the parent")
	}
}
