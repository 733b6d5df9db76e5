// Command manypeers shows what N idle peers cost a tether node, and how
// fast it notices silent ones among them, side by side with plain yamux and
// grpc-go at the same N, in one run:
//
//	cd bench && go run ./cmd/manypeers -peers 10000
//
// For each system in turn it starts a server and N idle peers in a
// second process (this program re-executed), all dialled at once over
// loopback, then prints a table: the time to connect them all, the
// server's CPU while idle (a share of one core), heap and goroutine stacks
// per peer, goroutines per peer, peers lost while idle, the detection time
// of peers silenced one at a time by an iptables DROP of their port (no
// RST), and a mass failure: a fraction of the peers (-silence-frac)
// silenced at once, when the last was noticed, whether any other peer was
// lost, and how many lines were logged at Warn or above and incident files
// written meanwhile. For tether it then says whether the floors held.
//
// Each system is measured by a run of this program of its own (-systems
// with one name), so that nothing of one system's run is left in the
// process or the namespace when the next is measured. As root with unshare
// and iptables that run re-runs itself in a private network namespace
// (unshare -n), so the rules touch nothing else; elsewhere it says why it
// cannot silence and measures the rest on loopback. -json prints the
// results as JSON. Every system runs with its default
// configuration; tether's node also gets a logger that counts its lines
// and an incident directory, so that both can be counted.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/internal/scale"
	"github.com/tetherrpc/tether/liveness"
	"github.com/tetherrpc/tether/partition"
)

// systems are the systems this program can measure, by name.
var systems = []scale.System{scale.Tether(), scale.Yamux(), grpcSystem{}}

func main() {
	scale.Child(systems...) // the peers process does its part and exits here

	peers := flag.Int("peers", 2000, "idle peers per system")
	names := flag.String("systems", "tether,yamux,grpc", "systems to measure, in order, comma-separated: tether, yamux, grpc")
	idle := flag.Duration("idle", 10*time.Second, "idle window over which CPU is measured")
	frac := flag.Float64("silence-frac", 0.2, "fraction of the peers silenced at once in the mass failure (negative: none)")
	detect := flag.Duration("detect-timeout", 45*time.Second, "how long to wait for silenced peers to be noticed")
	conc := flag.Int("dial-concurrency", 0, "dials in progress at most in the peers process (0: all at once)")
	jsonOut := flag.Bool("json", false, "print the results as JSON")
	quiet := flag.Bool("q", false, "do not log the steps on standard error")
	noNS := flag.Bool("no-namespace", false, "do not re-run in a private network namespace (then nothing is silenced)")
	noKeepAlive := flag.Bool("no-keepalive", false, "tether: no kernel keepalive (liveness KeepAlive 0), so idle peers are probed as where there is no kernel evidence")
	budget := flag.Int("probe-budget", -1, "tether: liveness IdleProbeBudget, probes a second to idle peers without kernel evidence (0: no bound; -1: the default)")
	reconnect := flag.Bool("reconnect", false, "measure a connection storm instead: -peers kept peers partitioned at once, healed once both sides evicted them, coming back (tether only)")
	hold := flag.Duration("hold", 0, "-reconnect: how long the partition is held after both sides evicted the kept peers")
	steady := flag.Int("steady", 4, "-reconnect: established peers never partitioned, whose calls are timed")
	flag.Parse()
	if *reconnect {
		os.Exit(runReconnect(*peers, *steady, *hold, *jsonOut, *quiet))
	}
	if *noKeepAlive || *budget >= 0 {
		cfg := liveness.LAN()
		if *noKeepAlive {
			cfg.KeepAlive = 0
		}
		if *budget >= 0 {
			cfg.IdleProbeBudget = *budget
		}
		systems[0] = scale.Tether(tether.WithLiveness(cfg))
	}

	var chosen []scale.System
	for _, name := range strings.Split(*names, ",") {
		s := find(strings.TrimSpace(name))
		if s == nil {
			fmt.Fprintf(os.Stderr, "manypeers: unknown system %q (tether, yamux, grpc)\n", name)
			os.Exit(2)
		}
		chosen = append(chosen, s)
	}
	if *peers < 1 {
		fmt.Fprintln(os.Stderr, "manypeers: -peers must be at least 1")
		os.Exit(2)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()

	opts := options{peers: *peers, idle: *idle, frac: *frac, detect: *detect, conc: *conc, quiet: *quiet, noNS: *noNS,
		noKeepAlive: *noKeepAlive, budget: *budget}
	var results []*scale.Result
	failed := false
	if len(chosen) == 1 {
		r, done, err := measure(ctx, chosen[0], opts)
		if done {
			if err != nil {
				fmt.Fprintln(os.Stderr, "manypeers:", err)
				os.Exit(1)
			}
			return // the copy in its own namespace has done the work
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "manypeers: %s: %v\n", chosen[0].Name(), err)
			failed = true
		}
		if r != nil {
			results = append(results, r)
		}
	} else {
		// One process, and one network namespace, per system: nothing of
		// one system's run (heap, goroutines, sockets still closing) is
		// there when the next is measured.
		for _, s := range chosen {
			rs, err := measureApart(ctx, s.Name(), opts)
			if err != nil {
				fmt.Fprintf(os.Stderr, "manypeers: %s: %v\n", s.Name(), err)
				failed = true
			}
			results = append(results, rs...)
			if ctx.Err() != nil {
				break
			}
		}
	}

	if *jsonOut {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		enc.Encode(report{*peers, runtime.Version(), runtime.NumCPU(), results})
	} else {
		fmt.Printf("%d idle peers per system, loopback, %d CPUs, %s\n\n", *peers, runtime.NumCPU(), runtime.Version())
		scale.WriteTable(os.Stdout, results)
		for _, r := range results {
			if r.System == "tether" {
				writeFloors(r)
			}
		}
	}
	if failed {
		os.Exit(1)
	}
}

