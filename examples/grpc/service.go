package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/mem"

	"github.com/tetherrpc/tether"
)

// Service is the name tether streams carry gRPC under: the server's
// n.Listener(Service), the client's n.DialConn(ctx, addr, Service).
const Service = "grpc"

// Serve serves srv over tether: the gRPC streams peers open to n. It
// returns when srv stops (srv.Stop closes the listener).
func Serve(n *tether.Node, srv *grpc.Server) error {
	return srv.Serve(n.Listener(Service))
}

// Dial returns a gRPC client of the node at addr ("host:port" or
// "ID@host:port") over n's tether connection to it. These are the lines a
// TCP client changes: the target names the tether node, and the dialer
// is tether's.
func Dial(n *tether.Node, addr string, opts ...grpc.DialOption) (*grpc.ClientConn, error) {
	opts = append([]grpc.DialOption{
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return n.DialConn(ctx, addr, Service)
		}),
		grpc.WithTransportCredentials(insecure.NewCredentials()), // tether's TLS, if any, is below
	}, opts...)
	return grpc.NewClient("passthrough:///"+addr, opts...)
}

// rawCodec passes []byte through gRPC untouched, so that the example
// needs no protoc: the ServiceDesc below is what protoc-gen-go-grpc would
// generate for
//
//	service Echo {
//		rpc Echo(bytes) returns (bytes); // answers with its request
//		rpc Hold(bytes) returns (bytes); // answers when its context ends
//		rpc Count(stream bytes) returns (bytes); // answers how many requests came, in decimal
//		rpc Chat(stream bytes) returns (stream bytes); // answers each request with it
//	}
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
	*p = data.Materialize() // a copy: gRPC frees its buffers after
	return nil
}

var echoDesc = grpc.ServiceDesc{
	ServiceName: "example.Echo",
	HandlerType: (*any)(nil),
	Methods: []grpc.MethodDesc{
		{MethodName: "Echo", Handler: unary("Echo", func(_ context.Context, req []byte) ([]byte, error) { return req, nil })},
		{MethodName: "Hold", Handler: unary("Hold", func(ctx context.Context, _ []byte) ([]byte, error) {
			<-ctx.Done()
			return nil, ctx.Err()
		})},
	},
	Streams:  []grpc.StreamDesc{countDesc, chatDesc},
	Metadata: "example.proto",
}

// The streaming methods: a client's stream of requests (Count), and a
// stream each way (Chat).
var (
	countDesc = grpc.StreamDesc{StreamName: "Count", ClientStreams: true, Handler: func(_ any, s grpc.ServerStream) error {
		n := 0
		for {
			var req []byte
			err := s.RecvMsg(&req)
			if errors.Is(err, io.EOF) { // the client's CloseSend
				return s.SendMsg([]byte(strconv.Itoa(n)))
			}
			if err != nil {
				return err
			}
			n++
		}
	}}
	chatDesc = grpc.StreamDesc{StreamName: "Chat", ClientStreams: true, ServerStreams: true, Handler: func(_ any, s grpc.ServerStream) error {
		for {
			var req []byte
			err := s.RecvMsg(&req)
			if errors.Is(err, io.EOF) {
				return nil
			}
			if err != nil {
				return err
			}
			if err := s.SendMsg(req); err != nil {
				return err
			}
		}
	}}
)

// unary is a method handler as protoc-gen-go-grpc writes them: it decodes
// the request and runs fn through the server's interceptor, if any.
func unary(method string, fn func(context.Context, []byte) ([]byte, error)) grpc.MethodHandler {
	info := &grpc.UnaryServerInfo{FullMethod: "/example.Echo/" + method}
	return func(_ any, ctx context.Context, dec func(any) error, intercept grpc.UnaryServerInterceptor) (any, error) {
		var req []byte
		if err := dec(&req); err != nil {
			return nil, err
		}
		if intercept == nil {
			return fn(ctx, req)
		}
		return intercept(ctx, req, info, func(ctx context.Context, req any) (any, error) {
			return fn(ctx, req.([]byte))
		})
	}
}

// newServer is a gRPC server of the Echo service.
func newServer(opts ...grpc.ServerOption) *grpc.Server {
	srv := grpc.NewServer(append([]grpc.ServerOption{grpc.ForceServerCodecV2(rawCodec{})}, opts...)...)
	srv.RegisterService(&echoDesc, struct{}{})
	return srv
}

// call invokes method ("Echo" or "Hold") with req.
func call(ctx context.Context, cc *grpc.ClientConn, method string, req []byte, opts ...grpc.CallOption) ([]byte, error) {
	var resp []byte
	err := cc.Invoke(ctx, "/example.Echo/"+method, req, &resp, append(opts, grpc.ForceCodecV2(rawCodec{}))...)
	return resp, err
}

// stream opens a stream of method (&countDesc or &chatDesc). It ends with
// ctx, or at the first error its RecvMsg returns.
func stream(ctx context.Context, cc *grpc.ClientConn, method *grpc.StreamDesc, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	return cc.NewStream(ctx, method, "/example.Echo/"+method.StreamName, append(opts, grpc.ForceCodecV2(rawCodec{}))...)
}
