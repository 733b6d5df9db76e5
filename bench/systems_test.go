package bench

import (
	"context"
	"fmt"
	"io"
	"net"
	netrpc "net/rpc"
	"sync"
	"testing"

	"github.com/hashicorp/yamux"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/mem"
	"storj.io/drpc"
	"storj.io/drpc/drpcconn"
	"storj.io/drpc/drpcmux"
	"storj.io/drpc/drpcserver"

	"github.com/tetherrpc/tether/rpc"
)

// ---- tether ---------------------------------------------------------------

// echoMux serves "echo": a rpc.Func handler that returns the request.
func echoMux() *rpc.Mux {
	m := rpc.NewMux()
	m.Handle("echo", rpc.Func(func(_ context.Context, req []byte) ([]byte, error) { return req, nil }))
	return m
}

// tetherPair runs the rpc handshake over the two ends of a connection: the
// client end gets a Conn with no handlers, the server end serves echoMux.
func tetherPair(tb testing.TB, cc, sc net.Conn) (client, server *rpc.Conn) {
	tb.Helper()
	ctx := context.Background()
	type res struct {
		c   *rpc.Conn
		err error
	}
	ch := make(chan res, 1)
	go func() {
		c, err := rpc.Server(ctx, sc, &rpc.Config{Mux: echoMux()})
		ch <- res{c, err}
	}()
	client, err := rpc.Client(ctx, cc, &rpc.Config{})
	r := <-ch
	if err != nil || r.err != nil {
		tb.Fatalf("tether handshake: client %v, server %v", err, r.err)
	}
	return client, r.c
}

func closeTether(client, server *rpc.Conn) {
	var wg sync.WaitGroup
	wg.Go(func() { client.Close() })
	wg.Go(func() { server.Close() })
	wg.Wait()
}

func tetherCaller(c *rpc.Conn) caller {
	return func(ctx context.Context, req, _ []byte) ([]byte, error) {
		var resp []byte
		err := c.Call(ctx, "echo", req, &resp)
		return resp, err
	}
}

// startTether: tether at the rpc level (rpc.Client and rpc.Server over one
// TCP connection), which is what a peer.Peer's Call runs on, without the
// registry around it.
func startTether(tb testing.TB) (caller, func()) {
	cc, sc := tcpPair(tb)
	client, server := tetherPair(tb, cc, sc)
	return tetherCaller(client), func() { closeTether(client, server) }
}

// ---- raw yamux, one stream per call -----------------------------------------

// startYamux: hashicorp/yamux v0.1.2 (tether's own transport) with its
// DefaultConfig, logging discarded. The client opens a stream per call,
// writes 64 bytes, reads 64 bytes and closes; the server accepts streams in
// a loop and echoes each in a goroutine. No framing, no method name, no
// call IDs: the floor any RPC layer on yamux adds to.
func startYamux(tb testing.TB) (caller, func()) {
	cc, sc := tcpPair(tb)
	cfg := yamux.DefaultConfig()
	cfg.LogOutput = io.Discard
	srv, err := yamux.Server(sc, cfg)
	if err != nil {
		tb.Fatal(err)
	}
	cli, err := yamux.Client(cc, cfg)
	if err != nil {
		tb.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			s, err := srv.AcceptStream()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer s.Close()
				buf := make([]byte, payloadSize)
				if _, err := io.ReadFull(s, buf); err != nil {
					return
				}
				s.Write(buf)
			})
		}
	})
	call := func(_ context.Context, req, scratch []byte) ([]byte, error) {
		s, err := cli.OpenStream()
		if err != nil {
			return nil, err
		}
		defer s.Close()
		if _, err := s.Write(req); err != nil {
			return nil, err
		}
		if _, err := io.ReadFull(s, scratch); err != nil {
			return nil, err
		}
		return scratch, nil
	}
	return call, func() {
		cli.Close()
		srv.Close()
		wg.Wait()
	}
}

