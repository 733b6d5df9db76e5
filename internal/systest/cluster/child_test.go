package cluster

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/cluster"
	"github.com/tetherrpc/tether/peer"
	"github.com/tetherrpc/tether/rpc"
)

// childRole starts the role of a node process: "cluster-node ADDR SEEDS",
// with SEEDS the gossip addresses to join through, comma-separated (none
// for the first).
const childRole = "cluster-node "

// Ports of every host's node.
const (
	tetherPort = 7000
	gossipPort = 7946
)

// secret is the test cluster's key.
var secret = []byte("twenty hosts on a bridge: 32 B..")

// runChild runs one node on this host and reports, one line each, on its
// standard output:
//
//	ready ID
//	C ID UNIXNANO   a reference to ID connected
//	E ID UNIXNANO CLASS  a reference to ID ended (peer.CauseClass, or
//	                "retired": one of two a pair dialed at once)
//	J ID UNIXNANO   ID became a member
//	D ID UNIXNANO   ID is no longer a member (declared dead, or left)
//	S WARN INFO     on "stats" from stdin: the log lines at Warn and
//	                above, and at Info, so far
//
// It calls "echo" on each of its peers every 100 ms, as a cluster at work
// does (tether evicts a silent peer with calls outstanding within a
// second; an idle one within its idle floor of about 2 s). It ends when
// its standard input closes.
func runChild(args string) int {
	fields := strings.Fields(args)
	host := fields[0]
	var seeds []string
	if len(fields) > 1 {
		seeds = strings.Split(fields[1], ",")
	}
	fail := func(err error) int { fmt.Fprintln(os.Stderr, "cluster node", host, err); return 1 }

	var out sync.Mutex
	say := func(format string, a ...any) {
		out.Lock()
		fmt.Printf(format+"\n", a...)
		out.Unlock()
	}
	var warns, infos atomic.Int64
	core := &countCore{LevelEnabler: zapcore.InfoLevel, warns: &warns, infos: &infos}
	if os.Getenv("CLUSTER_NODE_LOG") != "" {
		enc := zapcore.NewConsoleEncoder(zap.NewDevelopmentEncoderConfig())
		core.next = zapcore.NewCore(enc, zapcore.Lock(os.Stderr), zapcore.InfoLevel)
	}
	cert, err := rpc.NewCertificate()
	if err != nil {
		return fail(err)
	}
	gate := new(cluster.Gate)
	n, err := tether.Listen(net.JoinHostPort(host, strconv.Itoa(tetherPort)),
		tether.WithTLS(rpc.TLSConfig(cert)), tether.WithAdmission(gate.Admit), tether.WithLogger(zap.New(core)))
	if err != nil {
		return fail(err)
	}
	defer n.Close()
	n.Handle("echo", rpc.Func(func(_ context.Context, req []byte) ([]byte, error) { return req, nil }))
	n.Peers().Subscribe(func(ev peer.Event) {
		switch ev.Kind {
		case peer.Connected:
			say("C %s %d", ev.ID, ev.Time.UnixNano())
		case peer.Disconnected:
			class := peer.CauseClass(ev.Cause)
			if errors.Is(ev.Cause, peer.ErrReplaced) || strings.Contains(ev.Cause.Error(), peer.ErrReplaced.Error()) {
				class = "retired" // one of two connections a pair dialed at once
			}
			say("E %s %d %s", ev.ID, ev.Time.UnixNano(), class)
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := cluster.Join(ctx, n, cluster.Config{
		Seeds:      seeds,
		BindAddr:   net.JoinHostPort(host, strconv.Itoa(gossipPort)),
		Secret:     secret,
		Gate:       gate,
		Memberlist: memberlist.DefaultLANConfig(),
	})
	if err != nil {
		return fail(err)
	}
	defer c.Close()
	say("ready %s", n.ID())

	stop := make(chan struct{})
	done := make(chan struct{})
	go func() { // the members, as they change
		defer close(done)
		known := map[peer.ID]bool{}
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			now := time.Now().UnixNano()
			seen := map[peer.ID]bool{}
			for _, m := range c.Members() {
				seen[m.ID] = true
				if !known[m.ID] {
					say("J %s %d", m.ID, now)
				}
			}
			for id := range known {
				if !seen[id] {
					say("D %s %d", id, now)
				}
			}
			known = seen
		}
	}()
	traffic := make(chan struct{})
	go func() { // a call to each peer every 100 ms, as a cluster at work makes
		defer close(traffic)
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		var calls sync.WaitGroup
		defer calls.Wait()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			for _, p := range n.Peers().List() {
				calls.Go(func() {
					ctx, cancel := context.WithTimeout(context.Background(), time.Second)
					defer cancel()
					p.Call(ctx, "echo", []byte("ping"), nil)
				})
			}
		}
	}()
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		if in.Text() == "stats" {
			say("S %d %d", warns.Load(), infos.Load())
		}
	}
	close(stop)
	<-done
	<-traffic
	return 0
}

// countCore counts the node's log entries by level, and passes them on to
// next, if any.
type countCore struct {
	zapcore.LevelEnabler
	warns, infos *atomic.Int64
	next         zapcore.Core
}

func (c *countCore) With([]zapcore.Field) zapcore.Core { return c }
func (c *countCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.Enabled(e.Level) {
		return ce.AddCore(e, c)
	}
	return ce
}
func (c *countCore) Write(e zapcore.Entry, f []zapcore.Field) error {
	if e.Level >= zapcore.WarnLevel {
		c.warns.Add(1)
	} else {
		c.infos.Add(1)
	}
	if c.next != nil {
		return c.next.Write(e, f)
	}
	return nil
}
func (c *countCore) Sync() error { return nil }
