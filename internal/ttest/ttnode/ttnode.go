// Package ttnode holds what the system tests share about tether nodes:
// starting one on loopback, dialing, watching a registry's events, and a
// node in a child process that a test can pause.
package ttnode

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/internal/ttest"
	"github.com/tetherrpc/tether/peer"
	"github.com/tetherrpc/tether/rpc"
)

// Start starts a node on loopback, closed at the end of the test.
func Start(t testing.TB, opts ...tether.Option) *tether.Node {
	t.Helper()
	n, err := tether.Listen("127.0.0.1:0", opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return n
}

// Dial connects from to to, and returns from's reference to it.
func Dial(t testing.TB, from, to *tether.Node) *peer.Peer {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), ttest.Scaled(5*time.Second))
	defer cancel()
	p, err := from.Dial(ctx, to.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// Echo is a handler that answers with its request.
func Echo(_ context.Context, req []byte) ([]byte, error) { return req, nil }

// Port returns the port a node listens on.
func Port(t testing.TB, n *tether.Node) int {
	t.Helper()
	return ttest.Port(t, n.Addr())
}

// Observed returns a logger that records Info and above.
func Observed() (*zap.Logger, *observer.ObservedLogs) {
	core, logs := observer.New(zapcore.InfoLevel)
	return zap.New(core), logs
}

// Events collects a registry's events.
type Events struct {
	mu sync.Mutex
	ev []peer.Event
	ch chan peer.Event
}

// Subscribe collects r's events until the end of the test.
func Subscribe(t testing.TB, r *peer.Registry) *Events {
	e := &Events{ch: make(chan peer.Event, 1024)}
	cancel := r.Subscribe(func(ev peer.Event) {
		e.mu.Lock()
		e.ev = append(e.ev, ev)
		e.mu.Unlock()
		e.ch <- ev
	})
	t.Cleanup(cancel)
	return e
}

// Next waits up to d for the next event of the given kind, skipping
// others, and fails t if none comes.
func (e *Events) Next(t testing.TB, kind peer.EventKind, d time.Duration) peer.Event {
	t.Helper()
	deadline := time.After(d)
	for {
		select {
		case ev := <-e.ch:
			if ev.Kind == kind {
				return ev
			}
		case <-deadline:
			t.Fatalf("no %v event within %v", kind, d)
		}
	}
}

// Count returns how many events of the given kind came so far.
func (e *Events) Count(kind peer.EventKind) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	n := 0
	for _, ev := range e.ev {
		if ev.Kind == kind {
			n++
		}
	}
	return n
}

// All returns the events so far.
func (e *Events) All() []peer.Event {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]peer.Event(nil), e.ev...)
}

// ServeTestMethods registers what the system tests call: "echo", and the
// stream "sink", which reads everything.
func ServeTestMethods(n *tether.Node) {
	n.Handle("echo", rpc.Func(Echo))
	n.HandleStream("sink", rpc.StreamFunc(func(ctx context.Context, s *rpc.Stream) error {
		_, err := io.Copy(io.Discard, s)
		return err
	}))
}

// childRole is the ttest.Role of a child process that runs a node.
const childRole = "tether node"

// StartChild runs a node serving ServeTestMethods in a child process (so
// that it can be paused), and returns its address and the child. The test
// package must call ServeChild from an init function.
func StartChild(t testing.TB) (addr string, child *ttest.Child) {
	t.Helper()
	child = ttest.StartChild(t, childRole)
	line := child.ReadLine(t)
	addr, ok := strings.CutPrefix(line, "ADDR ")
	if !ok {
		t.Fatalf("child node: %q", line)
	}
	return addr, child
}

// ServeChild, in a child process started by StartChild, runs its node
// until its stdin closes, and exits; elsewhere it returns at once.
func ServeChild() {
	if ttest.Role() != childRole {
		return
	}
	n, err := tether.Listen("127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	ServeTestMethods(n)
	fmt.Printf("ADDR %s\n", n.Addr())
	io.Copy(io.Discard, os.Stdin)
	n.Close()
	os.Exit(0)
}

// EnvInt returns the positive integer in the environment variable name,
// or def.
func EnvInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// PortOf returns the port of a TCP address.
func PortOf(addr net.Addr) int {
	if a, ok := addr.(*net.TCPAddr); ok {
		return a.Port
	}
	return 0
}