// startYamuxOneStream: raw yamux again, but with one long-lived stream
// that carries every call: write 64 bytes, read 64 bytes. This is the
// shape tether itself uses (its calls share one control stream), so it is
// the floor of tether's transport: what tether costs above it is its RPC
// layer. One stream carries one call at a time, so it runs only in the
// sequential shape. (Not one of the floors; shown for context.)
func startYamuxOneStream(tb testing.TB) (caller, func()) {
	cc, sc := tcpPair(tb)
	cfg := yamux.DefaultConfig()
	cfg.LogOutput = io.Discard
	srv, err := yamux.Server(sc, cfg)
	if err != nil {
		tb.Fatal(err)
	}
	cli, err := yamux.Client(cc, cfg)
	if err != nil {
		tb.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		s, err := srv.AcceptStream()
		if err != nil {
			return
		}
		defer s.Close()
		buf := make([]byte, payloadSize)
		for {
			if _, err := io.ReadFull(s, buf); err != nil {
				return
			}
			if _, err := s.Write(buf); err != nil {
				return
			}
		}
	})
	s, err := cli.OpenStream()
	if err != nil {
		tb.Fatal(err)
	}
	var mu sync.Mutex // one call at a time on the stream
	call := func(_ context.Context, req, scratch []byte) ([]byte, error) {
		mu.Lock()
		defer mu.Unlock()
		if _, err := s.Write(req); err != nil {
			return nil, err
		}
		if _, err := io.ReadFull(s, scratch); err != nil {
			return nil, err
		}
		return scratch, nil
	}
	return call, func() {
		s.Close()
		cli.Close()
		srv.Close()
		wg.Wait()
	}
}

// ---- net/rpc (gob) ----------------------------------------------------------

// Echo is the net/rpc service.
type Echo struct{}

// Echo returns its argument.
func (Echo) Echo(req []byte, reply *[]byte) error {
	*reply = req
	return nil
}

// startNetRPC: the standard library's net/rpc with its default gob codec,
// one client connection.
func startNetRPC(tb testing.TB) (caller, func()) {
	cc, sc := tcpPair(tb)
	srv := netrpc.NewServer()
	if err := srv.Register(Echo{}); err != nil {
		tb.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		srv.ServeConn(sc)
		close(done)
	}()
	cli := netrpc.NewClient(cc)
	call := func(_ context.Context, req, _ []byte) ([]byte, error) {
		var resp []byte
		err := cli.Call("Echo.Echo", req, &resp)
		return resp, err
	}
	return call, func() {
		cli.Close()
		<-done
	}
}

// ---- grpc-go ------------------------------------------------------------------

// rawCodec passes []byte through gRPC untouched. Together with the
// hand-written ServiceDesc below it avoids protoc and protobuf entirely: the
// payload on the wire is the 64 bytes and nothing else. This is as cheap as
// gRPC can be made, so if anything it flatters gRPC against real protobuf
// use. It is the CodecV2 form, which hands gRPC the caller's slice without a
// copy; Unmarshal must copy, since gRPC frees its buffers once it returns.
type rawCodec struct{}

func (rawCodec) Name() string { return "raw" }

func (rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	switch m := v.(type) {
	case []byte:
		return mem.BufferSlice{mem.SliceBuffer(m)}, nil
	case *[]byte:
		return mem.BufferSlice{mem.SliceBuffer(*m)}, nil
	}
	return nil, fmt.Errorf("rawCodec: cannot marshal %T", v)
}

func (rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	p, ok := v.(*[]byte)
	if !ok {
		return fmt.Errorf("rawCodec: cannot unmarshal into %T", v)
	}
	*p = data.Materialize()
	return nil
}

// echoServiceDesc is what protoc-gen-go-grpc would generate for
//
//	service Echo { rpc Echo(bytes) returns (bytes); }
//
// written by hand.
var echoServiceDesc = grpc.ServiceDesc{
	ServiceName: "bench.Echo",
	HandlerType: (*any)(nil),
	Methods: []grpc.MethodDesc{{
		MethodName: "Echo",
		Handler: func(_ any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
			var req []byte
			if err := dec(&req); err != nil {
				return nil, err
			}
			return req, nil
		},
	}},
	Metadata: "bench.proto",
}

