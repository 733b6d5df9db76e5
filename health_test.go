package tether_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/internal/tetheropts"
	"github.com/tetherrpc/tether/internal/ttest"
	"github.com/tetherrpc/tether/internal/ttest/ttnode"
	"github.com/tetherrpc/tether/liveness"
	"github.com/tetherrpc/tether/peer"
	"github.com/tetherrpc/tether/rpc"
)

type health struct {
	code    int
	Status  string   `json:"status"`
	Reasons []string `json:"reasons"`
}

func probe(t *testing.T, url string) health {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var h health
	if err := json.NewDecoder(resp.Body).Decode(&h); err != nil {
		t.Fatal(err)
	}
	h.code = resp.StatusCode
	return h
}

// waitHealth polls url until its status code is want, and returns it.
func waitHealth(t *testing.T, url string, want int, within time.Duration) (health, time.Duration) {
	t.Helper()
	t0 := time.Now()
	for {
		h := probe(t, url)
		if h.code == want {
			return h, time.Since(t0)
		}
		if time.Since(t0) > within {
			t.Fatalf("%s: %d %+v after %v, want %d", url, h.code, h, within, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A handler stuck past WithHangAfter, ignoring its context, turns /healthz
// to 503 within the bound plus a second, naming it; it recovers within a
// second of the handler's return.
func TestStuckHandlerMakesNodeUnhealthy(t *testing.T) {
	const hang = time.Second
	b := node(t, tether.WithHangAfter(hang))
	release := make(chan struct{})
	b.Handle("storage.get", rpc.Func(func(ctx context.Context, _ []byte) ([]byte, error) {
		<-release // ignores ctx
		return nil, nil
	}))
	srv := httptest.NewServer(b.Health())
	defer srv.Close()
	if h := probe(t, srv.URL+"/healthz"); h.code != 200 || h.Status != "ok" {
		t.Fatalf("healthy node: %+v", h)
	}
	a := node(t)
	p := dial(t, a, b)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	started := time.Now()
	go p.Call(ctx, "storage.get", nil, nil) // the caller gives up; the handler does not
	var h health
	for { // the stall may be found a sample before the stuck call itself
		h = probe(t, srv.URL+"/healthz")
		if h.code == 503 && strings.Contains(strings.Join(h.Reasons, ";"), `"storage.get"`) {
			break
		}
		if time.Since(started) > hang+2*time.Second {
			t.Fatalf("still %+v", h)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if took := time.Since(started); took > hang+time.Second+200*time.Millisecond {
		t.Errorf("the stuck handler was reported after %v, floor %v", took, hang+time.Second)
	}
	if r := strings.Join(h.Reasons, ";"); !strings.Contains(r, `"storage.get"`) || !strings.Contains(r, string(a.ID())) {
		t.Fatalf("reasons %q", h.Reasons)
	}
	if r := probe(t, srv.URL+"/readyz"); r.code != 503 {
		t.Fatalf("readyz while unhealthy: %+v", r)
	}
	close(release)
	if _, took := waitHealth(t, srv.URL+"/healthz", 200, 2*time.Second); took > time.Second {
		t.Errorf("healthy again after %v, floor 1s", took)
	}
}

// A goroutine leak past the configured bound makes the node unhealthy; it
// recovers when they go.
func TestGoroutineLeakMakesNodeUnhealthy(t *testing.T) {
	limit := runtime.NumGoroutine() + 200
	b := node(t, tether.WithActions(tether.Actions{Watchdog: liveness.WatchdogConfig{MaxGoroutines: limit, SampleEvery: 50 * time.Millisecond}}))
	srv := httptest.NewServer(b.Health())
	defer srv.Close()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 400 {
		wg.Add(1)
		go func() { defer wg.Done(); <-stop }()
	}
	h, _ := waitHealth(t, srv.URL+"/healthz", 503, 2*time.Second)
	if len(h.Reasons) == 0 || !strings.Contains(strings.Join(h.Reasons, ";"), "goroutines") {
		t.Fatalf("reasons %q", h.Reasons)
	}
	close(stop)
	wg.Wait()
	waitHealth(t, srv.URL+"/healthz", 200, 2*time.Second)
}

// A graceful drain with 1,000 calls in flight: none lost, new calls are
// refused with CodeUnavailable, /readyz says draining, and the peer evicts
// us within 100 ms of our goodbye.
func TestDrainLosesNoCall(t *testing.T) {
	const n = 1000
	a := node(t)
	b := node(t)
	var running atomic.Int64
	release := make(chan struct{})
	b.Handle("work", rpc.Func(func(ctx context.Context, req []byte) ([]byte, error) {
		running.Add(1)
		select {
		case <-release:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		return req, nil
	}))
	srv := httptest.NewServer(b.Health())
	defer srv.Close()
	ev := ttnode.Subscribe(t, a.Peers())
	p := dial(t, a, b)
	var wg sync.WaitGroup
	var failed atomic.Int64
	var lastOK atomic.Int64
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := p.Call(context.Background(), "work", []byte("x"), nil); err != nil {
				failed.Add(1)
			}
			lastOK.Store(time.Now().UnixNano())
		}()
	}
	waitFor(t, func() bool { return running.Load() == n }, "calls to run")
	drained := make(chan error, 1)
	go func() { drained <- b.Drain(context.Background()) }()
	waitFor(t, func() bool { return probe(t, srv.URL+"/readyz").code == 503 }, "readyz to say draining")
	if r := probe(t, srv.URL+"/readyz"); !strings.Contains(strings.Join(r.Reasons, ";"), "draining") {
		t.Fatalf("readyz %+v", r)
	}
	var re *rpc.RemoteError
	if err := p.Call(context.Background(), "work", nil, nil); !errors.As(err, &re) || re.Code != rpc.CodeUnavailable {
		t.Fatalf("a new call while draining: %v", err)
	}
	close(release)
	wg.Wait()
	if err := <-drained; err != nil {
		t.Fatal(err)
	}
	if failed.Load() != 0 {
		t.Fatalf("%d calls lost in the drain", failed.Load())
	}
	d := ev.Next(t, peer.Disconnected, 5*time.Second)
	lag := d.Time.Sub(time.Unix(0, lastOK.Load()))
	t.Logf("peer evicted the drained node %v after its last call returned (cause %v)", lag, d.Cause)
	if !errors.Is(d.Cause, rpc.ErrPeerLeft) || lag > ttest.Scaled(100*time.Millisecond) {
		t.Fatalf("eviction %v after the drain, cause %v", lag, d.Cause)
	}
}

// MaxCalls: after serving that many calls the node drains and exits with
// ExitRestart, logging it at Warn as an incident.
func TestMaxCallsRestart(t *testing.T) {
	dir := t.TempDir()
	codes := make(chan int, 1)
	zl, logs := observed()
	act := tether.Actions{MaxCalls: 5}
	tetheropts.SetExit(&act.Internal, func(c int) { codes <- c })
	b := node(t, tether.WithLogger(zl), tether.WithIncidentDir(dir), tether.WithActions(act))
	b.Handle("echo", rpc.Func(echo))
	a := node(t)
	p := dial(t, a, b)
	for range 5 {
		if err := p.Call(context.Background(), "echo", nil, nil); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case c := <-codes:
		if c != tether.ExitRestart {
			t.Fatalf("exit code %d", c)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no restart")
	}
	if logs.FilterMessage("node restarting: draining, then exiting").Len() != 1 {
		t.Fatalf("restart not logged: %v", logs.All())
	}
	files, _ := filepath.Glob(filepath.Join(dir, "incident-*.json"))
	if len(files) != 1 {
		t.Fatalf("%d incident files", len(files))
	}
	data, _ := os.ReadFile(files[0])
	if !strings.Contains(string(data), "node restarting") {
		t.Fatal("the incident does not hold the action")
	}
}
