package partition

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// How a LAN is made. Each namespace is made by a goroutine locked to an OS
// thread that unshares the thread's network namespace and opens
// /proc/self/task/<tid>/ns/net: the open file keeps the namespace alive.
// Work inside a namespace is done the same way after setns(2), or by
// programs started through nsenter with the namespace's file as their
// descriptor 3. Each such thread returns to the process's namespace before
// it is unlocked. So the namespaces have no names in /run/netns, no process
// holds them but this one, and they vanish with this process however it
// ends.

var lanSupport = sync.OnceValue(func() error {
	if err := kernelSupport(); err != nil {
		return err
	}
	unshare, err := findTool("unshare")
	if err != nil {
		return fmt.Errorf("%w: %v", ErrNoKernelSupport, err)
	}
	ip, err := findTool("ip")
	if err != nil {
		return fmt.Errorf("%w: %v", ErrNoKernelSupport, err)
	}
	if _, err := findTool("nsenter"); err != nil {
		return fmt.Errorf("%w: %v", ErrNoKernelSupport, err)
	}
	// A bridge and a veth pair in a namespace that dies with the command.
	cmd := exec.Command(unshare, "-n", "--", ip, "-batch", "-")
	cmd.Stdin = strings.NewReader("link add br0 type bridge\nlink add v0 type veth peer name v1\nlink set v0 master br0\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		cerr := &CommandError{Args: cmd.Args, Output: strings.TrimSpace(string(out)), Err: err}
		return fmt.Errorf("%w: trial bridge and veth pair in a throwaway network namespace failed: %v", ErrNoKernelSupport, cerr)
	}
	return nil
})

var delaySupport = sync.OnceValue(func() error {
	if err := lanSupport(); err != nil {
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
	if err := run(unshare, "-n", "--", tc, "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"); err != nil {
		return fmt.Errorf("%w: no netem queueing discipline in this kernel (sch_netem), so no delay: trial in a throwaway network namespace failed: %v", ErrNoKernelSupport, err)
	}
	return nil
})

func newLAN(ctx context.Context, n int) (_ *LAN, err error) {
	l := &LAN{}
	defer func() {
		if err != nil {
			l.Close()
		}
	}()
	if l.sw, err = newNetns(); err != nil {
		return nil, err
	}
	for i := range n {
		ns, err := newNetns()
		if err != nil {
			return nil, err
		}
		addr := lanPrefix.Addr().As4()
		v := uint16(addr[2])<<8 | uint16(addr[3]) + uint16(i) + 1
		addr[2], addr[3] = byte(v>>8), byte(v)
		l.hosts = append(l.hosts, &LANHost{lan: l, index: i, addr: netip.AddrFrom4(addr), ns: ns})
	}
	// In the switch: the bridge and, for host i, a veth pair whose end hi
	// is a port of the bridge and whose other end is host i's eth0.
	var batch strings.Builder
	batch.WriteString("link add br0 type bridge\nlink set br0 up\n")
	extra := make([]*os.File, n)
	for i, h := range l.hosts {
		extra[i] = h.ns
		fmt.Fprintf(&batch, "link add h%d type veth peer name eth0 netns /proc/self/fd/%d\n", i, 4+i)
		fmt.Fprintf(&batch, "link set h%d master br0 up\n", i)
	}
	if err := l.run(ctx, l.sw, extra, batch.String(), "ip", "-batch", "-"); err != nil {
		return nil, err
	}
	bits := lanPrefix.Bits()
	for _, h := range l.hosts {
		err := h.do(func() error {
			if err := linkUp("lo"); err != nil {
				return err
			}
			// IPv4 only, which the rules cover.
			if err := os.WriteFile("/proc/sys/net/ipv6/conf/eth0/disable_ipv6", []byte("1"), 0); err != nil && !errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("partition: disabling IPv6 on eth0: %w", err)
			}
			if err := setAddr("eth0", h.addr, bits); err != nil {
				return err
			}
			return linkUp("eth0")
		})
		if err != nil {
			return nil, fmt.Errorf("partition: setting up %v: %w", h, err)
		}
	}
	return l, nil
}

