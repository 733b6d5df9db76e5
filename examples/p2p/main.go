// Command p2p is a minimal peer-to-peer gossip chat on tether, a sketch of
// tether as the transport of a p2p network: the nodes form a cluster
// (package cluster: memberlist's gossip) and find each other through it,
// each keeps the other members connected, its registry evicts a silent
// peer within a second or two, and reconnects it with backoff when it
// answers again.
//
// Three nodes, each in its own terminal:
//
//	go run ./examples/p2p -name A -listen 127.0.0.1:7101 -gossip 127.0.0.1:7201
//	go run ./examples/p2p -name B -listen 127.0.0.1:7102 -gossip 127.0.0.1:7202 -seeds 127.0.0.1:7201
//	go run ./examples/p2p -name C -listen 127.0.0.1:7103 -gossip 127.0.0.1:7203 -seeds 127.0.0.1:7201
//
// The first starts a cluster, the others join it through the first (one
// seed that answers is enough) and learn of each other: each node prints
// "* peer ID (address) connected" for the other two, C's among them on B
// although B was never told its address. With -secret (32 hex digits or
// more, the same on every node) the gossip is encrypted and only holders
// of the key join.
//
// Lines typed on a node's standard input are gossiped to every node, each
// message with an ID and a hop count ("A (1 hop, via peer ...): hello"):
// every node shows a message once and forwards it once to its other peers,
// so that it also crosses a cluster too large for every node to keep every
// other connected. Peer events (connected, evicted with the cause, left,
// reconnected) go to standard error as they happen.
//
// Ctrl-C stops a node: it leaves the cluster and says goodbye, and the
// others print "* peer ... left" at once, instead of evicting it after
// missed heartbeats; run it again and it joins anew. Ctrl-Z freezes a
// node instead: its kernel still acknowledges, so the others take it for
// hung, not gone, and evict it ("missed heartbeats for 5s, though its
// kernel acknowledges") 5 s after a line typed on one of them goes
// unanswered. After fg they print "reconnected": the frozen node redials
// them with backoff, as they redial it while the gossip counts it a
// member. A node cut off by the network is evicted within a second or
// two ("no TCP acknowledgement either (silent partition)"); the tests
// show it with iptables.
package main

import (
	"bufio"
	"context"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

func main() {
	cfg, err := parseFlags(os.Args[1:], os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		os.Exit(2)
	}
	cfg.out, cfg.events = os.Stdout, os.Stderr
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg, os.Stdin); err != nil {
		fmt.Fprintln(os.Stderr, "p2p:", err)
		os.Exit(1)
	}
}

func parseFlags(args []string, stderr io.Writer) (config, error) {
	var c config
	var seeds, secret string
	var verbose bool
	fs := flag.NewFlagSet("p2p", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&c.listen, "listen", "127.0.0.1:7101", "address to listen on")
	fs.StringVar(&c.gossip, "gossip", "127.0.0.1:7201", "address to gossip on with the other members (UDP and TCP)")
	fs.StringVar(&seeds, "seeds", "", "comma-separated gossip addresses of members to join through (none: start a cluster)")
	fs.StringVar(&secret, "secret", "", "the cluster's key, 32, 48 or 64 hex digits, to encrypt the gossip (none: in the clear)")
	fs.StringVar(&c.advertise, "advertise", "", "address the other members should dial this one at (default: -listen, with an unspecified host, as in :7101, replaced by this host's address)")
	fs.StringVar(&c.name, "name", "", "name shown on this node's messages (default: its address)")
	fs.DurationVar(&c.heartbeat, "heartbeat", 250*time.Millisecond, "probe interval: a peer silent this long is probed, and evicted about as long again after")
	fs.BoolVar(&verbose, "v", false, "also show tether's own log lines, and the cluster's (zap, on standard error)")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `p2p: gossip chat on tether. Lines on standard input go to every node.

usage: p2p -listen HOST:PORT -gossip HOST:PORT [-seeds HOST:PORT,...] [-secret HEX] [-name NAME]

`)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	for _, p := range strings.Split(seeds, ",") {
		if p = strings.TrimSpace(p); p != "" {
			c.seeds = append(c.seeds, p)
		}
	}
	var bad string
	if secret != "" {
		var err error
		c.secret, err = hex.DecodeString(secret)
		if n := len(c.secret); err != nil || n != 16 && n != 24 && n != 32 {
			bad = "-secret: 32, 48 or 64 hex digits"
		}
	}
	if fs.NArg() > 0 {
		bad = "unexpected arguments: " + strings.Join(fs.Args(), " ")
	}
	if bad != "" {
		fmt.Fprintln(stderr, "p2p:", bad)
		fs.Usage()
		return c, errors.New(bad)
	}
	if verbose {
		ec := zap.NewDevelopmentEncoderConfig()
		ec.EncodeTime = zapcore.TimeEncoderOfLayout("15:04:05.000")
		c.logger = zap.New(zapcore.NewCore(zapcore.NewConsoleEncoder(ec), zapcore.Lock(os.Stderr), zapcore.DebugLevel))
	}
	return c, nil
}

// run runs a node until ctx ends, gossiping each line read from in.
func run(ctx context.Context, cfg config, in io.Reader) error {
	g, err := start(ctx, cfg)
	if err != nil {
		return err
	}
	defer g.close()
	cl := g.cl.Load()
	g.printf(cfg.events, "* node %s (%s) listening on %s, gossiping on %s with %d other members; type a line to gossip it\n",
		g.tn.ID(), g.cfg.name, g.tn.Addr(), cl.GossipAddr(), len(cl.Members()))
	lines := make(chan string)
	go func() { // ends with the input; at exit, the process takes it
		sc := bufio.NewScanner(in)
		for sc.Scan() {
			select {
			case lines <- sc.Text():
			case <-ctx.Done():
				return
			}
		}
	}()
	for {
		select {
		case l := <-lines:
			if l = strings.TrimSpace(l); l != "" {
				g.say(l)
			}
		case <-ctx.Done():
			g.printf(cfg.events, "* stopping: leaving the cluster, saying goodbye to every peer (%d)\n", len(g.tn.Peers().List()))
			return nil
		}
	}
}
