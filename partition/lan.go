package partition

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"sync"
	"testing"
	"time"
)

// LAN is a network of real hosts on one machine, for tests: each host is a
// Linux network namespace of its own with one interface, eth0, and its own
// IPv4 address, and the hosts are joined by veth pairs to a Linux bridge
// in a further namespace of the LAN's own, the switch. The kernel's TCP
// runs between them, so partitions made here are true ones: Silence, Cut,
// CutOneWay and Split have iptables drop packets as they reach a host (no
// RST, no ICMP, nothing for anyone to notice but silence); Loss drops a
// share of them; Delay has tc delay a host's link where the kernel has the
// netem queueing discipline.
//
// A program runs in a host with Command; in this process, a listener or a
// connection is made in a host with its Listen and Dial, so one process
// can hold nodes on distinct hosts:
//
//	func TestRackFailure(t *testing.T) {
//		lan := partition.LANForTest(t, 6) // skips, saying why, where impossible
//		ln, err := lan.Host(5).Listen("tcp", ":7000") // 198.18.0.6:7000
//		if err != nil {
//			t.Fatal(err)
//		}
//		defer ln.Close()
//		heal, err := lan.Split(0, 1, 2) // hosts 0-2 lose 3-5, both ways
//		if err != nil {
//			t.Fatal(err)
//		}
//		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
//		defer cancel()
//		_, err = lan.Host(0).Dial(ctx, "tcp", lan.Host(5).Addr().String()+":7000")
//		// err is a timeout: the SYNs were dropped, nothing was refused.
//		heal()
//		cmd := lan.Host(0).Command(ctx, "curl", "http://198.18.0.6:7000/")
//		// cmd runs on host 0 ...
//	}
//
// The namespaces are held by file descriptors of this process, not named
// in /run/netns nor kept by helper processes, and nothing is created in the
// namespace of the process itself: so nothing touches the machine's real
// network, and when the process ends, however it ends, the kernel frees
// the namespaces with their interfaces, bridge and rules. Close frees them
// sooner. A namespace lives on while anything in it is open: a socket made
// by Listen or Dial, or a process started by Command that still runs.
//
// A LAN needs Linux, root, and the ip, nsenter and iptables programs (and
// tc for Delay); LANSupport says what is missing. Its hosts' addresses are
// in 198.18.0.0/16, the range set aside for testing network devices, which
// exists only inside the LAN. The hosts speak IPv4 only (IPv6 is off on
// their eth0), so the rules cover all they send but ARP, which says
// nothing of a partition. A LAN is safe for concurrent use.
type LAN struct {
	sw    *os.File // the switch's namespace, with the bridge
	hosts []*LANHost

	mu     sync.RWMutex // held to read the namespaces' files; held to write by Close
	closed bool
}

// A LANHost is one host of a LAN: a network namespace with its own address.
type LANHost struct {
	lan   *LAN
	index int
	addr  netip.Addr
	ns    *os.File
}

// MaxLANHosts is the most hosts a LAN can have: a Linux bridge takes at
// most 1024 ports.
const MaxLANHosts = 1000

// lanPrefix is the LAN's subnet. Host i has the address lanPrefix + i + 1.
var lanPrefix = netip.MustParsePrefix("198.18.0.0/16")

// errLANClosed is returned by whatever is asked of a closed LAN.
var errLANClosed = errors.New("partition: LAN closed")

// LANSupport returns nil when this process can make a LAN: KernelSupport
// (Linux, root, unshare, iptables), the ip and nsenter programs, and a
// trial bridge with a veth pair accepted in a throwaway network namespace.
// Otherwise it returns an error matching ErrNoKernelSupport that says why,
// fit to be a skip reason. The answer is worked out once per process.
func LANSupport() error { return lanSupport() }

// NewLAN makes a LAN of n hosts, numbered 0 to n-1 (1 <= n <= MaxLANHosts).
// ctx bounds the setup. Where LANSupport reports an error, NewLAN returns
// it. The caller must Close the LAN.
func NewLAN(ctx context.Context, n int) (*LAN, error) {
	if n < 1 || n > MaxLANHosts {
		return nil, fmt.Errorf("partition: a LAN of %d hosts; want 1 to %d", n, MaxLANHosts)
	}
	if err := lanSupport(); err != nil {
		return nil, err
	}
	return newLAN(ctx, n)
}

