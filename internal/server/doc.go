// Package server takes a node's peers in: it accepts connections on any
// net.Listener (TCP, TLS, Unix sockets, the in-memory partition.Network,
// a socket handed over by systemd), handshakes with each, and registers
// the good ones in the node's peer registry. Around that it keeps the
// node's costs bounded against hostile or broken dialers:
//
//   - Handshake slots: at most 512 handshakes in progress. Past that a new
//     connection waits in the listener's queue until a slot frees, or
//     until the oldest handshake has taken so much longer than good ones
//     lately take that it is stalled: that one is cut off. A storm of good
//     peers (thousands dialing a restarted node at once) is admitted in
//     turn; dialers that hold handshakes open to exhaust the slots lose
//     them to the next arrival.
//   - The penalty box: a host whose connection was evicted for a protocol
//     violation is refused at accept, unheard, for a while (doubling with
//     each strike), so a persistent flooder costs one accept per attempt.
//
// Package tether's Node runs one Server; nothing else should.
//
//	s := server.New(server.Config{RPC: cfg, Registry: reg, Logger: zl})
//	reg.Subscribe(s.Penalize)
//	go s.Serve(ln) // returns nil once s.Close is called
//	...
//	s.Close() // closes the listeners, ends the handshakes, waits
package server
