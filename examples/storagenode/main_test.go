package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/tetherrpc/tether/internal/ttest"
	"github.com/tetherrpc/tether/peer"
	"github.com/tetherrpc/tether/rpc"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// Three storage nodes in this process, started as main starts them; a
// client puts two files (one small enough for calls, one sent over
// streams), one node leaves, the client sees it evicted at once and still
// reads both files back from the other two with FirstK. Health, readiness
// and metrics are checked over real HTTP.
func TestPutLeaveGet(t *testing.T) {
	logs := logTo(t)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()

	var servers []*server
	var watches []*eventLog
	var addrs []string
	for i := range 3 {
		w := newEventLog()
		s, err := startServer(nodeConfig{listen: "127.0.0.1:0", heartbeat: 100 * time.Millisecond,
			maxShare: 1 << 20, logger: newLogger(logs, false).Named(fmt.Sprint("node", i)), onEvent: w.add})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.node.Close() })
		servers, watches, addrs = append(servers, s), append(watches, w), append(addrs, s.node.Addr().String())
	}
	var seed string
	for _, s := range servers { // as main does with -gossip and -seeds
		var seeds []string
		if seed != "" {
			seeds = []string{seed}
		}
		c, err := s.join(ctx, "127.0.0.1:0", seeds, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		seed = c.GossipAddr()
	}
	for _, s := range servers {
		// Ready: both members kept and connected. When two nodes dial each
		// other at once and the connection the other dialed is the one
		// kept, the registry counts the kept address as reachable only
		// after the keeper's next attempt (about 100 ms later), and tells
		// no event of it: so this one wait polls.
		ttest.WaitFor(t, 10*time.Second, func() bool {
			kept, live := s.node.Peers().KeptReachable()
			return kept == 2 && live == 2
		}, "storage nodes to reach each other")
	}

	var report syncBuffer
	cw := newEventLog()
	c, err := startClient(ctx, nodeConfig{listen: "127.0.0.1:0", logger: newLogger(logs, false).Named("client"), onEvent: cw.add},
		addrs, 64<<10, &report)
	if err != nil {
		t.Fatal(err)
	}
	defer c.close()
	if len(c.live()) != 3 {
		t.Fatalf("client connected to %d storage nodes:\n%s", len(c.live()), report.String())
	}

	small := randomBytes(t, 10_000)  // shares of 6.7 kB: share.put and share.get
	large := randomBytes(t, 300_001) // shares of 200 kB: share.upload and share.download
	for key, data := range map[string][]byte{"small": small, "large": large} {
		if err := c.put(ctx, key, data, 2, 3); err != nil {
			t.Fatalf("%v\n%s", err, report.String())
		}
	}
	// The same through the command line, with files, as a user would.
	dir := t.TempDir()
	in, out := filepath.Join(dir, "in"), filepath.Join(dir, "out")
	if err := os.WriteFile(in, large[:123_456], 0o600); err != nil {
		t.Fatal(err)
	}
	peers := strings.Join(addrs, ",")
	for _, args := range [][]string{
		{"-put", "file", "-file", in, "-k", "2", "-peers", peers},
		{"-get", "file", "-file", out, "-k", "2", "-peers", peers},
	} {
		cfg, err := parseFlags(args, io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		var stderr syncBuffer
		if err := run(ctx, cfg, io.Discard, &stderr); err != nil {
			t.Fatalf("%v: %v\n%s", args, err, stderr.String())
		}
	}
	if got, err := os.ReadFile(out); err != nil || !bytes.Equal(got, large[:123_456]) {
		t.Fatalf("-get wrote %d bytes (%v), not the %d put", len(got), err, 123_456)
	}

	for i, s := range servers {
		if got := keys(s.store); got != 3 {
			t.Fatalf("storage node %d holds shares of %d keys, want 3", i, got)
		}
	}

	// Node 0 leaves: it drains and says goodbye, so the client and the
	// other nodes evict it at once, without waiting for missed heartbeats.
	gone := servers[0].node.ID()
	t0 := time.Now()
	if err := servers[0].close(ctx); err != nil {
		t.Fatal(err)
	}
	for _, w := range append([]*eventLog{cw}, watches[1:]...) {
		w.waitFor(t, "node 0 to be evicted with rpc.ErrPeerLeft", func(evs []peer.Event) bool {
			for _, ev := range evs {
				if ev.Kind == peer.Disconnected && ev.ID == gone && errors.Is(ev.Cause, rpc.ErrPeerLeft) {
					return true
				}
			}
			return false
		})
	}
	t.Logf("node 0 evicted by the client and both other nodes %v after it left", time.Since(t0))

	report.Reset()
	for key, want := range map[string][]byte{"small": small, "large": large} {
		got, err := c.get(ctx, key, 2)
		if err != nil {
			t.Fatalf("%v\n%s", err, report.String())
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("%s: got %d bytes back, not the %d put", key, len(got), len(want))
		}
	}
	r := report.String()
	t.Logf("client's report:\n%s", r)
	if strings.Contains(r, addrs[0]) || !strings.Contains(r, addrs[1]) || !strings.Contains(r, addrs[2]) {
		t.Errorf("the reads should have been answered by nodes 1 and 2, at %s and %s", addrs[1], addrs[2])
	}
	if strings.Count(r, "stream") != 2 || strings.Count(r, "call") != 2 {
		t.Errorf("want the small file read by calls and the large one by streams")
	}

	// Three shares are no longer to be had.
	var qe *peer.QuorumError
	if _, err := c.get(ctx, "small", 3); !errors.As(err, &qe) {
		t.Fatalf("a read of 3 shares from 2 nodes: %v", err)
	}
	// An absent key is a *rpc.RemoteError saying so.
	var re *rpc.RemoteError
	if _, err := c.get(ctx, "nothing", 1); !errors.As(err, &re) || !strings.Contains(re.Message, "not found") {
		t.Fatalf("reading an absent key: %v", err)
	}

	// Node 1 over HTTP: healthy, ready (node 2 is still reachable), and its
	// metrics count the calls it served.
	hs := httptest.NewServer(servers[1].node.Health())
	defer hs.Close()
	checkHealth(t, hs.URL+"/healthz", http.StatusOK, "")
	checkHealth(t, hs.URL+"/readyz", http.StatusOK, "")
	metrics := fetch(t, hs.URL+"/metrics", http.StatusOK)
	for _, name := range []string{"tether_peers", "tether_calls_total", "tether_evictions_total", "storagenode_shares"} {
		if !strings.Contains(metrics, "\n"+name) {
			t.Errorf("/metrics has no %s", name)
		}
	}
	if v := metricValue(metrics, `tether_calls_total{direction="in"}`); v < 4 {
		t.Errorf(`tether_calls_total{direction="in"} = %v, want at least 4 (two puts, then list and get)`, v)
	}
	if v := metricValue(metrics, "storagenode_shares"); v != 3 {
		t.Errorf("storagenode_shares = %v, want 3", v)
	}

	// Node 2 leaves too: node 1 reaches none of the storage nodes it keeps,
	// so it is not ready (the client does not count: it is not kept).
	gone = servers[2].node.ID()
	if err := servers[2].close(ctx); err != nil {
		t.Fatal(err)
	}
	watches[1].waitFor(t, "node 2 to be evicted", func(evs []peer.Event) bool {
		for _, ev := range evs {
			if ev.Kind == peer.Disconnected && ev.ID == gone {
				return true
			}
		}
		return false
	})
	checkHealth(t, hs.URL+"/healthz", http.StatusOK, "")
	checkHealth(t, hs.URL+"/readyz", http.StatusServiceUnavailable, "no peer reachable")
}

func keys(st *store) int {
	st.mu.Lock()
	defer st.mu.Unlock()
	return len(st.shares)
}

func checkHealth(t *testing.T, url string, code int, reason string) {
	t.Helper()
	var body struct {
		Status  string
		Reasons []string
	}
	if err := json.Unmarshal([]byte(fetch(t, url, code)), &body); err != nil {
		t.Fatalf("%s: %v", url, err)
	}
	if (code == http.StatusOK) != (body.Status == "ok") || !strings.Contains(strings.Join(body.Reasons, "; "), reason) {
		t.Fatalf("%s: %+v", url, body)
	}
}

func fetch(t *testing.T, url string, code int) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != code {
		t.Fatalf("%s: %s %s", url, resp.Status, b)
	}
	return string(b)
}

