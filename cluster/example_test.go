package cluster_test

import (
	"context"
	"fmt"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/cluster"
	"github.com/tetherrpc/tether/rpc"
)

// Two nodes form a cluster: the second joins through the first's gossip
// address, and each then holds a connection to the other, admitted by its
// Gate because it is a member.
func ExampleJoin() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	key := []byte("a 16-byte secret")
	start := func(seeds ...string) (*tether.Node, *cluster.Cluster) {
		cert, _ := rpc.NewCertificate()
		gate := new(cluster.Gate)
		n, err := tether.Listen("127.0.0.1:0", tether.WithTLS(rpc.TLSConfig(cert)), tether.WithAdmission(gate.Admit))
		if err != nil {
			panic(err)
		}
		c, err := cluster.Join(ctx, n, cluster.Config{
			Seeds:      seeds,
			BindAddr:   "127.0.0.1:0",
			Secret:     key,
			Gate:       gate,
			Memberlist: memberlist.DefaultLocalConfig(),
		})
		if err != nil {
			panic(err)
		}
		return n, c
	}
	a, ca := start()
	defer a.Close()
	defer ca.Close()
	b, cb := start(ca.GossipAddr())
	defer b.Close()
	defer cb.Close()

	for {
		p, ok := b.Peers().Get(a.ID())
		if ok && p.Err() == nil && len(ca.Members()) == 1 {
			break
		}
		if ctx.Err() != nil {
			panic("no cluster within 10 s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	fmt.Println("a's members:", len(ca.Members()), "b's members:", len(cb.Members()))
	// Output: a's members: 1 b's members: 1
}
