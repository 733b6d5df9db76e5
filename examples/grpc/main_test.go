package main

import (
	"bytes"
	"context"
	"math/rand/v2"
	"net"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/internal/ttest"
	"github.com/tetherrpc/tether/internal/ttest/ttnode"
	"github.com/tetherrpc/tether/liveness"
	"github.com/tetherrpc/tether/partition"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestRun(t *testing.T) {
	if err := run(); err != nil {
		t.Fatal(err)
	}
}

// system is a gRPC client and server pair under test.
type system struct {
	name    string
	cc      *grpc.ClientConn
	port    int          // the server's port, where a partition drops packets
	holding atomic.Int64 // Hold calls running on the server
	stop    func()
}

// countHolds counts the Hold calls running on a server.
func countHolds(n *atomic.Int64) grpc.ServerOption {
	return grpc.UnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		if strings.HasSuffix(info.FullMethod, "/Hold") {
			n.Add(1)
			defer n.Add(-1)
		}
		return h(ctx, req)
	})
}

// startTCP is grpc-go over TCP, with opts on the client and sopts on the
// server.
func startTCP(t *testing.T, name string, sopts []grpc.ServerOption, opts ...grpc.DialOption) *system {
	s := &system{name: name}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := newServer(append(sopts, countHolds(&s.holding))...)
	served := make(chan struct{})
	go func() { srv.Serve(ln); close(served) }()
	s.cc, err = grpc.NewClient("passthrough:///"+ln.Addr().String(),
		append(opts, grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		t.Fatal(err)
	}
	s.port = ttnode.PortOf(ln.Addr())
	s.stop = func() { s.cc.Close(); srv.Stop(); <-served }
	return s
}

// startTether is grpc-go over tether: the server on n.Listener, the
// client dialing with n.DialConn.
func startTether(t *testing.T, name string, opts ...tether.Option) *system {
	s := &system{name: name}
	a, b := ttnode.Start(t, opts...), ttnode.Start(t, opts...)
	srv := newServer(countHolds(&s.holding))
	served := make(chan struct{})
	go func() { Serve(b, srv); close(served) }()
	cc, err := Dial(a, b.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s.cc, s.port = cc, ttnode.Port(t, b)
	s.stop = func() { s.cc.Close(); srv.Stop(); <-served }
	return s
}

// hold starts a Hold call (waiting for the connection to be ready) and
// returns the channel its error comes on, once the server runs it.
func (s *system) hold(t *testing.T, ctx context.Context) <-chan error {
	t.Helper()
	before := s.holding.Load()
	errc := make(chan error, 1)
	go func() {
		_, err := call(ctx, s.cc, "Hold", nil, grpc.WaitForReady(true))
		errc <- err
	}()
	ttest.WaitFor(t, 10*time.Second, func() bool { return s.holding.Load() > before || len(errc) > 0 }, s.name+": the Hold call to reach the server")
	if len(errc) > 0 {
		t.Fatalf("%s: the Hold call: %v", s.name, <-errc)
	}
	return errc
}

func TestEcho(t *testing.T) {
	s := startTether(t, "tether")
	defer s.stop()
	ctx, cancel := context.WithTimeout(context.Background(), ttest.Scaled(5*time.Second))
	defer cancel()
	req := bytes.Repeat([]byte("x"), 1<<20) // past yamux's window and gRPC's frame
	resp, err := call(ctx, s.cc, "Echo", req)
	if err != nil || !bytes.Equal(resp, req) {
		t.Fatalf("Echo: %d bytes, %v", len(resp), err)
	}
}

// The comparison: a gRPC call outstanding when its server goes silent (a
// kernel-level partition: iptables drops every packet of its port, in a
// private network namespace), side by side in one run:
//
//   - grpc-go over TCP with its defaults: still hanging at the end of the
//     run (TCP would give up after about 15 minutes);
//   - grpc-go with keepalive at its floor (10 s, 20 s to answer, and the
//     server's consent): fails after about 30 s; not with -short;
//   - grpc-go over tether, at tether's default liveness (idle peers are
//     kept alive by the kernel's TCP keepalive, but tether counts a stream
//     opened here that wrote since it last read as outstanding, see rpc's
//     Conn.Outstanding, so a peer with a gRPC call waiting for its answer
//     is checked at the full heartbeat rate) and with every peer probed
//     each heartbeat (liveness KeepAlive zero): each fails within a second
//     or two, in every one of TETHER_TRIALS partitions (default 5), the
//     tether connection redialed after each heal.
//
// The floors: every trial (p99) under 1 s for tether with probes, under
// 2 s at tether's default.
func TestSilentPartition(t *testing.T) {
	if !partition.Isolated(t) {
		return
	}
	trials := ttnode.EnvInt("TETHER_TRIALS", 5)
	probed := liveness.LAN()
	probed.KeepAlive = 0

	defaults := startTCP(t, "grpc over TCP, defaults", nil)
	defer defaults.stop()
	var kept *system
	if !testing.Short() {
		kept = startTCP(t, "grpc over TCP, keepalive 10s+20s",
			[]grpc.ServerOption{grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true})},
			grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 10 * time.Second, Timeout: 20 * time.Second, PermitWithoutStream: true}))
		defer kept.stop()
	}
	tethers := []*system{
		startTether(t, "grpc over tether, default liveness"),
		startTether(t, "grpc over tether, probed (KeepAlive 0)", tether.WithLiveness(probed)),
	}
	for _, s := range tethers {
		defer s.stop()
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel() // ends the calls still hanging
	hanging := defaults.hold(t, ctx)
	var keptErr <-chan error
	if kept != nil {
		keptErr = kept.hold(t, ctx)
	}
	t0 := time.Now()
	for _, s := range []*system{defaults, kept} {
		if s == nil {
			continue
		}
		heal, err := partition.DropPort(s.port)
		if err != nil {
			t.Fatal(err)
		}
		defer heal()
	}

	for _, s := range tethers {
		var took []time.Duration
		for i := range trials {
			errc := s.hold(t, ctx)
			// The call waits a while before the partition, 1.5 to 2.5 s:
			// the connection is quiet, as under a call that runs long, and
			// the partition falls anywhere in the kernel's keepalive period.
			time.Sleep(1500*time.Millisecond + rand.N(time.Second))
			p0 := time.Now()
			heal, err := partition.DropPort(s.port)
			if err != nil {
				t.Fatal(err)
			}
			err, ok := ttest.Within(errc, 10*time.Second)
			d := time.Since(p0)
			heal()
			if !ok {
				t.Fatalf("%s, trial %d: the call outlived the partition by 10 s", s.name, i)
			}
			if status.Code(err) != codes.Unavailable {
				t.Fatalf("%s, trial %d: %v", s.name, i, err)
			}
			if i == 0 {
				t.Logf("%s: the call failed: %v", s.name, err)
			}
			took = append(took, d)
		}
		slices.Sort(took)
		t.Logf("%s: the outstanding call failed after %v (p50 %v, max %v over %d partitions)",
			s.name, took, took[len(took)/2], took[len(took)-1], trials)
		floor := time.Second // with probes
		if s == tethers[0] {
			floor = 2 * time.Second // the kernel's keepalive: 0.78-1.68 s (liveness's doc)
		}
		if took[len(took)-1] > floor {
			t.Errorf("%s: slowest of %d %v, floor %v", s.name, trials, took[len(took)-1], floor)
		}
	}

	if kept != nil {
		err, ok := ttest.Within(keptErr, 60*time.Second)
		if !ok {
			t.Fatalf("%s: the call outlived the partition by 60 s", kept.name)
		}
		t.Logf("%s: the outstanding call failed after %v: %v", kept.name, time.Since(t0).Round(100*time.Millisecond), status.Code(err))
	}
	select {
	case err := <-hanging:
		t.Fatalf("%s: the call ended: %v", defaults.name, err)
	default:
		t.Logf("%s: the outstanding call still hangs %v after the partition", defaults.name, time.Since(t0).Round(100*time.Millisecond))
	}
}
