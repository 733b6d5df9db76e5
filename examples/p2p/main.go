// Command p2p is a minimal peer-to-peer gossip chat on tether, a sketch of
// tether as the transport of a p2p network: each node keeps a registry of
// peers, learns their addresses from each other, evicts silent ones in
// about half a second, and reconnects with backoff when they come back.
//
// Three nodes in a line, each in its own terminal:
//
//	go run ./examples/p2p -listen 127.0.0.1:7101 -peers 127.0.0.1:7102
//	go run ./examples/p2p -listen 127.0.0.1:7102 -peers 127.0.0.1:7103
//	go run ./examples/p2p -listen 127.0.0.1:7103
//
// Lines typed on a node's standard input are gossiped to every node, each
// message with an ID and a hop count: every node shows a message once and
// forwards it once to its other peers. Peer events (connected, evicted with
// the cause, reconnected) go to standard error as they happen. Peers
// exchange the addresses they know on connecting, and a node with fewer
// than -min-peers live peers keeps learnt addresses connected, so the three
// nodes above soon form a triangle; with -min-peers 1 they stay a line
// until the middle one stops, and then the two ends find each other.
//
// Ctrl-C stops a node: it says goodbye, and its peers evict it at once
// (cause "peer left") instead of after missed heartbeats.
package main

import (
	"bufio"
	"context"
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
	var peers string
	var verbose bool
	fs := flag.NewFlagSet("p2p", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&c.listen, "listen", "127.0.0.1:7101", "address to listen on")
	fs.StringVar(&peers, "peers", "", "comma-separated addresses of peers to keep connected")
	fs.StringVar(&c.advertise, "advertise", "", "address other nodes should dial this one at (default: -listen; an empty host, as in :7101, becomes the address peers see)")
	fs.StringVar(&c.name, "name", "", "name shown on this node's messages (default: its address)")
	fs.IntVar(&c.minPeers, "min-peers", 3, "below this many live peers, keep addresses learnt from peers connected too")
	fs.DurationVar(&c.heartbeat, "heartbeat", 250*time.Millisecond, "probe interval: a peer silent this long is probed, and evicted about as long again after")
	fs.BoolVar(&verbose, "v", false, "also show tether's own log lines (zap, on standard error)")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `p2p: gossip chat on tether. Lines on standard input go to every node.

usage: p2p -listen HOST:PORT [-peers HOST:PORT,...] [-name NAME]

`)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		fmt.Fprintln(stderr, "p2p: unexpected arguments:", strings.Join(fs.Args(), " "))
		fs.Usage()
		return c, errors.New("unexpected arguments")
	}
	for _, p := range strings.Split(peers, ",") {
		if p = strings.TrimSpace(p); p != "" {
			c.peers = append(c.peers, p)
		}
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
	g, err := start(cfg)
	if err != nil {
		return err
	}
	defer g.close()
	g.printf(cfg.events, "* node %s (%s) listening on %s; type a line to gossip it\n", g.tn.ID(), g.cfg.name, g.tn.Addr())
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
			g.printf(cfg.events, "* stopping: saying goodbye to every peer (%d)\n", len(g.tn.Peers().List()))
			return nil
		}
	}
}
