package main

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/xml"
	"errors"
	"flag"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/yamux"
	"go.uber.org/goleak"

	"github.com/tetherrpc/tether/partition"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// shortConfig is a scenario of a few seconds, with plain yamux beside it on
// a shortened keepalive (0.5 s to answer) so that it notices quickly.
func shortConfig(mode Mode, progress io.Writer) Config {
	cfg := DefaultConfig()
	cfg.Mode = mode
	cfg.Duration = 3 * time.Second
	cfg.Outstanding = 30
	cfg.Readers = 3
	cfg.Baseline = true
	// Its first keepalive goes out just after the tether side ends: when
	// a yamux session closes, every stream blocked in Read spins until
	// Close reaches it (yamux v0.1.2), which would starve the tether side
	// of CPU for a while if it fell within it.
	keepalive := cfg.schedule().endAt + 500*time.Millisecond
	cfg.baselineYamux = func() *yamux.Config {
		c := yamux.DefaultConfig()
		c.KeepAliveInterval = keepalive
		c.ConnectionWriteTimeout = 500 * time.Millisecond
		return c
	}
	cfg.baselineCalls = 5
	cfg.Progress = progress
	return cfg
}

// runScenario runs cfg and returns its result as JSON keys, after checking
// the invariants every mode must keep. The read tail's bound (p99 during
// the partition against p99 before) is statistical, and other tests share
// the machine's two cores: a run whose only violation is that one is run
// once more, and the second must pass.
func runScenario(t *testing.T, cfg Config) (*Result, map[string]any) {
	t.Helper()
	var res *Result
	for attempt := 1; ; attempt++ {
		var progress bytes.Buffer
		cfg.Progress = &progress
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		var err error
		res, err = run(ctx, cfg)
		cancel()
		if err != nil {
			t.Fatalf("run: %v\n%s", err, progress.String())
		}
		var summary bytes.Buffer
		res.WriteSummary(&summary)
		t.Logf("\n%s%s", progress.String(), summary.String())
		if !res.tailOnly || attempt == 2 {
			break
		}
		t.Logf("only the read tail's bound broke (%s): once more", res.Violations[0])
	}

	b, err := json.Marshal(res)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{
		"detect_ms", "calls_cancelled", "cancel_lag_ms", "incident_files", "reads_ok", "reads_failed",
		"read_p99_ms_before", "read_p99_ms_during", "reconnected", "mode", "cause", "reconnect_ms",
		"read_p50_ms_before", "read_p50_ms_during", "hedge_ms", "invariants_ok", "violations",
		"baseline_detect_ms",
	} {
		if _, ok := m[k]; !ok {
			t.Errorf("JSON has no %q", k)
		}
	}
	if m["invariants_ok"] != true {
		t.Errorf("invariants broken: %v", m["violations"])
	}
	num := func(k string) float64 {
		f, ok := m[k].(float64)
		if !ok {
			t.Fatalf("%s = %v, not a number", k, m[k])
		}
		return f
	}
	if got := num("calls_cancelled"); got < float64(cfg.Outstanding) {
		t.Errorf("calls_cancelled %v, want at least %d", got, cfg.Outstanding)
	}
	if got := num("held_failed_dead_reference"); got != float64(cfg.Outstanding) {
		t.Errorf("%v held calls failed with ErrDeadReference, want %d", got, cfg.Outstanding)
	}
	if num("reads_failed") != 0 || num("reads_ok_during") == 0 || num("reads_ok_after") == 0 {
		t.Errorf("reads: %v ok, %v failed; %v ok during the partition, %v after",
			m["reads_ok"], m["reads_failed"], m["reads_ok_during"], m["reads_ok_after"])
	}
	if num("incident_files") > 1 {
		t.Errorf("%v incident files", m["incident_files"])
	}
	if num("log_warn_lines") != 1 {
		t.Errorf("log lines at Warn: %v, want one for the eviction", m["log_warn_messages"])
	}
	if m["reconnected"] != true || num("reconnect_ms") < 0 {
		t.Errorf("reconnected %v after %v ms", m["reconnected"], m["reconnect_ms"])
	}
	if num("cancel_lag_ms") > float64(cancelLagBound/time.Millisecond) {
		t.Errorf("cancel lag %v ms", m["cancel_lag_ms"])
	}
	if num("baseline_detect_ms") <= 0 || num("baseline_calls_failed") != float64(cfg.baselineCalls) {
		t.Errorf("plain yamux: noticed after %v ms, %v calls failed", m["baseline_detect_ms"], m["baseline_calls_failed"])
	}
	checkSVG(t, res, "partition", "eviction", "heal", "reconnect", "baseline-notice", "inflight-"+res.Victim)
	return res, m
}

