// Package bench holds tether's side-by-side benchmarks: a 64-byte echo over
// loopback TCP through tether, raw yamux, net/rpc, grpc-go and drpc, plus
// benchmarks of tether's own hot paths (a call on a dead reference, write
// coalescing, memory per idle peer). It is a module of its own so that grpc
// and drpc stay out of tether's go.mod. Everything is in the _test.go files;
// see README.md.
package bench