// newNetns returns a new network namespace, held by the returned file.
func newNetns() (ns *os.File, err error) {
	err = onThread(func() error {
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			return fmt.Errorf("partition: new network namespace: %w", err)
		}
		ns, err = os.Open(threadNetns())
		return err
	})
	return ns, err
}

// do runs fn in the host's namespace.
func (h *LANHost) do(fn func() error) error { return h.lan.in(h.ns, fn) }

// in runs fn on an OS thread that has entered namespace ns. The sockets fn
// makes stay in ns; fn must not leave work to other goroutines, which run
// in the process's namespace.
func (l *LAN) in(ns *os.File, fn func() error) error {
	return onThread(func() error {
		if err := l.enter(ns); err != nil {
			return err
		}
		return fn()
	})
}

// enter moves the calling thread into namespace ns.
func (l *LAN) enter(ns *os.File) error {
	l.mu.RLock()
	defer l.mu.RUnlock()
	if l.closed {
		return errLANClosed
	}
	if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
		return fmt.Errorf("partition: entering a host's network namespace: %w", err)
	}
	// What is done next must not be done anywhere else: make sure.
	want, err := ns.Stat()
	if err != nil {
		return fmt.Errorf("partition: %w", err)
	}
	got, err := os.Stat(threadNetns())
	if err != nil {
		return fmt.Errorf("partition: %w", err)
	}
	if !os.SameFile(want, got) {
		return errors.New("partition: setns did not enter the host's network namespace")
	}
	return nil
}

// onThread runs fn, which may change the network namespace of its thread,
// on an OS thread of its own, and then moves the thread back to the
// namespace it had. Should that fail, the thread stays locked and so ends
// with fn's goroutine.
func onThread(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open(threadNetns())
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("partition: %w", err)
			return
		}
		defer orig.Close()
		err = fn()
		if unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	return <-errc
}

// threadNetns returns the file of the calling thread's network namespace.
func threadNetns() string { return fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()) }

func (h *LANHost) command(ctx context.Context, name string, args ...string) *exec.Cmd {
	nsenter, err := findTool("nsenter")
	if err != nil {
		nsenter = "nsenter"
	}
	cmd := exec.CommandContext(ctx, nsenter, append([]string{"--net=/proc/self/fd/3", "--", name}, args...)...)
	cmd.ExtraFiles = []*os.File{h.ns}
	h.lan.mu.RLock()
	defer h.lan.mu.RUnlock()
	switch {
	case err != nil:
		cmd.Err = fmt.Errorf("partition: %w", err)
	case h.lan.closed:
		cmd.Err = errLANClosed
	}
	// Were the LAN closed before Start, h.ns would be closed, and Start
	// would fail to pass it on.
	return cmd
}

// run runs program tool in namespace ns through nsenter, with extra as its
// descriptors 4 and on and stdin as its input.
func (l *LAN) run(ctx context.Context, ns *os.File, extra []*os.File, stdin, tool string, args ...string) error {
	nsenter, err := findTool("nsenter")
	if err != nil {
		return fmt.Errorf("partition: %w", err)
	}
	path, err := findTool(tool)
	if err != nil {
		return fmt.Errorf("partition: %w", err)
	}
	l.mu.RLock()
	defer l.mu.RUnlock()
	if l.closed {
		return errLANClosed
	}
	cmd := exec.CommandContext(ctx, nsenter, append([]string{"--net=/proc/self/fd/3", "--", path}, args...)...)
	cmd.ExtraFiles = append([]*os.File{ns}, extra...)
	cmd.Stdin = strings.NewReader(stdin)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return &CommandError{Args: cmd.Args, Output: strings.TrimSpace(out.String()), Err: err}
	}
	return nil
}

// iptables runs iptables in host i's namespace.
func (l *LAN) iptables(i int, args ...string) error {
	return l.run(context.Background(), l.hosts[i].ns, nil, "", "iptables", append([]string{"-w"}, args...)...)
}