// report is what -json prints.
type report struct {
	Peers   int             `json:"peers"`
	Go      string          `json:"go"`
	CPUs    int             `json:"cpus"`
	Results []*scale.Result `json:"results"`
}

// options are the measurement flags.
type options struct {
	peers        int
	idle, detect time.Duration
	frac         float64
	conc         int
	quiet, noNS  bool
	noKeepAlive  bool
	budget       int
}

// measure measures one system in this process, after re-running this
// program in a private network namespace where it can. done reports that
// a copy in its own namespace did the work (and printed the results); err
// is then the copy's failure, if any.
func measure(ctx context.Context, sys scale.System, o options) (r *scale.Result, done bool, err error) {
	silence := false
	why := ""
	if o.noNS {
		why = "-no-namespace: nothing silenced"
	} else {
		inside, err := partition.Reexec(ctx)
		switch {
		case inside:
			silence = true
		case err == nil:
			return nil, true, nil
		case !isNoSupport(err):
			return nil, true, err
		default:
			why = err.Error()
		}
	}
	if silence {
		if err := scale.TuneNamespace(); err != nil {
			fmt.Fprintln(os.Stderr, "manypeers: tuning the namespace:", err)
		}
		if err := scale.CanSilence(); err != nil {
			silence, why = false, err.Error()
		}
	}
	if why != "" {
		fmt.Fprintf(os.Stderr, "manypeers: cannot silence peers (%s); measuring connect, CPU and memory on loopback only\n", why)
	}
	logf := func(format string, args ...any) {
		fmt.Fprintf(os.Stderr, "%s  "+format+"\n", append([]any{time.Now().UTC().Format("15:04:05.000")}, args...)...)
	}
	if o.quiet {
		logf = nil
	}
	r, err = scale.Run(ctx, sys, scale.Config{
		Peers:           o.peers,
		DialConcurrency: o.conc,
		Idle:            o.idle,
		Silence:         silence,
		SilenceFrac:     o.frac,
		DetectTimeout:   o.detect,
		Logf:            logf,
	})
	if r != nil && !silence {
		r.NoSilence = why
	}
	return r, false, err
}