// LANForTest is NewLAN for a test: it skips t with the reason where
// LANSupport reports an error, fails it if the LAN cannot be made, and
// closes the LAN when t ends, pass or fail.
func LANForTest(t testing.TB, n int) *LAN {
	t.Helper()
	if err := lanSupport(); err != nil {
		t.Skip(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	l, err := NewLAN(ctx, n)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Error(err)
		}
	})
	return l
}

// Len returns the number of hosts.
func (l *LAN) Len() int { return len(l.hosts) }

// Host returns host i, 0 <= i < Len(); it panics otherwise.
func (l *LAN) Host(i int) *LANHost { return l.hosts[i] }

// Hosts returns every host, in order.
func (l *LAN) Hosts() []*LANHost { return append([]*LANHost(nil), l.hosts...) }

// Silence makes host i silent to the others and them to it: every packet
// between it and any other host is dropped as it arrives, so no RST or
// ICMP error tells anyone. Connections to it stall, new ones time out. Its
// loopback still works. The returned heal removes exactly these rules; it
// is safe to call more than once, and after Close.
func (l *LAN) Silence(i int) (heal func() error, err error) { return l.Split(i) }

// Split cuts the hosts of group (a rack) from all the others, both ways;
// within the group and within the rest, traffic flows. The returned heal
// removes exactly these rules.
func (l *LAN) Split(group ...int) (heal func() error, err error) {
	in := make(map[int]bool, len(group))
	for _, i := range group {
		if err := l.check(i); err != nil {
			return nil, err
		}
		if in[i] {
			return nil, fmt.Errorf("partition: host %d twice in a group", i)
		}
		in[i] = true
	}
	var a, b []int
	for i := range l.hosts {
		if in[i] {
			a = append(a, i)
		} else {
			b = append(b, i)
		}
	}
	if len(a) == 0 || len(b) == 0 {
		return nil, fmt.Errorf("partition: a split of %v leaves one side empty", group)
	}
	var rules []rule
	for _, i := range a {
		rules = append(rules, rule{host: i, from: b})
	}
	for _, i := range b {
		rules = append(rules, rule{host: i, from: a})
	}
	return l.addRules(rules)
}

// Cut drops every packet between hosts a and b, both ways; their links to
// the other hosts are untouched. The returned heal removes exactly these
// rules.
func (l *LAN) Cut(a, b int) (heal func() error, err error) {
	if err := l.checkPair(a, b); err != nil {
		return nil, err
	}
	return l.addRules([]rule{{host: b, from: []int{a}}, {host: a, from: []int{b}}})
}

// CutOneWay drops the packets from host from to host to, and only those:
// to's packets still reach from. TCP's acknowledgements travel the dropped
// way too, so a connection's open direction delivers its data but keeps
// retransmitting it, and a connection cannot be opened either way. The
// returned heal removes exactly this rule.
func (l *LAN) CutOneWay(from, to int) (heal func() error, err error) {
	if err := l.checkPair(from, to); err != nil {
		return nil, err
	}
	return l.addRules([]rule{{host: to, from: []int{from}}})
}

// Loss drops each packet between hosts with the given probability
// (0 < probability <= 1), as it arrives at a host, independently for each
// packet, using iptables' statistic match. TCP repairs the losses, so
// connections live on but stall now and then. The returned heal removes
// the rules.
func (l *LAN) Loss(probability float64) (heal func() error, err error) {
	if !(probability > 0 && probability <= 1) {
		return nil, fmt.Errorf("partition: loss probability %v not in (0, 1]", probability)
	}
	rules := make([]rule, len(l.hosts))
	for i := range rules {
		rules[i] = rule{host: i, probability: probability}
	}
	return l.addRules(rules)
}

