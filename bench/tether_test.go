package bench

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/rpc"
)

// countConn counts the Write calls made on a connection (each is one
// write(2) on a TCP socket) and, with split set, undoes tether's write
// coalescing: a write that is exactly one yamux data frame (its 12-byte
// header followed by the body the header announces) is passed on as two
// writes, header then body, which is what yamux's send loop does on its own.
type countConn struct {
	net.Conn
	split  bool
	writes atomic.Int64
}

const yamuxHeaderSize = 12

func (c *countConn) Write(p []byte) (int, error) {
	if c.split && len(p) > yamuxHeaderSize && p[0] == 0 && p[1] == 0 && // yamux version 0, type data
		int(binary.BigEndian.Uint32(p[8:12])) == len(p)-yamuxHeaderSize {
		c.writes.Add(1)
		if n, err := c.Conn.Write(p[:yamuxHeaderSize]); err != nil {
			return n, err
		}
		c.writes.Add(1)
		n, err := c.Conn.Write(p[yamuxHeaderSize:])
		return n + yamuxHeaderSize, err
	}
	c.writes.Add(1)
	return c.Conn.Write(p)
}

// CloseWrite keeps the half-close that rpc.Conn.Close uses on TCP.
func (c *countConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.New("no CloseWrite")
}

// BenchmarkTetherDeadCall: a Call on a connection that has been aborted (as
// an evicted peer's is). The library's floor: under 10 µs and no I/O. The
// "writes/op" metric counts writes to the socket during the timed loop and
// must be 0.
func BenchmarkTetherDeadCall(b *testing.B) {
	b.Run("system=tether", benchDeadCall)
}