// measureApart measures one system in a fresh run of this program (which
// makes its own namespace) and returns its results, read from its -json
// output.
func measureApart(ctx context.Context, name string, o options) ([]*scale.Result, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	args := []string{
		"-systems", name, "-json",
		"-peers", strconv.Itoa(o.peers),
		"-idle", o.idle.String(),
		"-silence-frac", strconv.FormatFloat(o.frac, 'g', -1, 64),
		"-detect-timeout", o.detect.String(),
		"-dial-concurrency", strconv.Itoa(o.conc),
	}
	if o.quiet {
		args = append(args, "-q")
	}
	if o.noNS {
		args = append(args, "-no-namespace")
	}
	if o.noKeepAlive {
		args = append(args, "-no-keepalive")
	}
	args = append(args, "-probe-budget", strconv.Itoa(o.budget))
	cmd := exec.CommandContext(ctx, exe, args...)
	cmd.Stderr = os.Stderr
	cmd.WaitDelay = 10 * time.Second
	out, runErr := cmd.Output()
	var rep report
	if err := json.Unmarshal(out, &rep); err != nil {
		return nil, errors.Join(runErr, fmt.Errorf("reading its results: %w", err))
	}
	return rep.Results, runErr
}

func find(name string) scale.System {
	for _, s := range systems {
		if s.Name() == name {
			return s
		}
	}
	return nil
}

// isNoSupport reports whether err says only that this machine cannot make
// a private namespace or iptables rules.
func isNoSupport(err error) bool {
	return err != nil && (errors.Is(err, partition.ErrNoKernelSupport) || errors.Is(err, partition.ErrNotIsolated))
}

// writeFloors says, for tether's result, whether each of the project's
// floors for many peers held.
func writeFloors(r *scale.Result) {
	fmt.Printf("\ntether floors:\n")
	check := func(ok bool, format string, args ...any) {
		verdict := "ok  "
		if !ok {
			verdict = "FAIL"
		}
		fmt.Printf("  %s %s\n", verdict, fmt.Sprintf(format, args...))
	}
	connectBound := 10.0 * max(float64(r.Peers)/10000, 1)
	check(r.Connected == r.Peers && r.ConnectSec <= connectBound,
		"%d peers registered within %.0f s: %d in %.2f s (dialled %s)", r.Peers, connectBound, r.Connected, r.ConnectSec, atOnce(r.DialConcurrency))
	if r.IdleSec == 0 {
		return
	}
	check(r.IdleLost == 0, "no false eviction while idle: %d", r.IdleLost)
	check(r.CPUCore <= 0.10, "idle node CPU at most 10%% of a core: %.1f%%", 100*r.CPUCore)
	check(r.BytesPerPeer <= 20<<10, "heap and stacks at most 20 KiB a peer: %.1f KiB", r.BytesPerPeer/1024)
	check(r.GoroutinesPerPeer <= 3, "at most 3 goroutines a peer: %.2f", r.GoroutinesPerPeer)
	if r.DetectCount > 0 {
		check(r.DetectMaxMS <= 2000, "an idle silenced peer noticed within 2 s: the last of %d after %.0f ms", r.DetectCount, r.DetectMaxMS)
	}
	if r.MassSilenced == 0 {
		return
	}
	check(r.MassNoticed == r.MassSilenced && r.MassMaxMS <= 2000, "mass failure noticed within 2 s: %d of %d, the last after %.0f ms", r.MassNoticed, r.MassSilenced, r.MassMaxMS)
	check(r.MassOthers == 0, "no other peer evicted: %d", r.MassOthers)
	check(r.MassWarnLines <= 10, "at most 10 lines at Warn or above: %d", r.MassWarnLines)
	check(r.MassIncidents <= 1, "at most one incident file: %d", r.MassIncidents)
}

func atOnce(conc int) string {
	if conc <= 0 {
		return "all at once"
	}
	return fmt.Sprintf("%d at a time", conc)
}