// spec returns the iptables rule for r, without chain.
func (l *LAN) spec(r rule) []string {
	s := []string{"-i", "eth0"}
	if len(r.from) > 0 {
		addrs := make([]string, len(r.from))
		for k, j := range r.from {
			addrs[k] = l.hosts[j].addr.String()
		}
		s = append(s, "-s", strings.Join(addrs, ","))
	}
	if r.probability > 0 {
		p := strconv.FormatFloat(r.probability, 'f', -1, 64)
		s = append(s, "-m", "statistic", "--mode", "random", "--probability", p)
	}
	return append(s, "-j", "DROP")
}

// addRules inserts rules at the head of their hosts' INPUT chains and
// returns a heal that deletes exactly those rules. Rules die with the
// LAN, so after Close the heal has nothing to do.
func (l *LAN) addRules(rules []rule) (heal func() error, err error) {
	added := make([]bool, len(rules))
	remove := func() error {
		errs := l.each(len(rules), func(k int) error {
			if !added[k] {
				return nil
			}
			err := l.iptables(rules[k].host, append([]string{"-D", "INPUT"}, l.spec(rules[k])...)...)
			if errors.Is(err, errLANClosed) {
				return nil
			}
			return err
		})
		return errs
	}
	err = l.each(len(rules), func(k int) error {
		if err := l.iptables(rules[k].host, append([]string{"-I", "INPUT"}, l.spec(rules[k])...)...); err != nil {
			return err
		}
		added[k] = true
		return nil
	})
	if err != nil {
		return nil, errors.Join(err, remove())
	}
	return sync.OnceValue(remove), nil
}

// each runs f(0) to f(n-1), a few at a time, and joins their errors.
func (l *LAN) each(n int, f func(k int) error) error {
	errs := make([]error, n)
	sem := make(chan struct{}, 4)
	var wg sync.WaitGroup
	for k := range n {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			errs[k] = f(k)
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

func (l *LAN) delay(i int, d time.Duration) (heal func() error, err error) {
	us := strconv.FormatInt(max(d.Microseconds(), 1), 10) + "us"
	ctx := context.Background()
	// Host i's own end delays what it sends; the switch's end of its link,
	// what is sent to it.
	ends := []struct {
		ns  *os.File
		dev string
	}{{l.hosts[i].ns, "eth0"}, {l.sw, "h" + strconv.Itoa(i)}}
	var done int
	remove := func() error {
		var errs []error
		for _, e := range ends[:done] {
			if err := l.run(ctx, e.ns, nil, "", "tc", "qdisc", "del", "dev", e.dev, "root"); err != nil && !errors.Is(err, errLANClosed) {
				errs = append(errs, err)
			}
		}
		return errors.Join(errs...)
	}
	for _, e := range ends {
		if err := l.run(ctx, e.ns, nil, "", "tc", "qdisc", "add", "dev", e.dev, "root", "netem", "delay", us); err != nil {
			return nil, errors.Join(err, remove())
		}
		done++
	}
	return sync.OnceValue(remove), nil
}

// setAddr gives network device dev of the calling thread's namespace the
// IPv4 address addr/bits, as "ip addr add" does.
func setAddr(dev string, addr netip.Addr, bits int) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("partition: socket: %w", err)
	}
	defer unix.Close(fd)
	for _, set := range []struct {
		req uint
		v   []byte
	}{{unix.SIOCSIFADDR, addr.AsSlice()}, {unix.SIOCSIFNETMASK, net.CIDRMask(bits, 32)}} {
		ifr, err := unix.NewIfreq(dev)
		if err != nil {
			return fmt.Errorf("partition: device %q: %w", dev, err)
		}
		if err := ifr.SetInet4Addr(set.v); err != nil {
			return err
		}
		if err := unix.IoctlIfreq(fd, set.req, ifr); err != nil {
			return fmt.Errorf("partition: setting address %v/%d on %q: %w", addr, bits, dev, err)
		}
	}
	return nil
}

// linkUp brings network device dev of the calling thread's namespace up,
// as "ip link set up" does.
func linkUp(dev string) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("partition: socket: %w", err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq(dev)
	if err != nil {
		return fmt.Errorf("partition: device %q: %w", dev, err)
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("partition: flags of %q: %w", dev, err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("partition: bringing %q up: %w", dev, err)
	}
	return nil
}
