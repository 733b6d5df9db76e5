package partition

import (
	"github.com/tetherrpc/tether/internal/systool"

	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// Environment variables by which a parent tells its re-executed copy what
// it is. They are how the copy knows the host's network namespace when
// /proc/1/ns/net cannot be read.
const (
	envHostNetns = "TETHER_PARTITION_HOST_NETNS" // the parent's namespace, "net:[inode]"
	envTest      = "TETHER_PARTITION_TEST"       // the test an Isolated copy runs
)

const (
	capNetAdmin = 12
	capSysAdmin = 21
)

var kernelSupport = sync.OnceValue(func() error {
	eff, err := effectiveCaps()
	if err != nil {
		return fmt.Errorf("%w: cannot read capabilities: %v", ErrNoKernelSupport, err)
	}
	var missing []string
	if eff&(1<<capNetAdmin) == 0 {
		missing = append(missing, "CAP_NET_ADMIN (for iptables)")
	}
	if eff&(1<<capSysAdmin) == 0 {
		missing = append(missing, "CAP_SYS_ADMIN (for unshare -n)")
	}
	if len(missing) > 0 {
		return fmt.Errorf("%w: needs root; uid %d lacks %s", ErrNoKernelSupport, os.Geteuid(), strings.Join(missing, " and "))
	}
	unshare, err := findTool("unshare")
	if err != nil {
		return fmt.Errorf("%w: %v", ErrNoKernelSupport, err)
	}
	iptables, err := findTool("iptables")
	if err != nil {
		return fmt.Errorf("%w: %v", ErrNoKernelSupport, err)
	}
	// A trial rule in a namespace that dies with the command. unshare runs
	// iptables only once the new namespace exists, so this cannot touch the
	// host's rules.
	if err := run(unshare, "-n", "--", iptables, "-w", "-I", "INPUT", "-p", "tcp", "--dport", "9", "-j", "DROP"); err != nil {
		return fmt.Errorf("%w: trial rule in a throwaway network namespace failed: %v", ErrNoKernelSupport, err)
	}
	return nil
})

var shapingSupport = sync.OnceValue(func() error {
	if err := kernelSupport(); err != nil {
		return err
	}
	unshare, err := findTool("unshare")
	if err != nil {
		return fmt.Errorf("%w: %v", ErrNoKernelSupport, err)
	}
	tc, err := findTool("tc")
	if err != nil {
		return fmt.Errorf("%w: %v", ErrNoKernelSupport, err)
	}
	// As the trial rule: in a namespace that dies with the command.
	if err := run(unshare, "-n", "--", tc, "qdisc", "add", "dev", "lo", "root", "tbf", "rate", "1mbit", "burst", "131072", "latency", "400ms"); err != nil {
		return fmt.Errorf("%w: trial token bucket filter in a throwaway network namespace failed: %v", ErrNoKernelSupport, err)
	}
	return nil
})

// effectiveCaps returns this process's effective capability set.
func effectiveCaps() (uint64, error) {
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, err
	}
	for line := range strings.Lines(string(status)) {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			return strconv.ParseUint(strings.TrimSpace(v), 16, 64)
		}
	}
	return 0, errors.New("no CapEff line in /proc/self/status")
}

// findTool finds a program on PATH or in the sbin directories.
var findTool = systool.Find

// run runs a program and returns a *CommandError if it fails.
func run(path string, args ...string) error {
	out, err := exec.Command(path, args...).CombinedOutput()
	if err != nil {
		return &CommandError{Args: append([]string{path}, args...), Output: strings.TrimSpace(string(out)), Err: err}
	}
	return nil
}

// runTool is run for a program found by findTool.
func runTool(name string, args ...string) error {
	path, err := findTool(name)
	if err != nil {
		return fmt.Errorf("partition: %w", err)
	}
	return run(path, args...)
}

func checkNamespace() error {
	self, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		return fmt.Errorf("%w: %v", ErrNotIsolated, err)
	}
	known := false
	if host, err := os.Readlink("/proc/1/ns/net"); err == nil {
		known = true
		if self == host {
			return fmt.Errorf("%w: this process shares network namespace %s with process 1", ErrNotIsolated, self)
		}
	}
	if host := os.Getenv(envHostNetns); host != "" {
		known = true
		if self == host {
			return fmt.Errorf("%w: this process shares network namespace %s with the parent that started it", ErrNotIsolated, self)
		}
	}
	if !known {
		return fmt.Errorf("%w: /proc/1/ns/net cannot be read and this process was not started by Isolated or Reexec, so the host's namespace is unknown", ErrNotIsolated)
	}
	return nil
}

// addRules inserts iptables rules at the head of INPUT and returns a heal
// that deletes exactly those rules.
func addRules(rules ...[]string) (heal func() error, err error) {
	if err := checkNamespace(); err != nil {
		return nil, err
	}
	var added [][]string
	remove := func() error {
		var errs []error
		for i := len(added) - 1; i >= 0; i-- {
			if err := runTool("iptables", append([]string{"-w", "-D", "INPUT"}, added[i]...)...); err != nil {
				errs = append(errs, err)
			}
		}
		return errors.Join(errs...)
	}
	for _, r := range rules {
		if err := runTool("iptables", append([]string{"-w", "-I", "INPUT"}, r...)...); err != nil {
			return nil, errors.Join(err, remove())
		}
		added = append(added, r)
	}
	return sync.OnceValue(remove), nil
}

func limitRate(dev, rate string) (heal func() error, err error) {
	if err := checkNamespace(); err != nil {
		return nil, err
	}
	mtu, err := deviceMTU(dev)
	if err != nil {
		return nil, err
	}
	// A bucket smaller than the MTU would never pass a full-size packet;
	// loopback's MTU is 64 KiB.
	burst := strconv.Itoa(2 * mtu)
	if err := runTool("tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate", rate, "burst", burst, "latency", "400ms"); err != nil {
		return nil, err
	}
	return sync.OnceValue(func() error {
		return runTool("tc", "qdisc", "del", "dev", dev, "root")
	}), nil
}

// deviceMTU returns the MTU of a network device in this namespace.
func deviceMTU(dev string) (int, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("partition: socket: %w", err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq(dev)
	if err != nil {
		return 0, fmt.Errorf("partition: device %q: %w", dev, err)
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFMTU, ifr); err != nil {
		return 0, fmt.Errorf("partition: MTU of %q: %w", dev, err)
	}
	return int(ifr.Uint32()), nil
}

func setMTU(dev string, mtu int) (restore func() error, err error) {
	if err := checkNamespace(); err != nil {
		return nil, err
	}
	old, err := deviceMTU(dev)
	if err != nil {
		return nil, err
	}
	if err := writeMTU(dev, mtu); err != nil {
		return nil, err
	}
	return sync.OnceValue(func() error { return writeMTU(dev, old) }), nil
}

// writeMTU sets the MTU of a network device in this namespace, as "ip link
// set dev mtu" does.
func writeMTU(dev string, mtu int) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("partition: socket: %w", err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq(dev)
	if err != nil {
		return fmt.Errorf("partition: device %q: %w", dev, err)
	}
	ifr.SetUint32(uint32(mtu))
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFMTU, ifr); err != nil {
		return fmt.Errorf("partition: setting the MTU of %q to %d: %w", dev, mtu, err)
	}
	return nil
}

// loopbackUp brings this namespace's lo up, as "ip link set lo up" does: a
// new network namespace starts with it down.
func loopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("partition: socket: %w", err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("partition: flags of lo: %w", err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("partition: bringing lo up: %w", err)
	}
	return nil
}
