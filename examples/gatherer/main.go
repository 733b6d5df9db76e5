// Command gatherer collects the log streams and incident files of tether
// nodes that serve them (package incident/logport): for each node it writes
// the entries to DIR/<node-id>.log as JSON lines, with a line for each
// loss, and fetches its incident files into DIR/incidents/<node-id>/. It
// keeps every node connected, and after a reconnection resumes the stream
// where it stopped (as far as the node still holds the entries). It also
// serves as an overload gatherer: notices that nodes send it with
// logport.SendNotice go to DIR/overload.log. Ctrl-C stops it cleanly.
//
//	go run ./examples/gatherer -out DIR addr1 addr2 ...
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/tetherrpc/tether/incident/logport"
)

func main() {
	cfg := config{stderr: os.Stderr}
	flag.StringVar(&cfg.out, "out", "", "directory for the logs and incidents (required)")
	flag.StringVar(&cfg.listen, "listen", "127.0.0.1:0", "address of the gatherer's own node")
	flag.IntVar(&cfg.window, "window", logport.DefaultWindow, "credit window, in entries")
	flag.DurationVar(&cfg.incidentEvery, "incidents", 10*time.Second, "how often to look for new incident files")
	flag.BoolVar(&cfg.tail, "tail", false, "start with new entries only, not those the node still holds")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: gatherer -out DIR addr1 addr2 ...\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	cfg.addrs = flag.Args()
	if cfg.out == "" || len(cfg.addrs) == 0 {
		flag.Usage()
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg); err != nil {
		fmt.Fprintln(os.Stderr, "gatherer:", err)
		os.Exit(1)
	}
}

// config is what run needs; main fills it from flags.
type config struct {
	out           string
	addrs         []string
	listen        string
	window        int
	incidentEvery time.Duration
	tail          bool
	stderr        io.Writer   // progress lines; nil for none
	notify        func(event) // tests watch progress through it; may be nil
}

// event is a step of the gatherer's progress, for tests.
type event struct {
	kind string // "subscribed", "entry", "loss", "incident", "ended", "overload"
	node string
	seq  uint64 // entry: its seq; loss: the last lost; subscribed: the start position; overload: entries dropped
	name string // incident: the file's name
	err  error  // ended: why
}

// run gathers until ctx ends, then stops cleanly: subscriptions ended,
// files flushed and closed, the gatherer's node closed.
func run(ctx context.Context, cfg config) error {
	if cfg.stderr == nil {
		cfg.stderr = io.Discard
	}
	if cfg.incidentEvery <= 0 {
		cfg.incidentEvery = 10 * time.Second
	}
	if cfg.listen == "" {
		cfg.listen = "127.0.0.1:0"
	}
	g, err := newGatherer(cfg)
	if err != nil {
		return err
	}
	<-ctx.Done()
	err = g.close()
	if errors.Is(err, context.Canceled) {
		err = nil
	}
	return err
}