// checkSVG renders the run's timeline, parses it as XML and looks for the
// marks by id.
func checkSVG(t *testing.T, res *Result, ids ...string) {
	t.Helper()
	var buf bytes.Buffer
	if err := writeSVG(&buf, res); err != nil {
		t.Fatal(err)
	}
	if dir := os.Getenv("SILENTPARTITION_SVG_DIR"); dir != "" { // to look at the pictures
		name := filepath.Join(dir, strings.ReplaceAll(t.Name(), "/", "_")+".svg")
		if err := os.WriteFile(name, buf.Bytes(), 0o644); err != nil {
			t.Error(err)
		}
	}
	found := map[string]bool{}
	d := xml.NewDecoder(&buf)
	root := ""
	for {
		tok, err := d.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("the SVG is not well-formed XML: %v", err)
		}
		if se, ok := tok.(xml.StartElement); ok {
			if root == "" {
				root = se.Name.Local
			}
			for _, a := range se.Attr {
				if a.Name.Local == "id" {
					found[a.Value] = true
				}
			}
		}
	}
	if root != "svg" {
		t.Errorf("root element %q, want svg", root)
	}
	for _, id := range ids {
		if !found[id] {
			t.Errorf("the SVG has no element with id=%q", id)
		}
	}
}

// A true silent partition: iptables DROP in a private network namespace.
// Isolated re-executes this test there; run does not call Reexec itself.
func TestKernelPartition(t *testing.T) {
	if !partition.Isolated(t) {
		return
	}
	res, m := runScenario(t, shortConfig(ModeKernel, nil))
	if m["mode"] != "kernel" || m["verdict"] != "silent" {
		t.Errorf("mode %v, verdict %v: want kernel, silent", m["mode"], m["verdict"])
	}
	if d := *res.DetectMS; d > 1500 {
		t.Errorf("detection took %v ms, floor 1500", d)
	}
}

// The fallback everywhere: a blackholed user-space proxy, where the node
// looks hung and is evicted after the hang bound.
func TestProxyPartition(t *testing.T) {
	cfg := shortConfig(ModeProxy, nil)
	res, m := runScenario(t, cfg)
	if m["mode"] != "proxy" || m["verdict"] != "hung" {
		t.Errorf("mode %v, verdict %v: want proxy, hung", m["mode"], m["verdict"])
	}
	// The hang bound counts from the last bytes received, which may
	// precede the blackhole a little.
	hang, bound := cfg.liveness().HangAfter, cfg.schedule().detectBound
	if d := time.Duration(*res.DetectMS * float64(time.Millisecond)); d < hang-time.Second || d > bound {
		t.Errorf("detection after %v: want about the hang bound %v, within %v", d, hang, bound)
	}
}

// The picture of a run in which nothing was detected still parses, and
// marks the partition.
func TestSVGWithoutEviction(t *testing.T) {
	r := &Result{Mode: ModeKernel, Peers: 3, K: 2, Held: 10, HeartbeatMS: 250, EndAtS: 4, Victim: "node-1",
		nodes: []string{"node-1", "node-2", "node-3"}}
	for i := range 80 {
		r.samples = append(r.samples, sample{t: time.Duration(i) * sampleEvery, inFlight: []int{10, i % 3, 1}, reads: int64(i * 40), baseline: -1})
	}
	r.add(time.Second, "partition", `partition <"quoted"> & escaped`)
	checkSVG(t, r, "partition", "inflight-node-1", "reads")
	var buf bytes.Buffer
	writeSVG(&buf, r)
	if strings.Contains(buf.String(), `id="eviction"`) {
		t.Error("an eviction mark for a run without eviction")
	}
}

func TestFlags(t *testing.T) {
	var out bytes.Buffer
	if _, _, err := parseFlags([]string{"-h"}, &out); !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("-h: %v", err)
	}
	for _, f := range []string{"-peers", "-k", "-heartbeat", "-outstanding", "-duration", "-seed", "-json", "-svg", "-baseline", "-proxy"} {
		if !strings.Contains(out.String(), "  "+f) {
			t.Errorf("-h does not explain %s:\n%s", f, out.String())
		}
	}
	cfg, o, err := parseFlags([]string{"-peers", "7", "-k", "4", "-heartbeat", "100ms", "-outstanding", "5", "-duration", "4s", "-seed", "9", "-json", "-svg", "t.svg", "-baseline", "-proxy"}, io.Discard)
	if err != nil || cfg.Peers != 7 || cfg.K != 4 || cfg.Heartbeat != 100*time.Millisecond || cfg.Outstanding != 5 ||
		cfg.Duration != 4*time.Second || cfg.Seed != 9 || !o.json || o.svg != "t.svg" || !cfg.Baseline || cfg.Mode != ModeProxy {
		t.Errorf("parsed %+v %+v %v", cfg, o, err)
	}
	for _, bad := range [][]string{{"-k", "6"}, {"-k", "0"}, {"-duration", "1s"}, {"-peers", "0"}, {"-outstanding", "-1"}, {"extra"}} {
		if _, _, err := parseFlags(bad, io.Discard); err == nil {
			t.Errorf("%q accepted", bad)
		}
		if code := mainExit(bad, io.Discard, io.Discard); code != 2 {
			t.Errorf("%q: exit %d, want 2", bad, code)
		}
	}
}

func TestSchedule(t *testing.T) {
	c := DefaultConfig()
	s := c.schedule()
	if s.partitionAt != 3*time.Second || s.healAt != c.Duration*2/3 || s.endAt != c.Duration || s.stretched != 0 {
		t.Errorf("kernel schedule %+v", s)
	}
	c.Mode = ModeProxy
	s = c.schedule()
	if s.healAt < s.partitionAt+c.liveness().HangAfter || s.endAt-s.healAt != c.Duration-c.Duration*2/3 {
		t.Errorf("proxy schedule %+v: the heal must wait for the hang bound", s)
	}
}