// metricValue is the value on the line of the exposition that starts with
// series, or -1.
func metricValue(exposition, series string) float64 {
	for line := range strings.Lines(exposition) {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err == nil {
				return f
			}
		}
	}
	return -1
}

// The share scheme: for every k <= n <= 6, every set of k shares rebuilds
// the file, and (for k > 1) some set of k-1 does not.
func TestAnyKOfN(t *testing.T) {
	for _, size := range []int{0, 1, 5, 1000} {
		data := randomBytes(t, size)
		for n := 1; n <= 6; n++ {
			for k := 1; k <= n; k++ {
				raw, err := split(data, k, n)
				if err != nil {
					t.Fatal(err)
				}
				shares := make([]*share, n)
				for j, b := range raw {
					if shares[j], err = parseShare(b); err != nil {
						t.Fatal(err)
					}
				}
				shortFails := false
				for set := range 1 << n {
					var pick []*share
					for j := range n {
						if set&(1<<j) != 0 {
							pick = append(pick, shares[j])
						}
					}
					switch len(pick) {
					case k:
						got, err := join(pick)
						if err != nil || !bytes.Equal(got, data) {
							t.Fatalf("size %d, k=%d n=%d, shares %b: %v", size, k, n, set, err)
						}
					case k - 1:
						if _, err := join(pick); err != nil {
							shortFails = true
						}
					}
				}
				if k > 1 && size >= n && !shortFails {
					t.Errorf("size %d, k=%d n=%d: every set of %d shares rebuilds the file", size, k, n, k-1)
				}
			}
		}
	}
}

