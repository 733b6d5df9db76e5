// Package tetheropts holds what tether's packages pass one another and
// nobody else may: options kept in unexported fields of types that the
// public configurations carry (rpc.Config.Internal, peer.Config.Internal,
// tether.Actions.Internal), and the functions a package registers in its
// init for its siblings to call (a paused rpc.Conn's resume, a
// peer.Registry's registration of a connection that dialed in). Being
// internal, none of it is part of the public API, and none of it needs
// to stay compatible.
package tetheropts

import "time"

// RPC is rpc.Config's internal options.
type RPC struct {
	paused bool
}

// SetPaused makes rpc.Client and rpc.Server return a connection that reads
// nothing, so serves nothing, until ResumeConn: its owner registers it
// first (package peer does), and no handler runs before.
func SetPaused(o *RPC, paused bool) { o.paused = paused }

// Paused reports whether connections are made paused.
func Paused(o *RPC) bool { return o.paused }

// Peer is peer.Config's internal options.
type Peer struct {
	observeCall func(method string, took time.Duration, err error)
}

// SetObserveCall has f told of every Peer.Call when it returns (the
// node's latency metrics). It runs on the caller's goroutine.
func SetObserveCall(o *Peer, f func(method string, took time.Duration, err error)) {
	o.observeCall = f
}

// ObserveCall returns the function set by SetObserveCall, or nil.
func ObserveCall(o *Peer) func(method string, took time.Duration, err error) {
	return o.observeCall
}

// Actions is tether.Actions' internal options.
type Actions struct {
	exit func(code int)
}

// SetExit replaces os.Exit in a node's restart (tests count the exits).
func SetExit(o *Actions, exit func(code int)) { o.exit = exit }

// Exit returns the function set by SetExit, or nil.
func Exit(o *Actions) func(code int) { return o.exit }
