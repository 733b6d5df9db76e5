package partition

import (
	"fmt"
	"strconv"
)

// Direction selects which packets of a TCP port a one-way rule drops.
type Direction int

const (
	// ToPort means packets addressed to the port: from the clients to the
	// server listening on it.
	ToPort Direction = iota + 1
	// FromPort means packets sent from the port: from the server listening
	// on it to its clients.
	FromPort
)

// KernelSupport returns nil when this process can make kernel-level
// partitions: Linux, root (CAP_NET_ADMIN and CAP_SYS_ADMIN), the unshare
// and iptables programs present, and a trial rule in a throwaway network
// namespace accepted. Otherwise it returns an error matching
// ErrNoKernelSupport that says exactly why, fit to be a skip reason. The
// answer is worked out once per process.
func KernelSupport() error { return kernelSupport() }

// ShapingSupport is KernelSupport for LimitRate: it also needs the tc
// program and a kernel that accepts a token bucket filter, which it tries
// on the loopback of a throwaway network namespace. The error, matching
// ErrNoKernelSupport, says what is missing. The answer is worked out once
// per process.
func ShapingSupport() error { return shapingSupport() }

// CheckNamespace returns nil when this process runs in a private network
// namespace, one that is not the host's, and otherwise an error matching
// ErrNotIsolated. The host's namespace is that of process 1 or, when that
// cannot be read, the one recorded by Isolated or Reexec when they started
// this process; a process that can tell neither is not provably isolated.
func CheckNamespace() error { return checkNamespace() }

// DropPort silently partitions TCP port port: iptables drops every packet
// to it and from it as it arrives (INPUT), so no RST or ICMP error tells
// anyone. Established connections stall with their data held for
// retransmission; new connections time out. The returned heal removes
// exactly these rules; it is safe to call more than once.
//
// DropPort refuses, with an error matching ErrNotIsolated, to run outside a
// private network namespace: run it inside Isolated or Reexec.
func DropPort(port int) (heal func() error, err error) {
	if err := checkPort(port); err != nil {
		return nil, err
	}
	return addRules(
		[]string{"-p", "tcp", "--dport", fmt.Sprint(port), "-j", "DROP"},
		[]string{"-p", "tcp", "--sport", fmt.Sprint(port), "-j", "DROP"},
	)
}

// DropPortOneWay is DropPort for one direction only: ToPort drops what
// clients send to the server on port, FromPort what it sends back. TCP
// acknowledgements travel the dropped way too, so the open direction
// delivers its data but keeps retransmitting it.
func DropPortOneWay(port int, dir Direction) (heal func() error, err error) {
	if err := checkPort(port); err != nil {
		return nil, err
	}
	var match string
	switch dir {
	case ToPort:
		match = "--dport"
	case FromPort:
		match = "--sport"
	default:
		return nil, fmt.Errorf("partition: unknown direction %d", dir)
	}
	return addRules([]string{"-p", "tcp", match, fmt.Sprint(port), "-j", "DROP"})
}

// Loss drops each TCP packet to or from port with the given probability
// (0 < probability <= 1), each way independently, using iptables'
// statistic match. TCP repairs the losses, so connections live on but
// stall now and then. The returned heal removes the rules. Like DropPort,
// it runs only in a private network namespace.
func Loss(port int, probability float64) (heal func() error, err error) {
	if err := checkPort(port); err != nil {
		return nil, err
	}
	if !(probability > 0 && probability <= 1) {
		return nil, fmt.Errorf("partition: loss probability %v not in (0, 1]", probability)
	}
	p := strconv.FormatFloat(probability, 'f', -1, 64)
	stat := []string{"-m", "statistic", "--mode", "random", "--probability", p, "-j", "DROP"}
	return addRules(
		append([]string{"-p", "tcp", "--dport", fmt.Sprint(port)}, stat...),
		append([]string{"-p", "tcp", "--sport", fmt.Sprint(port)}, stat...),
	)
}

// LimitRate shapes everything leaving network device dev (usually "lo") to
// rate, in tc's units ("1mbit", "500kbit"), with a token bucket filter
// (tc qdisc ... root tbf) whose bucket holds two of the device's MTUs and
// which queues up to 400 ms of data. The returned heal deletes the queueing
// discipline. Like DropPort, it runs only in a private network namespace.
func LimitRate(dev, rate string) (heal func() error, err error) { return limitRate(dev, rate) }

// SetMTU sets the MTU of network device dev (usually "lo", whose 64 KiB
// MTU makes a rate-limited link carry huge packets) and returns a restore
// that sets the old MTU back. Like DropPort, it runs only in a private
// network namespace.
func SetMTU(dev string, mtu int) (restore func() error, err error) { return setMTU(dev, mtu) }

func checkPort(port int) error {
	if port < 1 || port > 65535 {
		return fmt.Errorf("partition: port %d out of range 1-65535", port)
	}
	return nil
}