// startGRPC: grpc-go v1.85.0, a unary call over one ClientConn (one HTTP/2
// connection), insecure credentials, default options otherwise.
func startGRPC(tb testing.TB) (caller, func()) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	srv := grpc.NewServer(grpc.ForceServerCodecV2(rawCodec{}))
	srv.RegisterService(&echoServiceDesc, struct{}{})
	done := make(chan struct{})
	go func() {
		srv.Serve(ln)
		close(done)
	}()
	cc, err := grpc.NewClient("passthrough:///"+ln.Addr().String(),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.ForceCodecV2(rawCodec{})))
	if err != nil {
		tb.Fatal(err)
	}
	call := func(ctx context.Context, req, _ []byte) ([]byte, error) {
		var resp []byte
		err := cc.Invoke(ctx, "/bench.Echo/Echo", req, &resp)
		return resp, err
	}
	return call, func() {
		cc.Close()
		srv.Stop()
		<-done
	}
}

// ---- drpc -------------------------------------------------------------------

// rawEncoding is drpc's counterpart of rawCodec: []byte untouched, no
// protobuf. Unmarshal copies, since drpc reuses its read buffer.
type rawEncoding struct{}

func (rawEncoding) Marshal(msg drpc.Message) ([]byte, error) {
	switch m := msg.(type) {
	case []byte:
		return m, nil
	case *[]byte:
		return *m, nil
	}
	return nil, fmt.Errorf("rawEncoding: cannot marshal %T", msg)
}

func (rawEncoding) Unmarshal(buf []byte, msg drpc.Message) error {
	p, ok := msg.(*[]byte)
	if !ok {
		return fmt.Errorf("rawEncoding: cannot unmarshal into %T", msg)
	}
	*p = append((*p)[:0], buf...)
	return nil
}

// drpcEchoServer is the drpc service implementation.
type drpcEchoServer struct{}

func (drpcEchoServer) Echo(_ context.Context, req *[]byte) (*[]byte, error) { return req, nil }

// drpcEchoDescription is what protoc-gen-go-drpc would generate for the
// same Echo service, written by hand.
type drpcEchoDescription struct{}

func (drpcEchoDescription) NumMethods() int { return 1 }

func (drpcEchoDescription) Method(n int) (string, drpc.Encoding, drpc.Receiver, any, bool) {
	if n != 0 {
		return "", nil, nil, nil, false
	}
	return "/bench.Echo/Echo", rawEncoding{},
		func(srv any, ctx context.Context, in1, _ any) (drpc.Message, error) {
			return srv.(drpcEchoServer).Echo(ctx, in1.(*[]byte))
		}, drpcEchoServer.Echo, true
}

// startDRPC: storj.io/drpc v1.0.0, drpcmux + drpcserver on one TCP
// connection, drpcconn on the client. A drpcconn.Conn carries one RPC at a
// time by design (concurrent Invokes wait their turn: drpc's answer to
// concurrency is a pool of connections, drpcpool), so its parallel64 figure
// is what one connection does, as for the others.
func startDRPC(tb testing.TB) (caller, func()) {
	cc, sc := tcpPair(tb)
	mux := drpcmux.New()
	if err := mux.Register(drpcEchoServer{}, drpcEchoDescription{}); err != nil {
		tb.Fatal(err)
	}
	srv := drpcserver.New(mux)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		srv.ServeOne(ctx, sc)
		close(done)
	}()
	conn := drpcconn.New(cc)
	call := func(ctx context.Context, req, _ []byte) ([]byte, error) {
		var resp []byte
		err := conn.Invoke(ctx, "/bench.Echo/Echo", rawEncoding{}, req, &resp)
		return resp, err
	}
	return call, func() {
		conn.Close()
		cancel()
		<-done
	}
}