// Delay delays every packet host i sends, and every packet sent to it, by
// d (rounded to the microsecond), so that its round trips to the others
// grow by 2d. It needs the netem queueing discipline: where the kernel
// lacks it, Delay returns an error matching ErrNoKernelSupport that says
// so (DelaySupport tells beforehand). The returned heal removes the delay.
func (l *LAN) Delay(i int, d time.Duration) (heal func() error, err error) {
	if err := l.check(i); err != nil {
		return nil, err
	}
	if d <= 0 {
		return nil, fmt.Errorf("partition: delay %v not positive", d)
	}
	if err := delaySupport(); err != nil {
		return nil, err
	}
	return l.delay(i, d)
}

// DelaySupport is LANSupport for Delay: it also needs the tc program and a
// kernel with the netem queueing discipline, which it tries in a throwaway
// network namespace. The answer is worked out once per process.
func DelaySupport() error { return delaySupport() }

// Close removes the LAN: it lets go of every namespace, and the kernel
// frees them, with their interfaces, the bridge and every rule, as soon as
// nothing else holds them (a socket still open in a host, a process
// started by Command still running). It is safe to call more than once.
func (l *LAN) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil
	}
	l.closed = true
	var errs []error
	for _, h := range l.hosts {
		errs = append(errs, h.ns.Close())
	}
	errs = append(errs, l.sw.Close())
	return errors.Join(errs...)
}

func (l *LAN) check(i int) error {
	if i < 0 || i >= len(l.hosts) {
		return fmt.Errorf("partition: no host %d in a LAN of %d", i, len(l.hosts))
	}
	return nil
}

func (l *LAN) checkPair(a, b int) error {
	if err := l.check(a); err != nil {
		return err
	}
	if err := l.check(b); err != nil {
		return err
	}
	if a == b {
		return fmt.Errorf("partition: host %d cannot be cut from itself", a)
	}
	return nil
}

// A rule drops, at host, what arrives from the hosts from, or with
// probability what arrives from any host.
type rule struct {
	host        int
	from        []int
	probability float64
}

// Index returns the host's number in its LAN.
func (h *LANHost) Index() int { return h.index }

// Addr returns the host's IPv4 address.
func (h *LANHost) Addr() netip.Addr { return h.addr }

// String names the host by number and address.
func (h *LANHost) String() string { return fmt.Sprintf("host %d (%v)", h.index, h.addr) }

// Command returns a command that runs the program name with args in the
// host's network namespace, as exec.CommandContext does (ctx kills it).
// It runs through nsenter, which enters the namespace and then becomes
// the program, so the Cmd's Process is the program's; its Path and Args
// are nsenter's. The namespace is passed to nsenter as the Cmd's first
// ExtraFiles entry (file descriptor 3, which the program inherits): append
// to ExtraFiles, do not replace it. Only the network namespace is the
// host's: the program shares this machine's files and processes. Once the
// LAN is closed, Start returns an error.
func (h *LANHost) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	return h.command(ctx, name, args...)
}

// Listen listens in the host's namespace, as net.Listen does: address
// ":7000" listens on the host's address (and its loopback). The listener
// keeps the namespace, and its connections work, even after Close; close
// it first.
func (h *LANHost) Listen(network, address string) (net.Listener, error) {
	var ln net.Listener
	err := h.do(func() (err error) {
		ln, err = net.Listen(network, address)
		return err
	})
	return ln, err
}

// ListenPacket is Listen for packets ("udp"), as net.ListenPacket does.
func (h *LANHost) ListenPacket(network, address string) (net.PacketConn, error) {
	var c net.PacketConn
	err := h.do(func() (err error) {
		c, err = net.ListenPacket(network, address)
		return err
	})
	return c, err
}

// Dial connects from the host, as net.Dialer's DialContext does. The
// address must be a literal IP address and port, such as another host's
// Addr() with a port: names are not looked up.
func (h *LANHost) Dial(ctx context.Context, network, address string) (net.Conn, error) {
	host, _, err := net.SplitHostPort(address)
	if err != nil {
		return nil, fmt.Errorf("partition: dial from %v: %w", h, err)
	}
	if _, err := netip.ParseAddr(host); err != nil {
		return nil, fmt.Errorf("partition: dial from %v: %q is not an IP address", h, host)
	}
	var c net.Conn
	err = h.do(func() (err error) {
		var d net.Dialer
		c, err = d.DialContext(ctx, network, address)
		return err
	})
	return c, err
}
