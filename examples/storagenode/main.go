// Command storagenode is a small Tahoe-like share store on tether. Storage
// nodes hold shares in memory, form a cluster, and serve health
// and Prometheus metrics; a client puts a file on them as n shares of
// which any k rebuild it, and gets it back with a k-of-n read (peer.FirstK)
// that hedges around slow nodes and routes around dead ones.
//
// Three storage nodes, each in its own terminal:
//
//	go run ./examples/storagenode -listen 127.0.0.1:7001 -http 127.0.0.1:8001 -gossip 127.0.0.1:7946
//	go run ./examples/storagenode -listen 127.0.0.1:7002 -http 127.0.0.1:8002 -gossip 127.0.0.1:7947 -seeds 127.0.0.1:7946
//	go run ./examples/storagenode -listen 127.0.0.1:7003 -http 127.0.0.1:8003 -gossip 127.0.0.1:7948 -seeds 127.0.0.1:7946
//
// The first starts a cluster (package cluster: memberlist's gossip), the
// others join it through the first and learn of each other: every node
// keeps every other connected, and lets go of one that leaves or dies.
// With -secret (32 hex digits or more) the gossip is encrypted.
//
// Put a file as 3 shares, any 2 of which rebuild it, then get it back:
//
//	go run ./examples/storagenode -put readme -file README.md -k 2 -n 3 -peers 127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003
//	go run ./examples/storagenode -get readme -k 2 -peers 127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003 > out.md
//
// Stop one node with Ctrl-C (it drains and says goodbye: the others evict
// it at once) and get the file again: the read completes on the other two.
// Each node answers curl 127.0.0.1:8001/healthz, /readyz and /metrics.
// With five nodes, -k 3 -n 5 works the same way. The scheme is replication
// arranged so that any k of the n shares hold the whole file; shares.go
// says exactly how, and what it costs.
//
// Ctrl-C stops a node or a client cleanly.
package main

import (
	"context"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

func main() {
	cfg, err := parseFlags(os.Args[1:], os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "storagenode:", err)
		os.Exit(1)
	}
}

// config is the command line.
type config struct {
	listen, http string
	peers        []string
	gossip       string
	seeds        []string
	secret       []byte
	heartbeat    time.Duration
	maxShare     int64
	verbose      bool

	put, get, file string
	k, n           int
	streamAbove    int64
	timeout        time.Duration
}

func parseFlags(args []string, stderr io.Writer) (config, error) {
	var c config
	var peers, seeds, secret string
	fs := flag.NewFlagSet("storagenode", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&c.listen, "listen", "127.0.0.1:7001", "storage node: address to listen on")
	fs.StringVar(&c.http, "http", "", "storage node: address to serve /healthz, /readyz and /metrics on (none if empty)")
	fs.StringVar(&peers, "peers", "", "client: comma-separated storage node addresses")
	fs.StringVar(&c.gossip, "gossip", "127.0.0.1:7946", "storage node: address to gossip on, with the other storage nodes")
	fs.StringVar(&seeds, "seeds", "", "storage node: comma-separated gossip addresses of nodes to join through (none: start a cluster)")
	fs.StringVar(&secret, "secret", "", "storage node: the cluster's key, 32, 48 or 64 hex digits, to encrypt the gossip (none: in the clear)")
	fs.DurationVar(&c.heartbeat, "heartbeat", 250*time.Millisecond, "probe interval: a peer silent this long is probed, and evicted about as long again after")
	fs.Int64Var(&c.maxShare, "max-share", 256<<20, "storage node: largest share taken, in bytes")
	fs.BoolVar(&c.verbose, "v", false, "log at Debug, not Info")
	fs.StringVar(&c.put, "put", "", "client: store -file under this key, then exit")
	fs.StringVar(&c.get, "get", "", "client: read this key back (to -file, or standard output), then exit")
	fs.StringVar(&c.file, "file", "", "client: the file to put, or to get into")
	fs.IntVar(&c.k, "k", 3, "client: shares needed to rebuild a file")
	fs.IntVar(&c.n, "n", 0, "client -put: shares to make, one per storage node (default: one per -peers address)")
	fs.Int64Var(&c.streamAbove, "stream-above", 1<<20, "client: shares larger than this many bytes go over a stream (share.upload, share.download), not a call")
	fs.DurationVar(&c.timeout, "timeout", 30*time.Second, "client: bound on a whole put or get")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `storagenode: a small Tahoe-like share store on tether.

Storage node:  storagenode -listen HOST:PORT [-http HOST:PORT] -gossip HOST:PORT [-seeds ADDR,...] [-secret HEX]
Put a file:    storagenode -put KEY -file F -k K [-n N] -peers ADDR,...
Get it back:   storagenode -get KEY -k K [-file F] -peers ADDR,...

A put cuts the file into N shares, one per storage node, any K of which
rebuild it. A get reads the first K shares to arrive (peer.FirstK, with
hedging) and prints which nodes answered and how fast. Peer events go to
standard error as they happen.

`)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	c.peers, c.seeds = splitList(peers), splitList(seeds)
	var badSecret error
	if secret != "" {
		c.secret, badSecret = hex.DecodeString(secret)
	}
	if c.n == 0 {
		c.n = len(c.peers)
	}
	var bad string
	switch {
	case fs.NArg() > 0:
		bad = "unexpected arguments: " + strings.Join(fs.Args(), " ")
	case c.put != "" && c.get != "":
		bad = "-put and -get: one at a time"
	case c.put != "" && c.file == "":
		bad = "-put needs -file"
	case (c.put != "" || c.get != "") && len(c.peers) == 0:
		bad = "a client needs -peers"
	case badSecret != nil || secret != "" && len(c.secret) != 16 && len(c.secret) != 24 && len(c.secret) != 32:
		bad = "-secret: 32, 48 or 64 hex digits"
	}
	if bad != "" {
		fmt.Fprintln(stderr, "storagenode:", bad)
		fs.Usage()
		return c, errors.New(bad)
	}
	return c, nil
}

