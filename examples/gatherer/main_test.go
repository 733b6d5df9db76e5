package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/incident"
	"github.com/tetherrpc/tether/incident/logport"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// watcher records the gatherer's progress and lets the test wait for a
// condition on it.
type watcher struct {
	mu      sync.Mutex
	events  []event
	changed chan struct{}
}

func newWatcher() *watcher { return &watcher{changed: make(chan struct{})} }

func (w *watcher) notify(ev event) {
	w.mu.Lock()
	w.events = append(w.events, ev)
	close(w.changed)
	w.changed = make(chan struct{})
	w.mu.Unlock()
}

// waitFor waits until cond holds for the events so far.
func (w *watcher) waitFor(t *testing.T, what string, cond func([]event) bool) {
	t.Helper()
	timeout := time.After(20 * time.Second)
	for {
		w.mu.Lock()
		ok := cond(w.events)
		ch := w.changed
		w.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-ch:
		case <-timeout:
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

func lastSeq(evs []event) uint64 {
	var s uint64
	for _, e := range evs {
		if e.kind == "entry" || e.kind == "loss" {
			s = max(s, e.seq)
		}
	}
	return s
}

func count(evs []event, kind string) int {
	n := 0
	for _, e := range evs {
		if e.kind == kind {
			n++
		}
	}
	return n
}

// testNode is a tether node logging through incident.Async into a
// recorder and a log port, as a real node would, with the port's methods
// registered.
type testNode struct {
	n     *tether.Node
	port  *logport.Port
	async *incident.AsyncCore
	log   *zap.Logger
	incs  string
}

func startNode(t *testing.T) *testNode {
	t.Helper()
	incs := t.TempDir()
	rec, err := incident.NewRecorder(incs, incident.WithTrailing(time.Hour, 10))
	if err != nil {
		t.Fatal(err)
	}
	port := logport.New(logport.WithHistory(), logport.WithIncidents(rec))
	async := incident.Async(zapcore.NewTee(rec, port.Core()))
	log := zap.New(async)
	n, err := tether.Listen("127.0.0.1:0", tether.WithLogger(log), tether.WithHeartbeat(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	port.Register(n)

	// One incident: an Error, then closing the recorder writes the file.
	log.Info("starting")
	log.Error("disk failed", zap.String(incident.PeerKey, "p1"))
	async.Sync()
	if err := rec.Close(); err != nil {
		t.Fatal(err)
	}
	if len(rec.Files()) != 1 {
		t.Fatalf("recorder wrote %v", rec.Files())
	}
	tn := &testNode{n: n, port: port, async: async, log: log, incs: incs}
	t.Cleanup(func() {
		n.Close()
		port.Close()
		async.Close()
	})
	return tn
}

// The gatherer, run in-process against a live node, writes the node's
// entries (from before it connected too, the node keeping history) to
// DIR/<node-id>.log with contiguous sequence numbers, fetches its incident
// file, survives the node evicting it (resuming without a gap after Keep
// reconnects), and stops cleanly when its context ends.
func TestGatherer(t *testing.T) {
	nd := startNode(t)
	for i := range 50 {
		nd.log.Info("before the gatherer", zap.Int("i", i))
	}
	out := t.TempDir()
	w := newWatcher()
	var stderr bytes.Buffer
	var stderrMu sync.Mutex
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, config{
			out:    out,
			addrs:  []string{nd.n.Addr().String()},
			window: 64,
			stderr: writerFunc(func(b []byte) (int, error) {
				stderrMu.Lock()
				defer stderrMu.Unlock()
				return stderr.Write(b)
			}),
			notify: w.notify,
		})
	}()
	defer cancel()

	id := string(nd.n.ID())
	w.waitFor(t, "the incident file", func(evs []event) bool { return count(evs, "incident") == 1 })
	nd.async.Sync()
	w.waitFor(t, "the history", func(evs []event) bool { return lastSeq(evs) >= nd.port.Stats().Entries })

	for i := range 50 {
		nd.log.Info("while gathering", zap.Int("i", i))
	}
	nd.async.Sync()
	w.waitFor(t, "the new entries", func(evs []event) bool { return lastSeq(evs) >= nd.port.Stats().Entries })

	// The node evicts the gatherer; entries logged meanwhile are not lost:
	// the gatherer reconnects, resumes from where it stopped.
	peers := nd.n.Peers().List()
	if len(peers) != 1 {
		t.Fatalf("the node has %d peers", len(peers))
	}
	peers[0].Evict(nil)
	w.waitFor(t, "the subscription to end", func(evs []event) bool { return count(evs, "ended") == 1 })
	for i := range 50 {
		nd.log.Info("while away", zap.Int("i", i))
	}
	w.waitFor(t, "a new subscription", func(evs []event) bool { return count(evs, "subscribed") == 2 })
	nd.log.Info("after the reconnection")
	nd.async.Sync()
	w.waitFor(t, "the entries from while away", func(evs []event) bool { return lastSeq(evs) >= nd.port.Stats().Entries })
	final := nd.port.Stats().Entries

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run returned %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("run did not return after its context ended")
	}

	// The log file: every entry exactly once, in order, no loss.
	f, err := os.Open(filepath.Join(out, id+".log"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var next uint64 = 1
	msgs := map[string]int{}
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		if m["lost"] != nil {
			t.Fatalf("a loss: %s", sc.Text())
		}
		if m["gatherer"] != nil {
			continue // the gatherer's own notes
		}
		if seq := uint64(m["port_seq"].(float64)); seq != next {
			t.Fatalf("port_seq %d, want %d: %s", seq, next, sc.Text())
		}
		next++
		msgs[m["msg"].(string)]++
	}
	if next != final+1 {
		t.Fatalf("the file ends at seq %d; the node logged %d", next-1, final)
	}
	for _, m := range []string{"before the gatherer", "while gathering", "while away"} {
		if msgs[m] != 50 {
			t.Errorf("%d entries %q", msgs[m], m)
		}
	}
	if msgs["disk failed"] != 1 || msgs["after the reconnection"] != 1 {
		t.Errorf("messages %v", msgs)
	}

	// The incident file, byte for byte.
	names, _ := filepath.Glob(filepath.Join(nd.incs, "incident-*.json"))
	got, _ := filepath.Glob(filepath.Join(out, "incidents", id, "*"))
	if len(names) != 1 || len(got) != 1 || filepath.Base(got[0]) != filepath.Base(names[0]) {
		t.Fatalf("incidents: node %v, gathered %v", names, got)
	}
	a, _ := os.ReadFile(names[0])
	b, _ := os.ReadFile(got[0])
	if !bytes.Equal(a, b) {
		t.Fatal("the gathered incident differs")
	}
	stderrMu.Lock()
	defer stderrMu.Unlock()
	if s := stderr.String(); !strings.Contains(s, "reconnected to") || !strings.Contains(s, "0 lost, 1 incidents") {
		t.Errorf("progress:\n%s", s)
	}
	t.Logf("progress:\n%s", stderr.String())
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(b []byte) (int, error) { return f(b) }

// A node whose slow subscriber loses entries sends its overload notice to
// the gatherer, which writes it to DIR/overload.log.
func TestGathererOverloadNotice(t *testing.T) {
	var n *tether.Node
	port := logport.New(logport.WithBudget(logport.MinBudget), logport.WithOverloadNotice(func(no logport.Notice) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		for _, p := range n.Peers().List() { // the gatherer serves log.overload; others refuse it
			logport.SendNotice(ctx, p, no)
		}
	}))
	log := zap.New(port.Core())
	n, err := tether.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	defer port.Close()
	port.Register(n)

	out := t.TempDir()
	w := newWatcher()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, config{out: out, addrs: []string{n.Addr().String()}, notify: w.notify}) }()
	defer cancel()
	w.waitFor(t, "the subscription", func(evs []event) bool { return count(evs, "subscribed") == 1 })

	// A slow subscriber: another node, taking one entry and stalling.
	slow, err := tether.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	p, err := slow.Dial(ctx, n.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	started := make(chan struct{})
	slowDone := make(chan struct{})
	sctx, scancel := context.WithCancel(ctx)
	go func() {
		defer close(slowDone)
		logport.Subscribe(sctx, p, func(logport.Entry) {
			select {
			case <-release:
			case <-sctx.Done():
			}
		}, logport.Window(1), logport.OnStart(func(logport.Position) { close(started) }))
	}()
	<-started
	pad := strings.Repeat("o", 500)
	for i := range 3000 { // three budgets
		log.Info("flood", zap.Int("i", i), zap.String("pad", pad))
	}
	w.waitFor(t, "an overload notice", func(evs []event) bool { return count(evs, "overload") == 1 })
	close(release)
	scancel()
	<-slowDone
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(out, "overload.log"))
	if err != nil || !strings.Contains(string(b), "log port overloaded") || !strings.Contains(string(b), string(slow.ID())) {
		t.Fatalf("overload.log: %q, %v", b, err)
	}
}
