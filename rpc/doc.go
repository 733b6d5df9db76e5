// Package rpc is tether's connection-oriented RPC layer: calls in both
// directions and bulk streams over one yamux session per peer, on TCP or
// mutual TLS.
//
// Deadlines and cancellation travel with each call: the caller's deadline
// bounds the handler's context, and when the caller gives up, a "nevermind"
// frame cancels the handler's context on the other side; a call cancelled
// before its request was written is never written. A connection that dies
// fails every outstanding call at once with a *DeadError
// (errors.Is(err, ErrDeadReference)) naming the cause.
//
// The package knows nothing of peer registries or heartbeats: it reports a
// connection's death through Done and Err, offers Probe for liveness, and
// LastReceived as evidence of life. Package peer builds eviction and
// reconnection on top; package liveness decides when a silent peer is dead.
//
// The wire format is in spec.md beside this file.
//
// A server and a client, over any net.Conn:
//
//	mux := rpc.NewMux()
//	mux.Handle("echo", rpc.Func(func(ctx context.Context, req []byte) ([]byte, error) {
//		return req, nil
//	}))
//	go func() {
//		nc, _ := ln.Accept()
//		rpc.Server(ctx, nc, &rpc.Config{Mux: mux})
//	}()
//	nc, _ := net.Dial("tcp", ln.Addr().String())
//	c, err := rpc.Client(ctx, nc, nil)
//	var reply []byte
//	err = c.Call(ctx, "echo", []byte("hi"), &reply)
package rpc
