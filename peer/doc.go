// Package peer keeps references to peers: one live reference per peer ID in
// a Registry, evicted the instant its peer is found dead (missed heartbeats,
// a dead-reference error, a protocol violation, an explicit Evict), with
// subscribers told once and kept addresses reconnected with backoff.
//
// A *Peer is one connection's lifetime, like a context. Once evicted it
// stays dead: calls on it fail at once with rpc.ErrDeadReference and do no
// I/O, every call that was outstanding has already failed, and the handlers
// serving it on this side have had their contexts cancelled. One line is
// logged for the eviction (at Warn, with how many calls it cancelled), never
// one per call; when many peers go at once, the first three are logged one
// by one and the rest folded into a summary (how many, the causes, a sample
// of IDs, the span), which marks one incident for a mass failure.
//
// Liveness: one liveness.Monitor per Registry watches every peer with a
// single goroutine; a quiet peer with calls outstanding is probed, its
// timeout adapts to its measured round trips, and on Linux the kernel's
// TCP_INFO tells a silent partition (evict in about half a second) from a
// lossy link or a hung process (wait longer). An idle peer is kept alive by
// the kernel's TCP keepalive, read from TCP_INFO, at almost no cost.
//
// Quorum reads: FirstK returns once k calls succeed, starting alternates
// beside overdue peers at a hedge delay learnt from how fast peers answer.
// Registry.Sample picks the candidates in O(n), whatever the registry's size.
//
// Quorum reads: FirstK returns once k calls succeed, starting alternates
// beside overdue peers at a hedge delay learnt from how fast peers answer.
//
//	reg, _ := peer.New(peer.Config{Dial: dial})
//	stop := reg.Keep("10.0.0.7:7000") // keep it connected, whatever happens
//	defer stop()
//	reg.Subscribe(func(ev peer.Event) { log.Println(ev.Kind, ev.ID, ev.Cause) })
//	shares, err := peer.FirstK(ctx, reg.Sample(5), 3,
//		func(ctx context.Context, p *peer.Peer) ([]byte, error) {
//			var share []byte
//			err := p.Call(ctx, "storage.get", key, &share)
//			return share, err
//		})
package peer
