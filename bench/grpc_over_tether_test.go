package bench

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/tetherrpc/tether"
)

// gRPC over tether (Node.Listener and Node.DialConn) beside gRPC over
// TCP: what the drop-in transport costs a call and an idle connection.

// grpcTuning is a set of grpc-go options given to both ends.
type grpcTuning struct {
	name   string
	client []grpc.DialOption
	server []grpc.ServerOption
}

// grpcTunings: grpc-go reads through a 32 KiB bufio.Reader for every
// connection but a *net.TCPConn (and the like), which it reads with
// buffers taken from a pool only when data is ready; over tether the
// buffer is pinned for the connection's life. ReadBufferSize(0) reads the
// conn directly, each HTTP/2 frame header and payload by itself;
// SharedWriteBuffer returns the 32 KiB write buffer to a pool after each
// flush.
var grpcTunings = []grpcTuning{
	{name: "default"},
	{
		name:   "readbuf0",
		client: []grpc.DialOption{grpc.WithReadBufferSize(0)},
		server: []grpc.ServerOption{grpc.ReadBufferSize(0)},
	},
	{
		name:   "readbuf0+sharedwrite",
		client: []grpc.DialOption{grpc.WithReadBufferSize(0), grpc.WithSharedWriteBuffer(true)},
		server: []grpc.ServerOption{grpc.ReadBufferSize(0), grpc.SharedWriteBuffer(true)},
	},
}

// grpcTransport starts a listener for a gRPC server and returns it with
// the dial options that reach it, and a function that stops the
// transport's own machinery (the tether nodes).
type grpcTransport struct {
	name  string
	start func(tb testing.TB) (ln net.Listener, target string, dial grpc.DialOption, stop func())
}

var grpcTransports = []grpcTransport{
	{"tcp", func(tb testing.TB) (net.Listener, string, grpc.DialOption, func()) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			tb.Fatal(err)
		}
		return ln, ln.Addr().String(), grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", addr)
		}), func() {}
	}},
	{"tether", func(tb testing.TB) (net.Listener, string, grpc.DialOption, func()) {
		a, err := tether.Listen("127.0.0.1:0")
		if err != nil {
			tb.Fatal(err)
		}
		b, err := tether.Listen("127.0.0.1:0")
		if err != nil {
			tb.Fatal(err)
		}
		return b.Listener("grpc"), b.Addr().String(), grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
				return a.DialConn(ctx, addr, "grpc")
			}), func() {
				var wg sync.WaitGroup
				wg.Go(func() { a.Close() })
				wg.Go(func() { b.Close() })
				wg.Wait()
			}
	}},
}

// startGRPCOver starts the echo server on tr and n clients of it.
func startGRPCOver(tb testing.TB, tr grpcTransport, tu grpcTuning, n int) ([]*grpc.ClientConn, func()) {
	ln, target, dial, stopTransport := tr.start(tb)
	srv := grpc.NewServer(append([]grpc.ServerOption{grpc.ForceServerCodecV2(rawCodec{})}, tu.server...)...)
	srv.RegisterService(&echoServiceDesc, struct{}{})
	done := make(chan struct{})
	go func() {
		srv.Serve(ln)
		close(done)
	}()
	opts := append([]grpc.DialOption{dial,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.ForceCodecV2(rawCodec{}))}, tu.client...)
	ccs := make([]*grpc.ClientConn, n)
	for i := range ccs {
		cc, err := grpc.NewClient("passthrough:///"+target, opts...)
		if err != nil {
			tb.Fatal(err)
		}
		ccs[i] = cc
	}
	return ccs, func() {
		for _, cc := range ccs {
			cc.Close()
		}
		srv.Stop()
		<-done
		stopTransport()
	}
}

func grpcCaller(cc *grpc.ClientConn) caller {
	return func(ctx context.Context, req, _ []byte) ([]byte, error) {
		var resp []byte
		err := cc.Invoke(ctx, "/bench.Echo/Echo", req, &resp)
		return resp, err
	}
}

// BenchmarkGRPCOverTether: the echo of BenchmarkEcho by grpc-go over one
// loopback TCP connection and over a tether stream (tether nodes on
// loopback; the server on Node.Listener, the client dialing with
// Node.DialConn), with the tunings of grpcTunings. Names are
// GRPCOverTether/<shape>/tuning=<t>/transport=<tcp|tether>, so that
// `benchstat -col /transport` puts the transports side by side.
func BenchmarkGRPCOverTether(b *testing.B) {
	for _, shape := range []string{"sequential", "parallel64"} {
		b.Run(shape, func(b *testing.B) {
			for _, tu := range grpcTunings {
				for _, tr := range grpcTransports {
					b.Run("tuning="+tu.name+"/transport="+tr.name, func(b *testing.B) {
						ccs, stop := startGRPCOver(b, tr, tu, 1)
						defer stop()
						call := grpcCaller(ccs[0])
						if shape == "sequential" {
							warmUp(b, call, 1, 200)
							runSequential(b, call)
						} else {
							warmUp(b, call, callers, 20)
							runParallel(b, call)
						}
					})
				}
			}
		})
	}
}

// idleGRPCConns is how many gRPC connections BenchmarkGRPCIdleConnMemory
// opens: over tether, each is a stream, which counts against the peer's
// limit of calls and streams (rpc.DefaultMaxConcurrentCalls, 1024).
const idleGRPCConns = 1000

// BenchmarkGRPCIdleConnMemory opens 1000 gRPC client connections to one
// server, makes one call on each, lets them sit idle for a second and
// reports what each costs, both ends counted (as BenchmarkIdlePeerMemory):
// over TCP, 1000 TCP connections; over tether, 1000 streams over the one
// tether connection between two nodes (whose own cost, one peer, is
// spread over them).
func BenchmarkGRPCIdleConnMemory(b *testing.B) {
	for _, tu := range grpcTunings {
		for _, tr := range grpcTransports {
			b.Run("tuning="+tu.name+"/transport="+tr.name, func(b *testing.B) {
				if b.N == 1 {
					idleCache.Store(b.Name(), measureIdleGRPC(b, tr, tu))
				}
				v, ok := idleCache.Load(b.Name())
				if !ok {
					b.Fatal("no measurement")
				}
				r := v.(idleResult)
				b.ReportMetric(0, "ns/op")
				b.ReportMetric(r.heap, "heap-B/conn")
				b.ReportMetric(r.stack, "stack-B/conn")
				b.ReportMetric(r.heap+r.stack, "B/conn")
				b.ReportMetric(r.goroutines, "goroutines/conn")
			})
		}
	}
}

func measureIdleGRPC(b *testing.B, tr grpcTransport, tu grpcTuning) idleResult {
	b.StopTimer()
	before := snapshot()
	ccs, stop := startGRPCOver(b, tr, tu, idleGRPCConns)
	defer stop()
	req := newPayload()
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	for _, cc := range ccs {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if _, err := grpcCaller(cc)(ctx, req, nil); err != nil {
				b.Error(err)
			}
		})
	}
	wg.Wait()
	time.Sleep(time.Second)
	after := snapshot()
	n := float64(idleGRPCConns)
	return idleResult{
		heap:       (float64(after.heap) - float64(before.heap)) / n,
		stack:      (float64(after.stack) - float64(before.stack)) / n,
		goroutines: float64(after.goroutines-before.goroutines) / n,
	}
}
