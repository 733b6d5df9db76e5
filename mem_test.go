package tether_test

import (
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/partition"
)

// The nodes of this package's tests run on one in-memory network, each on
// a host of its own: no kernel, no ports, no root, over New, Serve and
// WithDialer. (It starts no goroutine: it needs no closing.) The tests of
// what only TCP shows (a reset, the kernel's evidence) use ttnode's
// loopback nodes.
var (
	mem   = partition.NewNetwork()
	hosts atomic.Int64
)

// node starts a node on a new host of mem, closed at the end of the test.
func node(t testing.TB, opts ...tether.Option) *tether.Node {
	t.Helper()
	return nodeAt(t, fmt.Sprintf("node%d:7000", hosts.Add(1)), opts...)
}

// nodeAt starts a node listening on addr ("host:port") of mem, as a
// restarted process would on its old address.
func nodeAt(t testing.TB, addr string, opts ...tether.Option) *tether.Node {
	t.Helper()
	h, _, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	host := mem.Host(h)
	ln, err := host.Listen(addr)
	if err != nil {
		t.Fatal(err)
	}
	n, err := tether.New(append([]tether.Option{tether.WithDialer(host.Dial)}, opts...)...)
	if err != nil {
		ln.Close()
		t.Fatal(err)
	}
	serve(t, n, ln)
	return n
}

// serve runs n.Serve(ln) until n closes, and returns once the node
// accepts (so that n.Addr is ln's). At the end of the test it closes n
// and checks that Serve returned nil.
func serve(t testing.TB, n *tether.Node, ln net.Listener) {
	t.Helper()
	sl := &signalListener{Listener: ln, accepting: make(chan struct{})}
	served := make(chan error, 1)
	go func() { served <- n.Serve(sl) }()
	select {
	case <-sl.accepting:
	case err := <-served:
		t.Fatalf("Serve returned at once: %v", err)
	}
	t.Cleanup(func() {
		n.Close()
		if err := <-served; err != nil {
			t.Errorf("Serve returned %v after Close, want nil", err)
		}
	})
}

// signalListener closes accepting at its first Accept.
type signalListener struct {
	net.Listener
	once      sync.Once
	accepting chan struct{}
}

func (l *signalListener) Accept() (net.Conn, error) {
	l.once.Do(func() { close(l.accepting) })
	return l.Listener.Accept()
}
