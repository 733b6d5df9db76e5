package scale

import (
	"bufio"
	"context"
	"errors"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/tetherrpc/tether/partition"
)

func TestMain(m *testing.M) {
	Child(Tether(), Yamux()) // the peers process of TestRunWithoutSilence
	goleak.VerifyTestMain(m)
}

// fakeConn is a connection of fakeSystem: Done closes when it dies.
type fakeConn struct {
	done   chan struct{}
	closed atomic.Bool
	once   sync.Once
}

func (c *fakeConn) Done() <-chan struct{} { return c.done }
func (c *fakeConn) Close() error {
	c.closed.Store(true)
	c.once.Do(func() { close(c.done) })
	return nil
}

// fakeSystem dials in memory: its first failDials dials fail, and the
// connections of its next dieDials dials die at once, as a handshake the
// server cut off would.
type fakeSystem struct {
	failDials, dieDials int64
	dials               atomic.Int64
	mu                  sync.Mutex
	conns               []*fakeConn
}

func (*fakeSystem) Name() string           { return "fake" }
func (*fakeSystem) Serve() (Server, error) { return nil, errors.New("fake: no server") }
func (s *fakeSystem) Dial(ctx context.Context, addr string) (io.Closer, error) {
	n := s.dials.Add(1)
	if n <= s.failDials {
		return nil, errors.New("fake: refused")
	}
	c := &fakeConn{done: make(chan struct{})}
	if n <= s.failDials+s.dieDials {
		c.Close()
	}
	s.mu.Lock()
	s.conns = append(s.conns, c)
	s.mu.Unlock()
	return c, nil
}

// TestRunPeersRetriesAndRedials checks the peers process's side: failed
// dials are retried, connections that die before SETTLED are redialled
// and counted, and every connection is closed when standard input ends.
func TestRunPeersRetriesAndRedials(t *testing.T) {
	sys := &fakeSystem{failDials: 3, dieDials: 4}
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	code := make(chan int, 1)
	go func() {
		code <- runPeers(sys, "fake:1", 10, 2, inR, outW)
		outW.Close()
	}()
	lines := bufio.NewScanner(outR)
	if !lines.Scan() || lines.Text() != "DIALED 10 3 0" {
		t.Fatalf("first line %q, want DIALED 10 3 0", lines.Text())
	}
	// The redials happen as the connections die; give them a moment.
	deadline := time.Now().Add(5 * time.Second)
	for sys.dials.Load() < 3+4+10 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	io.WriteString(inW, "SETTLED\n")
	if !lines.Scan() || lines.Text() != "SETTLED 4" {
		t.Fatalf("second line %q, want SETTLED 4", lines.Text())
	}
	inW.Close()
	if c := <-code; c != 0 {
		t.Fatalf("exit code %d", c)
	}
	sys.mu.Lock()
	defer sys.mu.Unlock()
	if len(sys.conns) != 14 {
		t.Fatalf("%d connections made, want 14 (10 and 4 that died)", len(sys.conns))
	}
	for i, c := range sys.conns {
		if !c.closed.Load() {
			t.Errorf("connection %d not closed at the end", i)
		}
	}
}

// TestSilenceRefusedOutsideNamespace checks that Silence touches no rule
// of a namespace it cannot prove private.
func TestSilenceRefusedOutsideNamespace(t *testing.T) {
	if partition.CheckNamespace() == nil {
		t.Skip("this test process runs in a private network namespace already")
	}
	if _, err := Silence([]int{9}); !errors.Is(err, partition.ErrNotIsolated) {
		t.Fatalf("Silence outside a private namespace: %v, want partition.ErrNotIsolated", err)
	}
}

// TestRunWithoutSilence runs the whole harness at a small size, for both
// systems of this module, on loopback and with nothing silenced.
func TestRunWithoutSilence(t *testing.T) {
	for _, sys := range []System{Tether(), Yamux()} {
		t.Run(sys.Name(), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			r, err := Run(ctx, sys, Config{Peers: 20, Settle: 100 * time.Millisecond, Idle: 300 * time.Millisecond, Logf: t.Logf})
			if err != nil {
				t.Fatal(err)
			}
			if r.Connected != 20 || r.IdleLost != 0 {
				t.Errorf("%d of 20 connected, %d lost while idle", r.Connected, r.IdleLost)
			}
			if r.GoroutinesPerPeer < 1 || r.BytesPerPeer <= 0 {
				t.Errorf("per peer: %.2f goroutines, %.0f bytes; a connection costs something", r.GoroutinesPerPeer, r.BytesPerPeer)
			}
			if r.NoSilence == "" || r.DetectMS != -1 {
				t.Errorf("nothing was to be silenced, yet NoSilence %q and DetectMS %v", r.NoSilence, r.DetectMS)
			}
			var b strings.Builder
			if err := WriteTable(&b, []*Result{r}); err != nil || !strings.Contains(b.String(), "20 of 20") {
				t.Errorf("table: %v\n%s", err, b.String())
			}
		})
	}
}