// The command line: -h documents both modes, and mistakes are caught.
func TestFlags(t *testing.T) {
	var out bytes.Buffer
	if _, err := parseFlags([]string{"-h"}, &out); !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("-h: %v", err)
	}
	for _, want := range []string{"-put KEY", "-get KEY", "-listen", "-http", "-peers", "-stream-above"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("-h does not mention %s", want)
		}
	}
	c, err := parseFlags([]string{"-get", "x", "-k", "2", "-peers", "a:1, b:2,c:3"}, io.Discard)
	if err != nil || len(c.peers) != 3 || c.n != 3 || c.k != 2 {
		t.Fatalf("%+v %v", c, err)
	}
	if _, err := parseFlags([]string{"-put", "x", "-peers", "a:1"}, io.Discard); err == nil {
		t.Fatal("-put without -file accepted")
	}
}

// eventLog records a node's peer events and lets a test wait for a
// condition on them (re-checked at each event: no sleeps).
type eventLog struct {
	mu      sync.Mutex
	events  []peer.Event
	changed chan struct{}
}

func newEventLog() *eventLog { return &eventLog{changed: make(chan struct{})} }

func (l *eventLog) add(ev peer.Event) {
	l.mu.Lock()
	l.events = append(l.events, ev)
	close(l.changed)
	l.changed = make(chan struct{})
	l.mu.Unlock()
}

func (l *eventLog) waitFor(t *testing.T, what string, cond func([]peer.Event) bool) {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		l.mu.Lock()
		ok := cond(l.events)
		ch := l.changed
		l.mu.Unlock()
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

// syncBuffer is a bytes.Buffer for several goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func (s *syncBuffer) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.b.Reset()
}

// logTo collects the nodes' logs, and shows them when the test fails or
// runs verbosely.
func logTo(t *testing.T) io.Writer {
	var b syncBuffer
	t.Cleanup(func() {
		if t.Failed() || testing.Verbose() {
			t.Logf("logs:\n%s", b.String())
		}
	})
	return &b
}

func randomBytes(t *testing.T, n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}