func benchDeadCall(b *testing.B) {
	cc, sc := tcpPair(b)
	counted := &countConn{Conn: cc}
	client, server := tetherPair(b, counted, sc)
	defer closeTether(client, server)
	warmUp(b, tetherCaller(client), 1, 10)
	client.Abort(errors.New("evicted by the benchmark"))
	<-client.Done()
	time.Sleep(10 * time.Millisecond) // let the session's own shutdown writes (if any) finish
	before := counted.writes.Load()

	req := newPayload()
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		var resp []byte
		err := client.Call(ctx, "echo", req, &resp)
		if !errors.Is(err, rpc.ErrDeadReference) {
			b.Fatalf("call on a dead connection: %v, want ErrDeadReference", err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(counted.writes.Load()-before)/float64(b.N), "writes/op")
}

// BenchmarkTetherCoalesce: tether's sequential echo with its write
// coalescing (the library's behaviour) and without it. The library has no
// switch for coalescing, so "off" is emulated below it: both ends' TCP
// connections are wrapped in a countConn that splits each coalesced yamux
// data frame back into the two writes yamux itself makes. Both variants go
// through the same wrapper. "writes/op" counts socket writes per call, both
// ends together.
func BenchmarkTetherCoalesce(b *testing.B) {
	for _, v := range []struct {
		name  string
		split bool
	}{{"on", false}, {"off-emulated", true}} {
		b.Run("coalesce="+v.name+"/system=tether", func(b *testing.B) {
			cc, sc := tcpPair(b)
			ccc, scc := &countConn{Conn: cc, split: v.split}, &countConn{Conn: sc, split: v.split}
			client, server := tetherPair(b, ccc, scc)
			defer closeTether(client, server)
			call := tetherCaller(client)
			warmUp(b, call, 1, 200)
			before := ccc.writes.Load() + scc.writes.Load()
			runSequential(b, call)
			b.ReportMetric(float64(ccc.writes.Load()+scc.writes.Load()-before)/float64(b.N), "writes/op")
		})
	}
}

// idlePeers is the number of idle connections BenchmarkIdlePeerMemory opens.
const idlePeers = 1000

// idleResult is one measurement of BenchmarkIdlePeerMemory, per connection
// with both of its ends in this process.
type idleResult struct {
	heap, stack, goroutines float64
}

var idleCache sync.Map // sub-benchmark name -> idleResult

// BenchmarkIdlePeerMemory opens 1000 idle connections, both ends in this
// process, and reports what each costs: Go heap bytes ("heap-B/peer"),
// goroutine stack bytes ("stack-B/peer"), their sum ("B/peer") and
// goroutines ("goroutines/peer"). A "peer" here is one connection counted
// at both of its ends (a pair); kernel socket buffers are not included.
//
//   - level=rpc: 1000 rpc.Client/rpc.Server pairs over loopback TCP. The
//     two ends are alike (the same rpc.Conn and yamux session), so one end
//     costs about half the figure.
//   - level=node: one tether.Node (tether.Listen) that 1000 bare rpc.Client
//     connections dial: the node's end is a registered peer.Peer with
//     liveness probing at the default heartbeat (so "idle" means no calls,
//     but probes flow), the other end a bare rpc.Conn. The node's own cost
//     per peer is about this figure minus half the rpc-level one.
//
// The measurement is made once per benchmark run (when b.N is 1) and
// reported again as the framework raises b.N, so -count gives independent
// samples without building 1000 connections at every b.N.
func BenchmarkIdlePeerMemory(b *testing.B) {
	for _, level := range []string{"rpc", "node"} {
		b.Run("level="+level+"/system=tether", func(b *testing.B) {
			if b.N == 1 {
				var r idleResult
				if level == "rpc" {
					r = measureIdle(b, openRPCPairs)
				} else {
					r = measureIdle(b, openNodePeers)
				}
				idleCache.Store(b.Name(), r)
			}
			v, ok := idleCache.Load(b.Name())
			if !ok {
				b.Fatal("no measurement")
			}
			r := v.(idleResult)
			b.ReportMetric(0, "ns/op")
			b.ReportMetric(r.heap, "heap-B/peer")
			b.ReportMetric(r.stack, "stack-B/peer")
			b.ReportMetric(r.heap+r.stack, "B/peer")
			b.ReportMetric(r.goroutines, "goroutines/peer")
		})
	}
}

type memSnapshot struct {
	heap, stack uint64
	goroutines  int
}

func snapshot() memSnapshot {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return memSnapshot{heap: m.HeapAlloc, stack: m.StackInuse, goroutines: runtime.NumGoroutine()}
}

// measureIdle opens idlePeers connections with open, lets them sit idle,
// and measures the difference they make. open returns a function that
// closes them all.
func measureIdle(b *testing.B, open func(testing.TB, int) func()) idleResult {
	b.StopTimer()
	before := snapshot()
	closeAll := open(b, idlePeers)
	time.Sleep(time.Second) // idle: several heartbeats at the node level
	after := snapshot()
	closeAll()
	n := float64(idlePeers)
	return idleResult{
		heap:       (float64(after.heap) - float64(before.heap)) / n,
		stack:      (float64(after.stack) - float64(before.stack)) / n,
		goroutines: float64(after.goroutines-before.goroutines) / n,
	}
}

// openRPCPairs opens n rpc.Client/rpc.Server pairs over loopback TCP.
func openRPCPairs(tb testing.TB, n int) func() {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	servers := make(chan *rpc.Conn, n)
	errs := make(chan error, n)
	mux := echoMux()
	go func() {
		for range n {
			nc, err := ln.Accept()
			if err != nil {
				errs <- err
				return
			}
			go func() {
				c, err := rpc.Server(context.Background(), nc, &rpc.Config{Mux: mux})
				if err != nil {
					errs <- err
					return
				}
				servers <- c
			}()
		}
	}()
	clients := dialRPC(tb, ln.Addr().String(), n)
	all := append([]*rpc.Conn(nil), clients...)
	for range n {
		select {
		case c := <-servers:
			all = append(all, c)
		case err := <-errs:
			tb.Fatal(err)
		}
	}
	return func() { closeConns(all) }
}

// openNodePeers starts a tether.Node and dials it n times with bare
// rpc.Clients, waiting until the node has registered all n peers.
func openNodePeers(tb testing.TB, n int) func() {
	node, err := tether.Listen("127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	node.Handle("echo", rpc.Func(func(_ context.Context, req []byte) ([]byte, error) { return req, nil }))
	clients := dialRPC(tb, node.Addr().String(), n)
	deadline := time.Now().Add(30 * time.Second)
	for len(node.Peers().List()) < n {
		if time.Now().After(deadline) {
			tb.Fatalf("the node registered %d peers of %d", len(node.Peers().List()), n)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return func() {
		var wg sync.WaitGroup
		wg.Go(func() { closeConns(clients) })
		wg.Go(func() { node.Close() })
		wg.Wait()
	}
}

// dialRPC dials addr n times, 16 at a time, and starts an rpc.Client on each.
func dialRPC(tb testing.TB, addr string, n int) []*rpc.Conn {
	out := make([]*rpc.Conn, n)
	var wg sync.WaitGroup
	var failed atomic.Pointer[error]
	sem := make(chan struct{}, 16)
	for i := range n {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			nc, err := net.Dial("tcp", addr)
			if err == nil {
				out[i], err = rpc.Client(context.Background(), nc, &rpc.Config{})
			}
			if err != nil {
				err = fmt.Errorf("dial %d: %w", i, err)
				failed.CompareAndSwap(nil, &err)
			}
		})
	}
	wg.Wait()
	if p := failed.Load(); p != nil {
		tb.Fatal(*p)
	}
	return out
}

func closeConns(cs []*rpc.Conn) {
	var wg sync.WaitGroup
	for _, c := range cs {
		if c != nil {
			wg.Go(func() { c.Close() })
		}
	}
	wg.Wait()
}