// splitList splits a comma-separated list, dropping empty items.
func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// run runs a storage node until ctx ends, or a client's put or get.
func run(ctx context.Context, cfg config, stdout, stderr io.Writer) error {
	nc := nodeConfig{
		listen:    cfg.listen,
		heartbeat: cfg.heartbeat,
		maxShare:  cfg.maxShare,
		logger:    newLogger(stderr, cfg.verbose),
	}
	if cfg.put != "" || cfg.get != "" {
		return runClient(ctx, cfg, nc, stdout, stderr)
	}
	return runServer(ctx, cfg, nc)
}

func runServer(ctx context.Context, cfg config, nc nodeConfig) error {
	s, err := startServer(nc)
	if err != nil {
		return err
	}
	log := s.node.Logger()
	c, err := s.join(ctx, cfg.gossip, cfg.seeds, cfg.secret)
	if err != nil {
		s.node.Close()
		return err
	}
	var hs *http.Server
	if cfg.http != "" {
		ln, err := net.Listen("tcp", cfg.http)
		if err != nil {
			c.Close()
			s.node.Close()
			return err
		}
		hs = &http.Server{Handler: s.node.Health(), ReadHeaderTimeout: 5 * time.Second}
		go hs.Serve(ln)
	}
	log.Sugar().Infof("storage node %s listening on %s (health and metrics: %q); gossiping on %s with %d other members",
		s.node.ID(), s.node.Addr(), cfg.http, c.GossipAddr(), len(c.Members()))

	<-ctx.Done()
	log.Info("stopping: draining, then saying goodbye to peers")
	if hs != nil {
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		hs.Shutdown(sctx)
		cancel()
	}
	dctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c.Leave(dctx) // the others let it go at once, not after declaring it dead
	return s.close(dctx)
}

func runClient(ctx context.Context, cfg config, nc nodeConfig, stdout, stderr io.Writer) error {
	ctx, cancel := context.WithTimeout(ctx, cfg.timeout)
	defer cancel()
	c, err := startClient(ctx, nc, cfg.peers, cfg.streamAbove, stderr)
	if err != nil {
		return err
	}
	defer c.close()
	if cfg.put != "" {
		data, err := os.ReadFile(cfg.file)
		if err != nil {
			return err
		}
		return c.put(ctx, cfg.put, data, cfg.k, cfg.n)
	}
	data, err := c.get(ctx, cfg.get, cfg.k)
	if err != nil {
		return err
	}
	if cfg.file != "" {
		return os.WriteFile(cfg.file, data, 0o644)
	}
	_, err = stdout.Write(data)
	return err
}
