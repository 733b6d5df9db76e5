// Package partition makes network partitions on demand, for tests: peers
// that vanish silently, with no RST and no error, the way a pulled cable,
// a crashed router or a suspended VM vanishes.
//
// It offers three tools, from cheapest to most faithful.
//
// An in-memory Network of named hosts whose links can be cut, cut one way,
// delayed and healed. Its connections are full net.Conns. A cut is silent,
// as TCP's would be: writes succeed until the buffer fills and then block,
// reads wait, nobody gets an error, and after Heal the held bytes arrive in
// order.
//
//	n := partition.NewNetwork()
//	defer n.Close()
//	ln, _ := n.Host("server").Listen(":7000")
//	c, _ := n.Host("client").Dial(ctx, "server:7000")
//	n.Cut("client", "server") // c's writes still succeed; its reads wait
//	n.Heal("client", "server") // the held bytes arrive
//
// A real TCP Proxy on loopback that can Blackhole, Delay and Reset the
// connections through it. A user-space proxy cannot make a true silent
// partition: the proxy's own kernel still completes handshakes and
// acknowledges every segment, so through a blackholed proxy the far side
// looks hung (kernel alive, process silent), not partitioned. Tests of hang
// detection want exactly that; tests of partition detection want the next
// tool.
//
//	p, _ := partition.NewProxy(server.Addr().String())
//	defer p.Close()
//	conn, _ := net.Dial("tcp", p.Addr())
//	p.Blackhole() // nothing forwarded; connections stay open
//	p.Reset()     // every connection aborted with a RST
//
// The Proxy also carries its connections over a long path: SetLink gives
// each direction a Link with a one-way Delay, Jitter, a Rate and a bounded
// Queue, for tests of what depends on the round trip (window tuning,
// probes, timeouts) on machines without netem. The proxy's kernel
// acknowledges TCP at once, so TCP's own round trip stays loopback's, while
// the application's round trips (requests, yamux window updates, probes)
// take the full delay: a stream with receive window W moves at most W per
// round trip, as on a real long path. A Node uses the link by dialing
// p.Addr() instead of the other Node's address.
//
//	wan := partition.Link{Delay: 25 * time.Millisecond, Jitter: 2 * time.Millisecond, Rate: 100 << 20}
//	p.SetLink(wan, wan) // 50 ms round trip, 100 MiB/s each way
//	conn, _ := net.Dial("tcp", p.Addr())
//
// Kernel-level partitions, on Linux as root: DropPort has iptables drop a
// port's packets, which is a true silent partition (no ACKs, no RST, no
// ICMP); Loss drops a share of them and LimitRate shapes a device with tc.
// They run only inside a private network namespace, never on the host's own
// network: a test gets one by calling Isolated, which re-executes just that
// test under "unshare -n", and a program by calling Reexec. Where this is
// unavailable, KernelSupport says why and Isolated skips the test.
//
//	func TestPeerVanishes(t *testing.T) {
//		if !partition.Isolated(t) {
//			return
//		}
//		// ... a server on 127.0.0.1:port, a client connected to it ...
//		heal, err := partition.DropPort(port)
//		if err != nil {
//			t.Fatal(err)
//		}
//		// The client's writes succeed, its reads time out.
//		if err := heal(); err != nil {
//			t.Fatal(err)
//		}
//	}
//
// For many hosts, a LAN: N network namespaces, each a host with its own
// IPv4 address, on a Linux bridge in a namespace of its own, all held by
// this process and gone with it. Its hosts run programs (Command) or, in
// this process, listen and dial (Listen, Dial), so nodes in one test run on
// distinct hosts. Silence, Cut, CutOneWay, Split and Loss have iptables
// drop packets as they reach a host; Delay needs netem.
//
//	lan := partition.LANForTest(t, 20) // skips where impossible
//	ln, _ := lan.Host(1).Listen("tcp", ":7000")
//	heal, _ := lan.Silence(1) // host 1's packets vanish, both ways
//	c, err := lan.Host(0).Dial(ctx, "tcp", lan.Host(1).Addr().String()+":7000") // times out
//	heal()
package partition
