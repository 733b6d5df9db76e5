package scale

import (
	"github.com/tetherrpc/tether/internal/systool"

	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/tetherrpc/tether/partition"
)

// portsPerRule is how many ports one iptables multiport rule names (the
// match's limit is 15).
const portsPerRule = 15

// CanSilence returns nil when Silence can work here: this process is in a
// private network namespace (partition.CheckNamespace) and partition's
// kernel support is present (root, iptables). Otherwise it says why.
func CanSilence() error {
	if err := partition.CheckNamespace(); err != nil {
		return err
	}
	if err := partition.KernelSupport(); err != nil {
		return err
	}
	if _, err := tool("iptables-restore"); err != nil {
		return fmt.Errorf("%w: %v", partition.ErrNoKernelSupport, err)
	}
	return nil
}

// Silence drops every packet to or from each of these TCP ports as it
// arrives, with one iptables-restore, so that all of them go silent at the
// same instant: a silent partition of those connections (no RST, no ICMP).
// It returns the instant the rules were in place. It refuses to run
// outside a private network namespace. Heal removes every such rule.
func Silence(ports []int) (time.Time, error) {
	if err := partition.CheckNamespace(); err != nil {
		return time.Time{}, err
	}
	if len(ports) == 0 {
		return time.Now(), nil
	}
	var b bytes.Buffer
	b.WriteString("*filter\n")
	for i := 0; i < len(ports); i += portsPerRule {
		group := ports[i:min(i+portsPerRule, len(ports))]
		s := make([]string, len(group))
		for j, p := range group {
			if p < 1 || p > 65535 {
				return time.Time{}, fmt.Errorf("scale: port %d out of range", p)
			}
			s[j] = strconv.Itoa(p)
		}
		fmt.Fprintf(&b, "-I INPUT -p tcp -m multiport --ports %s -j DROP\n", strings.Join(s, ","))
	}
	b.WriteString("COMMIT\n")
	path, err := tool("iptables-restore")
	if err != nil {
		return time.Time{}, err
	}
	cmd := exec.Command(path, "--noflush", "-w")
	cmd.Stdin = &b
	out, err := cmd.CombinedOutput()
	at := time.Now()
	if err != nil {
		return time.Time{}, fmt.Errorf("scale: iptables-restore: %v: %s", err, bytes.TrimSpace(out))
	}
	return at, nil
}

// Heal removes every rule of the INPUT chain, in a private network
// namespace only (elsewhere it does nothing).
func Heal() error {
	if partition.CheckNamespace() != nil {
		return nil
	}
	path, err := tool("iptables")
	if err != nil {
		return err
	}
	if out, err := exec.Command(path, "-w", "-F", "INPUT").CombinedOutput(); err != nil {
		return fmt.Errorf("scale: iptables -F INPUT: %v: %s", err, bytes.TrimSpace(out))
	}
	return nil
}

// TuneNamespace sets the network sysctls that thousands of connections
// dialled at once need: the listen backlog (net.core.somaxconn and
// net.ipv4.tcp_max_syn_backlog) and the range of ephemeral ports. It works
// only in a private network namespace, whose sysctls these are, and must
// run before this process first listens (Go reads somaxconn once).
// It reports what it could not set.
func TuneNamespace() error {
	if err := partition.CheckNamespace(); err != nil {
		return err
	}
	var errs []error
	for _, s := range []struct{ path, value string }{
		{"/proc/sys/net/core/somaxconn", "65535"},
		{"/proc/sys/net/ipv4/tcp_max_syn_backlog", "65535"},
		{"/proc/sys/net/ipv4/ip_local_port_range", "10000 65000"},
	} {
		if err := os.WriteFile(s.path, []byte(s.value), 0); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// tool finds a program on PATH or in the sbin directories.
var tool = systool.Find

// backlogDrops returns the packets the kernel has dropped because a
// CPU's input backlog was full (net.core.netdev_max_backlog), summed over
// CPUs, from /proc/net/softnet_stat; -1 if it cannot be read. The count is
// the whole host's: loopback traffic of every namespace goes through
// these backlogs, and a burst of thousands of packets at once (the TCP
// keepalives of connections made together) can overflow them.
func backlogDrops() int64 {
	b, err := os.ReadFile("/proc/net/softnet_stat")
	if err != nil {
		return -1
	}
	var total int64
	for line := range strings.Lines(string(b)) {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		n, err := strconv.ParseInt(f[1], 16, 64)
		if err != nil {
			return -1
		}
		total += n
	}
	return total
}
