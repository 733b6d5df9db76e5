package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/grpclog"
	"google.golang.org/grpc/stats"

	"github.com/tetherrpc/tether/internal/scale"
)

// grpcSystem is grpc-go as a scale.System: a grpc.Server with its default
// options (server keepalive pings every 2 h), and client connections made
// with grpc.NewClient and default options (no keepalive), each connected
// once and left idle. The server learns of connections through a
// stats.Handler (ConnBegin, ConnEnd), which costs no goroutine. grpc-go's
// logging goes to a logger that counts the lines at Warning and above.
type grpcSystem struct{}

func (grpcSystem) Name() string { return "grpc" }

// grpcWarn counts the lines grpc-go logs at Warning and above. grpc-go's
// logger is global, so it is installed once.
var (
	grpcWarn        atomic.Int64
	grpcLoggerOnce  sync.Once
	errGRPCNotReady = errors.New("grpc: connection not ready")
)

func (grpcSystem) Serve() (scale.Server, error) {
	grpcLoggerOnce.Do(func() { grpclog.SetLoggerV2(countLogger{}) })
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s := &grpcServer{ln: ln, conns: map[int]*grpcConn{}, warn0: grpcWarn.Load(), done: make(chan struct{})}
	s.srv = grpc.NewServer(grpc.StatsHandler(s))
	go func() {
		defer close(s.done)
		s.srv.Serve(ln)
	}()
	return s, nil
}

func (grpcSystem) Dial(ctx context.Context, addr string) (io.Closer, error) {
	cc, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	cc.Connect()
	for { // grpc-go redials by itself after a failure, until ctx ends
		st := cc.GetState()
		if st == connectivity.Ready {
			return cc, nil
		}
		if st == connectivity.Idle {
			cc.Connect()
		}
		if !cc.WaitForStateChange(ctx, st) {
			cc.Close()
			return nil, fmt.Errorf("%w: %v", errGRPCNotReady, st)
		}
	}
}

type grpcServer struct {
	ln    net.Listener
	srv   *grpc.Server
	done  chan struct{}
	warn0 int64

	mu    sync.Mutex
	conns map[int]*grpcConn
}

type grpcConn struct {
	lost   bool
	lostAt time.Time
}

type portKey struct{}

// TagConn remembers the peer's port in the connection's context.
func (s *grpcServer) TagConn(ctx context.Context, info *stats.ConnTagInfo) context.Context {
	port := 0
	if info.RemoteAddr != nil {
		if _, p, err := net.SplitHostPort(info.RemoteAddr.String()); err == nil {
			port, _ = strconv.Atoi(p)
		}
	}
	return context.WithValue(ctx, portKey{}, port)
}

// HandleConn records connections as they begin and end.
func (s *grpcServer) HandleConn(ctx context.Context, cs stats.ConnStats) {
	port, _ := ctx.Value(portKey{}).(int)
	if port == 0 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	switch cs.(type) {
	case *stats.ConnBegin:
		s.conns[port] = &grpcConn{}
	case *stats.ConnEnd:
		if c := s.conns[port]; c != nil && !c.lost {
			c.lost, c.lostAt = true, time.Now()
		}
	}
}

func (s *grpcServer) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context { return ctx }
func (s *grpcServer) HandleRPC(context.Context, stats.RPCStats)                       {}

func (s *grpcServer) Addr() string { return s.ln.Addr().String() }

func (s *grpcServer) Peers() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, c := range s.conns {
		if !c.lost {
			n++
		}
	}
	return n
}

func (s *grpcServer) Ports() []int {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]int, 0, len(s.conns))
	for port, c := range s.conns {
		if !c.lost {
			out = append(out, port)
		}
	}
	return out
}

func (s *grpcServer) Lost(port int) (time.Time, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if c := s.conns[port]; c != nil && c.lost {
		return c.lostAt, true
	}
	return time.Time{}, false
}

func (s *grpcServer) WarnLines() int { return int(grpcWarn.Load() - s.warn0) }
func (s *grpcServer) Incidents() int { return 0 }

func (s *grpcServer) Close() error {
	s.srv.Stop()
	<-s.done
	return nil
}

// countLogger is a grpclog.LoggerV2 that counts Warning, Error and Fatal
// lines and writes nothing.
type countLogger struct{}

func (countLogger) Info(...any)               {}
func (countLogger) Infoln(...any)             {}
func (countLogger) Infof(string, ...any)      {}
func (countLogger) Warning(...any)            { grpcWarn.Add(1) }
func (countLogger) Warningln(...any)          { grpcWarn.Add(1) }
func (countLogger) Warningf(string, ...any)   { grpcWarn.Add(1) }
func (countLogger) Error(...any)              { grpcWarn.Add(1) }
func (countLogger) Errorln(...any)            { grpcWarn.Add(1) }
func (countLogger) Errorf(string, ...any)     { grpcWarn.Add(1) }
func (countLogger) Fatal(args ...any)         { grpcWarn.Add(1); panic(fmt.Sprint(args...)) }
func (countLogger) Fatalln(args ...any)       { grpcWarn.Add(1); panic(fmt.Sprint(args...)) }
func (countLogger) Fatalf(f string, a ...any) { grpcWarn.Add(1); panic(fmt.Sprintf(f, a...)) }
func (countLogger) V(int) bool                { return false }
