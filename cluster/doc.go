// Package cluster forms a cluster of tether nodes without a list of peers:
// a node joins through one or a few seed members, learns the others by
// gossip (hashicorp/memberlist: SWIM with Lifeguard's refinements), and
// keeps its registry in step with them. Members that join are kept
// connected; members that leave, or that the gossip declares dead, are
// let go and no longer redialed. Subscribers of the node's registry
// (peer.Registry.Subscribe) hear of the connections as they would of kept
// addresses.
//
//	gate := new(cluster.Gate)
//	n, err := tether.Listen(":7000", tether.WithTLS(tc), tether.WithAdmission(gate.Admit))
//	...
//	c, err := cluster.Join(ctx, n, cluster.Config{
//		Seeds:    []string{"10.0.0.1:7946", "10.0.0.2:7946"},
//		BindAddr: ":7946",
//		Secret:   key, // 32 bytes, the same on every member
//		Gate:     gate,
//	})
//	...
//	defer c.Leave(ctx)
//
// Each member tells the others its tether address and ID in the gossip's
// metadata (the ID is the gossip's name for the member), and dials
// "ID@address", so that with TLS a member is known by its key, not by its
// address.
//
// # Who is admitted
//
// The Gate, given to tether.WithAdmission, admits exactly the members: a
// handshake from anyone else, whatever its certificate, is refused (its
// error matches rpc.ErrNotAdmitted). Membership itself is the Secret: the
// gossip is encrypted and authenticated with it (AES-GCM, memberlist's
// keyring), so only holders of the key are heard, and TLS then makes sure
// that a member's connections come from the key its ID names. A handshake
// from an ID the gossip does not know yet is held for up to a second
// before it is refused: a member that just joined learns every other at
// once and may dial one that has not heard of it yet.
//
// Why the keyring, not the gossip over tether's TLS connections: SWIM's
// failure detection is worth having beside tether's because it is
// independent of it. Its probes are UDP datagrams on their own path, and
// when a direct probe fails it asks other members to probe (indirect
// probes), which tells a dead member from a bad link. Carried over
// tether's connections, its probes would queue behind the same bytes and
// die with the same connection that tether's own liveness watches: one
// detector twice. The cost is a shared key rather than per-member
// identities for the gossip; the connections that carry calls are still
// authenticated by TLS per member.
//
// # The two failure detectors
//
// Tether's liveness judges each connection within about a second (a peer
// that stops answering is evicted, its calls failed at once); the gossip
// judges membership, in seconds (a member suspected by one, probed through
// others, declared dead when none reach it and it does not refute the
// suspicion). What flows between them, and why:
//
//   - From the gossip to tether: a member that joins (or refutes its
//     death and comes back) is kept; a member declared dead or gone is no
//     longer kept, so the node stops redialing it. That is the only
//     verdict it passes on: a confirmed one. Between tether's eviction and
//     the gossip's verdict the node redials with backoff (from 500 ms,
//     jittered, doubling to 10 s), which costs a refused TCP connect now
//     and then and lets a member whose link came back be reconnected
//     within the backoff's bound. A live
//     connection to a member declared dead is not cut: tether's liveness
//     says whether it works.
//   - From tether to the gossip: nothing. An eviction is one link's
//     verdict; suspicion raised from it would turn every flapping link
//     into cluster-wide churn, which is what SWIM's indirect probes exist
//     to avoid (memberlist has no API to raise suspicion anyway, and its
//     awareness score is about the local node's own health). A member
//     that is really gone fails the gossip's own probes soon after.
//   - A member suspect in the gossip stays connected: suspicion is an
//     opinion about the gossip's path, not about the connection.
//
// So a link that flaps costs reconnections on that link and nothing else:
// the membership does not change, and no other link notices.
//
// # How many connections
//
// Up to Config.MaxKept other members (default 64), every member is
// connected to every other. Beyond, each pair of members is connected if
// a hash of the pair's two IDs (the same on both sides: rendezvous hashing
// of pairs) falls below MaxKept/members, so that each member has MaxKept
// connections on average (MaxKept ± √MaxKept), chosen at random but the
// same for as long as the pair lives: a member joining or leaving changes
// few pairs (those near the bound). Such a random graph of degree 64 is
// connected with overwhelming probability; a 1,000-member cluster costs
// each node about 64 connections, not 999. Both members of a connected
// pair keep it (each redials after a loss, and counts the other among its
// kept addresses, which readiness reads); when both dial at once, the
// registry keeps the connection the smaller ID dialed and retires the
// other with a goodbye. When the cluster grows past the bound, the
// connections of pairs no longer chosen are closed with a goodbye
// (ErrUnpaired); their members still admit each other's calls. A negative
// MaxKept connects every pair, however many.
//
// # Logs
//
// memberlist's log lines go to the node's logger, named
// "cluster.memberlist": its debug lines at Debug, the rest at Info (its
// warnings and errors are the protocol at work, which resolves them
// itself). The package logs each member declared dead or gone at Info;
// the Warn of a lost peer is the registry's eviction line, once.
package cluster
