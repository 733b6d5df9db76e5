// Command silentpartition is tether's main demonstration: a small storage
// grid in one process on loopback (real TCP, real yamux), k-of-n reads
// running all the time, many calls held outstanding on one storage node,
// and then that node silenced for real. It shows, while it happens, how
// soon the silent node is evicted, that every call outstanding to it fails
// at once with rpc.ErrDeadReference, that reads keep completing on the
// other nodes, that the eviction writes one log line and no incident storm,
// and that the node is reconnected after the partition heals.
//
//	go run ./examples/silentpartition              # about 10 s
//	go run ./examples/silentpartition -json        # one JSON object on stdout
//	go run ./examples/silentpartition -svg t.svg   # and a timeline picture
//	go run ./examples/silentpartition -baseline    # plain yamux beside it (~45 s)
//
// Where it can (Linux, root, iptables and unshare present) it re-executes
// itself in a private network namespace and drops the node's packets with
// iptables: a true silent partition, no RST, no ICMP, nothing anyone else
// on the machine sees. Elsewhere, or with -proxy, it puts a user-space TCP
// proxy in front of the node and stops it forwarding. The proxy's own
// kernel still acknowledges every segment, so the node then looks hung,
// not partitioned, and is evicted after the documented hang bound
// (liveness HangAfter, 5 s) instead; the output says which was measured.
//
// It exits with status 1 if an invariant broke (see the summary's
// "violations"), and 2 if it could not run.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"syscall"
	"time"

	"github.com/tetherrpc/tether/partition"
)

func main() { os.Exit(mainExit(os.Args[1:], os.Stdout, os.Stderr)) }

// options are the flags that are not part of the scenario.
type options struct {
	json  bool
	svg   string
	proxy bool
}

// parseFlags reads the command line into a scenario and options.
func parseFlags(args []string, stderr io.Writer) (Config, options, error) {
	cfg := DefaultConfig()
	var o options
	fs := flag.NewFlagSet("silentpartition", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.IntVar(&cfg.Peers, "peers", cfg.Peers, "number of storage nodes in the grid")
	fs.IntVar(&cfg.K, "k", cfg.K, "answers each read needs (k of the storage nodes, with hedging to alternates)")
	fs.DurationVar(&cfg.Heartbeat, "heartbeat", cfg.Heartbeat, "tether's base probe interval (tether.WithHeartbeat); the other liveness bounds scale with it")
	fs.IntVar(&cfg.Outstanding, "outstanding", cfg.Outstanding, "calls held outstanding on the node that will be silenced")
	fs.IntVar(&cfg.Readers, "readers", cfg.Readers, "concurrent readers running k-of-n reads")
	fs.DurationVar(&cfg.Duration, "duration", cfg.Duration, "run time: partition at 30%, heal at 2/3 (later in proxy mode, which waits for the hang bound)")
	fs.Uint64Var(&cfg.Seed, "seed", cfg.Seed, "seed of the simulated storage delays, the read order and the choice of node to silence")
	fs.BoolVar(&o.json, "json", false, "print one JSON object with the results at the end, and nothing else on stdout (progress goes to stderr)")
	fs.StringVar(&o.svg, "svg", "", "write a timeline picture (SVG) of the run to this `file`")
	fs.BoolVar(&cfg.Baseline, "baseline", false, "also run the scenario over plain hashicorp/yamux with its default keepalive, side by side (the run then lasts until yamux notices, about 40 s)")
	fs.BoolVar(&o.proxy, "proxy", false, "silence the node with a user-space TCP proxy even where a kernel-level partition (iptables in a private network namespace) is possible; the node then looks hung, not partitioned")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), `Usage: silentpartition [flags]

Starts a storage grid on loopback, runs k-of-n reads and holds calls
outstanding on one node, silences that node, and reports how soon tether
noticed, what it cancelled, and whether reads kept completing. Exits 1 if an
invariant broke, 2 if it could not run.

As root on Linux (iptables and unshare present) it re-runs itself in a
private network namespace and drops the node's packets with iptables: a true
silent partition. Elsewhere, or with -proxy, it blackholes a user-space TCP
proxy in front of the node, which then looks hung rather than partitioned and
is evicted after the hang bound (5 s) instead.

Flags:
`)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return cfg, o, err
	}
	if fs.NArg() > 0 {
		return cfg, o, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	if o.proxy {
		cfg.Mode = ModeProxy
	}
	return cfg, o, cfg.validate()
}

func mainExit(args []string, stdout, stderr io.Writer) int {
	cfg, o, err := parseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(stderr, "silentpartition:", err)
		return 2
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	if cfg.Mode == ModeKernel {
		inside, err := reexec()
		switch {
		case inside:
			// Here, in the copy, loopback is private: DropPort may be used.
		case err == nil:
			return 0 // the copy in its own namespace did the work and reported
		case errors.Is(err, partition.ErrNoKernelSupport):
			cfg.Mode = ModeProxy
			cfg.ProxyReason = err.Error()
		default:
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				if code := ee.ExitCode(); code > 0 {
					return code // the copy has said why
				}
				return 1
			}
			fmt.Fprintln(stderr, "silentpartition:", err)
			return 2
		}
	}

	progress := stdout
	if o.json {
		progress = stderr
	}
	cfg.Progress = progress
	cfg.Live = isTerminal(progress)

	res, err := run(ctx, cfg)
	if err != nil {
		fmt.Fprintln(stderr, "silentpartition:", err)
		return 2
	}
	if o.svg != "" {
		if err := writeSVGFile(o.svg, res); err != nil {
			res.violate("writing the timeline picture: %v", err)
		} else if !o.json {
			defer fmt.Fprintf(stdout, "timeline picture written to %s\n", o.svg)
		}
	}
	if o.json {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		enc.SetEscapeHTML(false)
		if err := enc.Encode(res); err != nil {
			fmt.Fprintln(stderr, "silentpartition:", err)
			return 2
		}
	} else {
		res.WriteSummary(stdout)
	}
	if !res.InvariantsOK {
		return 1
	}
	return 0
}

// reexec runs this program again inside a private network namespace (see
// partition.Reexec). In the parent it waits for the copy, so that Ctrl-C
// reaches the copy (same process group) and the copy can report what it
// saw; a signal sent to the parent alone ends the copy 5 s later.
func reexec() (inside bool, err error) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sig)
	go func() {
		select {
		case <-sig:
			select {
			case <-time.After(5 * time.Second):
				cancel()
			case <-ctx.Done():
			}
		case <-ctx.Done():
		}
	}()
	return partition.Reexec(ctx)
}

// isTerminal reports whether w is a terminal (a character device), where
// the progress line is rewritten in place.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
