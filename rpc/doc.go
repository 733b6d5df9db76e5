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
// Why calls share one control stream rather than a yamux stream each:
// measured side by side (BENCHMARKS.md), a stream per call costs yamux a
// SYN, an ACK and two FINs more per call: 59.5 µs at p50 and 45
// allocations for a 64-byte echo on loopback, against 19.5 µs and 10 on
// the shared stream, and 29k against 128k calls/s with 64 callers.
// Cancelling is no harder: a cancel frame names the call. Bulk data, which
// would hold up the calls behind it, takes a stream of its own (OpenStream)
// with yamux's per-stream flow control.
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
