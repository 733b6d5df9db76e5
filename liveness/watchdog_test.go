package liveness

import (
	"context"
	"fmt"
	"runtime"
	"runtime/metrics"
	"strings"
	"sync"
	"testing"
	"time"
)

// wdHarness runs a watchdog on the fake clock (monitor_test.go): step
// advances time by SampleEvery and waits until that sample is done. The
// runtime's numbers are real.
type wdHarness struct {
	t       *testing.T
	w       *Watchdog
	clk     *fakeClock
	sampled chan struct{}
}

func newWD(t *testing.T, cfg WatchdogConfig) *wdHarness {
	t.Helper()
	h := &wdHarness{t: t, clk: &fakeClock{now: t0}, sampled: make(chan struct{}, 1)}
	cfg.Clock = h.clk
	w, err := newWatchdog(cfg, func() {
		select {
		case h.sampled <- struct{}{}:
		default:
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	h.w = w
	t.Cleanup(w.Close)
	return h
}

// step runs n samples.
func (h *wdHarness) step(n int) {
	h.t.Helper()
	for range n {
		h.clk.Advance(h.w.cfg.SampleEvery)
		select {
		case <-h.sampled:
		case <-time.After(10 * time.Second):
			h.t.Fatal("no sample")
		}
	}
}

// kinds lists the kinds of the current findings.
func kinds(fs []Finding) map[FindingKind]int {
	m := make(map[FindingKind]int)
	for _, f := range fs {
		m[f.Kind]++
	}
	return m
}

func find(fs []Finding, k FindingKind) (Finding, bool) {
	for _, f := range fs {
		if f.Kind == k {
			return f, true
		}
	}
	return Finding{}, false
}

func TestWatchdogConfigValidate(t *testing.T) {
	if err := (WatchdogConfig{}).Validate(); err != nil {
		t.Fatalf("zero config: %v", err)
	}
	d := WatchdogConfig{}.withDefaults()
	if d.HangAfter != 30*time.Second || d.SampleEvery != time.Second {
		t.Fatalf("defaults %+v", d)
	}
	if d := (WatchdogConfig{HangAfter: 200 * time.Millisecond}).withDefaults(); d.SampleEvery != 200*time.Millisecond {
		t.Fatalf("SampleEvery defaults above a short HangAfter: %v", d.SampleEvery)
	}
	for _, c := range []WatchdogConfig{
		{HangAfter: -1},
		{MaxGoroutines: -1},
		{Sustain: -time.Second},
		{HangAfter: time.Second, SampleEvery: 2 * time.Second},
		{SampleEvery: time.Second, LeakWindow: 3 * time.Second},
	} {
		if err := c.Validate(); err == nil {
			t.Errorf("%+v: no error", c)
		}
		if _, err := NewWatchdog(c); err == nil {
			t.Errorf("%+v: NewWatchdog accepted it", c)
		}
	}
}

// A handler that ignores its context and never returns is found after
// HangAfter, named by method, peer and running time; its End makes the
// watchdog healthy at once, without waiting for a sample.
func TestWatchdogStuckCall(t *testing.T) {
	h := newWD(t, WatchdogConfig{HangAfter: 3 * time.Second, SampleEvery: time.Second})
	w := h.w

	ctx, cancel := context.WithTimeout(context.Background(), time.Millisecond)
	defer cancel()
	release, began, done := make(chan struct{}), make(chan struct{}), make(chan struct{})
	go func() { // the handler: its context ends, it carries on
		defer close(done)
		c := w.Begin("storage.get", "abc")
		defer c.End()
		close(began)
		<-release
		_ = ctx
	}()
	<-began
	<-ctx.Done()

	h.step(3) // 3 s: not certainly over the bound yet
	if _, ok := find(w.Findings(), StuckCall); ok {
		t.Fatalf("stuck after 3 s: %v", w.Findings())
	}
	h.step(1)
	f, ok := find(w.Findings(), StuckCall)
	if !ok {
		t.Fatalf("not stuck after 4 s: %v", w.Findings())
	}
	want := `handler "storage.get" for peer abc running 4s (bound 3s)`
	if f.Method != "storage.get" || f.Peer != "abc" || f.For != 4*time.Second || f.Text != want {
		t.Fatalf("finding %+v, want text %s", f, want)
	}
	if ok, reasons := w.Healthy(); ok || !contains(reasons, want) {
		t.Fatalf("Healthy() = %v, %q", ok, reasons)
	}
	h.step(5) // still there, counted once
	if f, _ := find(w.Findings(), StuckCall); f.For != 9*time.Second {
		t.Fatalf("after 9 s: %+v", f)
	}

	close(release)
	<-done
	if ok, reasons := w.Healthy(); !ok {
		t.Fatalf("unhealthy right after End: %q", reasons)
	}
	h.step(1)
	if ok, reasons := w.Healthy(); !ok {
		t.Fatalf("unhealthy after the next sample: %q", reasons)
	}
	st := w.Stats()
	if st.Found[StuckCall] != 1 || st.Begun != 1 || st.Ended != 1 || st.InFlight != 0 {
		t.Fatalf("stats %+v", st)
	}
}

func contains(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

// Calls in flight and none finished for HangAfter: a stall, even while
// no single call is stuck yet. A finished call clears it at once.
func TestWatchdogDispatchStall(t *testing.T) {
	h := newWD(t, WatchdogConfig{HangAfter: 3 * time.Second, SampleEvery: time.Second})
	w := h.w
	w.Begin("warmup", "p").End()
	h.step(1) // progress at 1 s
	a, b := w.Begin("share.read", "p1"), w.Begin("share.read", "p2")
	h.step(2)
	if fs := w.Findings(); len(fs) != 0 {
		t.Fatalf("findings at 3 s: %v", fs)
	}
	h.step(1) // 4 s: nothing finished since 1 s
	fs := w.Findings()
	if k := kinds(fs); len(k) != 1 || k[DispatchStall] != 1 {
		t.Fatalf("want one stall, got %v", fs)
	}
	f := fs[0]
	want := "dispatch stalled: no handler call finished for 3s while 2 in flight (bound 3s)"
	if f.Value != 2 || f.For != 3*time.Second || f.Text != want {
		t.Fatalf("finding %+v", f)
	}
	a.End()
	if ok, reasons := w.Healthy(); !ok {
		t.Fatalf("progress did not clear the stall: %q", reasons)
	}
	h.step(1)
	if _, ok := find(w.Findings(), DispatchStall); ok {
		t.Fatalf("stall after progress: %v", w.Findings())
	}
	b.End()
	h.step(1)
	if ok, reasons := w.Healthy(); !ok {
		t.Fatal(reasons)
	}
	if n := w.Stats().Found[DispatchStall]; n != 1 {
		t.Fatalf("stalls counted %d", n)
	}
}

// Beyond the oldest few, stuck calls are summed up; each is counted once.
func TestWatchdogManyStuck(t *testing.T) {
	h := newWD(t, WatchdogConfig{HangAfter: 2 * time.Second, SampleEvery: time.Second})
	w := h.w
	var calls []Call
	for i := range 20 {
		calls = append(calls, w.Begin("m", fmt.Sprint("p", i)))
		if i == 9 {
			h.step(1) // the second ten are younger
		}
	}
	h.step(2) // 3 s: the first ten are stuck
	fs := w.Findings()
	if sum, _ := find(fs[maxListed:], StuckCall); kinds(fs)[StuckCall] != maxListed+1 || sum.Value != 2 {
		t.Fatalf("want %d listed and a summary of 2: %v", maxListed, fs)
	}
	h.step(1) // 4 s: all twenty are
	fs = w.Findings()
	var listed []Finding
	for _, f := range fs {
		if f.Kind == StuckCall && f.Method != "" {
			listed = append(listed, f)
		}
	}
	sum, _ := find(fs[maxListed:], StuckCall)
	if len(listed) != maxListed || listed[0].For != 4*time.Second || sum.Value != 12 || sum.Text != "12 more handler calls running over 2s" {
		t.Fatalf("findings %v", fs)
	}
	h.step(2)
	if n := w.Stats().Found[StuckCall]; n != 20 {
		t.Fatalf("stuck calls counted %d, want 20", n)
	}
	for _, c := range calls {
		c.End()
	}
	// The summary lasts until the next sample; the listed calls go at once.
	if fs := w.Findings(); len(fs) != 1 || fs[0].Value != 12 {
		t.Fatalf("after End: %v", fs)
	}
	h.step(1)
	if fs := w.Findings(); len(fs) != 0 {
		t.Fatalf("after a sample: %v", fs)
	}
}

// Goroutines started on purpose, steadily, sample after sample: the trend
// rule and MaxGoroutines both report it; released, both clear.
func TestWatchdogGoroutineLeak(t *testing.T) {
	base := runtime.NumGoroutine() + 1 // + the sampler
	h := newWD(t, WatchdogConfig{SampleEvery: time.Second, LeakWindow: 8 * time.Second, MaxGoroutines: base + 450})
	w := h.w
	release := make(chan struct{})
	var wg sync.WaitGroup
	for i := range 9 { // 9 samples fill the window
		for range 100 {
			wg.Go(func() { <-release })
		}
		h.step(1)
		_, over := find(w.Findings(), TooManyGoroutines)
		if over != (i >= 4) {
			t.Fatalf("sample %d: %d goroutines, findings %v", i+1, w.Stats().Goroutines, w.Findings())
		}
	}
	fs := w.Findings()
	g, ok := find(fs, GoroutineGrowth)
	if !ok || g.Value < 550 || g.For != 8*time.Second || !strings.Contains(g.Text, "goroutines rising steadily: their floor rose from ") {
		t.Fatalf("no growth found: %v", fs)
	}
	m, _ := find(fs, TooManyGoroutines)
	if m.Value < uint64(base+800) || m.Limit != uint64(base+450) || m.Text != fmt.Sprintf("%d goroutines, over the bound of %d", m.Value, m.Limit) {
		t.Fatalf("limit finding %+v", m)
	}
	t.Log(g.Text, "; ", m.Text)

	close(release)
	wg.Wait()
	for deadline := time.Now().Add(5 * time.Second); runtime.NumGoroutine() > base+10 && time.Now().Before(deadline); {
		runtime.Gosched() // the released goroutines are exiting
	}
	h.step(1)
	if fs := w.Findings(); len(fs) != 0 {
		t.Fatalf("not cleared: %v", fs)
	}
	st := w.Stats()
	if st.Found[GoroutineGrowth] != 1 || st.Found[TooManyGoroutines] != 1 {
		t.Fatalf("counted %v", st.Found)
	}
}

func liveHeap() uint64 {
	s := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

// Memory allocated and kept on purpose, sample after sample, trips MaxHeap
// and the trend rule; freed (and collected), both clear.
func TestWatchdogHeapLeak(t *testing.T) {
	runtime.GC()
	base := liveHeap()
	const step = 8 << 20
	h := newWD(t, WatchdogConfig{SampleEvery: time.Second, LeakWindow: 8 * time.Second, MaxHeap: base + 5*step - step/2})
	w := h.w
	var keep [][]byte
	for i := range 9 {
		keep = append(keep, make([]byte, step))
		runtime.GC() // the live heap is measured by collections
		h.step(1)
		_, over := find(w.Findings(), HeapOverLimit)
		if over != (i >= 4) {
			t.Fatalf("sample %d: heap %s, findings %v", i+1, bytesText(w.Stats().Heap), w.Findings())
		}
	}
	fs := w.Findings()
	g, ok := find(fs, HeapGrowth)
	if !ok || g.Value < 5*step || !strings.Contains(g.Text, "live heap rising steadily: its floor rose from ") {
		t.Fatalf("no growth found: %v", fs)
	}
	m, _ := find(fs, HeapOverLimit)
	if m.Value < 8*step || !strings.Contains(m.Text, "over the bound of "+bytesText(base+5*step-step/2)) {
		t.Fatalf("limit finding %+v", m)
	}
	t.Log(g.Text, "; ", m.Text)

	runtime.KeepAlive(keep)
	keep = nil
	runtime.GC()
	h.step(1)
	if fs := w.Findings(); len(fs) != 0 {
		t.Fatalf("not cleared: %v", fs)
	}
	st := w.Stats()
	if st.Found[HeapGrowth] != 1 || st.Found[HeapOverLimit] != 1 {
		t.Fatalf("counted %v", st.Found)
	}
}

func TestWatchdogRSS(t *testing.T) {
	if runtime.GOOS != "linux" {
		if _, err := NewWatchdog(WatchdogConfig{MaxRSS: 1 << 20}); err == nil {
			t.Fatal("MaxRSS accepted without /proc/self/statm")
		}
		t.Skip("resident set read on Linux only")
	}
	h := newWD(t, WatchdogConfig{MaxRSS: 1 << 20})
	h.step(1)
	f, ok := find(h.w.Findings(), RSSOverLimit)
	if !ok || f.Value <= 1<<20 || f.Text != fmt.Sprintf("resident set %s, over the bound of 1.0 MiB", bytesText(f.Value)) {
		t.Fatalf("findings %v", h.w.Findings())
	}
	if st := h.w.Stats(); st.RSS != f.Value || st.Goroutines == 0 || st.Heap == 0 {
		t.Fatalf("stats %+v", st)
	}
}

// OnUnhealthy: once per episode, only once the episode has lasted Sustain.
func TestWatchdogOnUnhealthy(t *testing.T) {
	hooks := make(chan []Finding, 4)
	h := newWD(t, WatchdogConfig{
		HangAfter: 2 * time.Second, SampleEvery: time.Second, Sustain: 3 * time.Second,
		OnUnhealthy: func(fs []Finding) { hooks <- fs },
	})
	w := h.w
	for episode := 1; episode <= 2; episode++ {
		c := w.Begin("blob.put", "q")
		h.step(2) // stalled from here (no call finished for 2 s)
		if len(w.Findings()) == 0 {
			t.Fatal("no finding")
		}
		h.step(2) // unhealthy for 2 s < Sustain
		if n := w.Stats().Unhealthy; n != uint64(episode-1) {
			t.Fatalf("episode %d: OnUnhealthy before Sustain (%d calls)", episode, n)
		}
		h.step(1) // 3 s
		select {
		case fs := <-hooks:
			if _, ok := find(fs, StuckCall); !ok {
				t.Fatalf("hook got %v", fs)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("OnUnhealthy not called")
		}
		h.step(5)
		if n := w.Stats().Unhealthy; n != uint64(episode) {
			t.Fatalf("episode %d: OnUnhealthy called %d times", episode, n)
		}
		c.End()
		h.step(1) // healthy: the episode ends
	}
	select {
	case fs := <-hooks:
		t.Fatalf("a third call: %v", fs)
	default:
	}
}

// Close stops the sampler (goleak, in TestMain, checks it is gone); the
// call path keeps working.
func TestWatchdogClose(t *testing.T) {
	h := newWD(t, WatchdogConfig{})
	h.step(2)
	h.w.Close()
	h.w.Close()
	h.clk.Advance(time.Hour)
	select {
	case <-h.sampled:
		t.Fatal("sampled after Close")
	case <-time.After(20 * time.Millisecond):
	}
	if n := h.w.Stats().Samples; n != 2 {
		t.Fatalf("%d samples", n)
	}
	h.w.Begin("m", "p").End()
	if h.w.InFlight() != 0 {
		t.Fatal("in flight")
	}
}

func TestWatchdogBeginEndAllocs(t *testing.T) {
	w, err := NewWatchdog(WatchdogConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if n := testing.AllocsPerRun(1000, func() { w.Begin("storage.get", "abc").End() }); n != 0 {
		t.Fatalf("%v allocations per Begin+End", n)
	}
	var none *Watchdog
	none.Begin("m", "p").End() // a node without a watchdog
}

// The table grows to hold every call in flight, and counts stay exact; a
// second End is harmless.
func TestWatchdogManyCalls(t *testing.T) {
	h := newWD(t, WatchdogConfig{})
	w := h.w
	calls := make([]Call, 10000)
	for i := range calls {
		calls[i] = w.Begin("m", "p")
	}
	if n, st := w.InFlight(), w.Stats(); n != 10000 || st.Slots < 10000 || st.Begun != 10000 {
		t.Fatalf("in flight %d, stats %+v", n, st)
	}
	for _, c := range calls {
		c.End()
		c.End()
	}
	if st := w.Stats(); st.InFlight != 0 || st.Ended != 10000 {
		t.Fatalf("stats %+v", st)
	}
	t.Logf("%d slots for 10,000 calls", w.Stats().Slots)
}

// Begin and End on several goroutines while the sampler scans and pins
// stuck calls: the race detector checks the slot protocol, and the counts
// come out exact.
func TestWatchdogConcurrent(t *testing.T) {
	h := newWD(t, WatchdogConfig{HangAfter: time.Second, SampleEvery: time.Second})
	w := h.w
	stop := make(chan struct{})
	var wg, ready sync.WaitGroup
	for _, peer := range []string{"p1", "p2"} {
		ready.Add(1)
		wg.Go(func() {
			var open [32]Call // each call stays open for 32 iterations
			for i := 0; ; i++ {
				if i == 100 {
					ready.Done()
				}
				select {
				case <-stop:
					for _, c := range open {
						c.End()
					}
					return
				default:
				}
				open[i%32].End()
				open[i%32] = w.Begin("m", peer)
				if i%64 == 0 {
					runtime.Gosched()
				}
			}
		})
	}
	ready.Wait()
	for range 100 {
		h.step(1)
		w.Findings()
	}
	close(stop)
	wg.Wait()
	st := w.Stats()
	if st.InFlight != 0 || st.Begun != st.Ended || st.Begun == 0 {
		t.Fatalf("stats %+v", st)
	}
	if w.Stats().Found[StuckCall] == 0 {
		t.Log("no call was ever stuck: the pinning path was not exercised")
	}
}

// End while the sampler holds the slot pinned: End returns at once, the
// call counts as ended, no Begin takes the slot until the sampler lets go.
func TestWatchdogEndWhilePinned(t *testing.T) {
	h := newWD(t, WatchdogConfig{})
	w := h.w
	c := w.Begin("m", "p")
	if !c.pin() {
		t.Fatal("cannot pin a running call")
	}
	c.End()
	if c.running() || w.InFlight() != 0 {
		t.Fatal("still running after End")
	}
	if c.pin() {
		t.Fatal("pinned an ended call")
	}
	for range 1000 {
		if d := w.Begin("m", "p"); d.s == c.s {
			t.Fatal("a pinned slot was reused")
		} else {
			d.End()
		}
	}
	c.unpin()
	if st := c.s.state.Load(); st&phaseMask != phaseFree {
		t.Fatalf("slot not freed: phase %d", st&phaseMask)
	}
	if _, _, ok := c.describe(); ok {
		t.Fatal("described an ended call")
	}
	c.End() // again: harmless
	if st := w.Stats(); st.Begun != 1001 || st.Ended != 1001 {
		t.Fatalf("stats %+v", st)
	}
}

// The trend rule: floors, not peaks.
func TestTrendRule(t *testing.T) {
	for _, c := range []struct {
		vals []uint64
		want bool
	}{
		{[]uint64{100, 120, 140, 160, 180, 200, 220, 240, 260}, true},           // steady
		{[]uint64{100, 900, 100, 900, 100, 900, 100, 900, 100}, false},          // bursts
		{[]uint64{100, 100, 100, 100, 100, 100, 100, 100, 400}, false},          // one step
		{[]uint64{1000, 1010, 1020, 1030, 1040, 1050, 1060, 1070, 1080}, false}, // under the thresholds
		{[]uint64{100, 300, 120, 320, 140, 340, 160, 360, 200}, false},          // rise of 60 < 64
		{[]uint64{100, 300, 140, 320, 180, 340, 220, 360, 260}, true},           // noisy, but the floor rises
	} {
		var r trend
		r.init(len(c.vals))
		for i, v := range c.vals {
			if full := r.add(v); full != (i == len(c.vals)-1) {
				t.Fatalf("full at %d", i)
			}
		}
		if _, _, got := r.growing(leakMinGoroutines); got != c.want {
			t.Errorf("%v: growing %v", c.vals, got)
		}
	}
}

func TestWatchdogText(t *testing.T) {
	for n, want := range map[uint64]string{100: "100 B", 1536: "1.5 KiB", 64 << 20: "64.0 MiB", 3 << 30: "3.0 GiB"} {
		if got := bytesText(n); got != want {
			t.Errorf("bytesText(%d) = %q", n, got)
		}
	}
	if n, ok := parseStatm([]byte("765 439 412 5 0 123 0\n"), 4096); !ok || n != 439*4096 {
		t.Fatalf("parseStatm: %d %v", n, ok)
	}
	if _, ok := parseStatm([]byte("765"), 4096); ok {
		t.Fatal("parseStatm accepted a short line")
	}
	for k := StuckCall; k < numKinds; k++ {
		if strings.HasPrefix(k.String(), "FindingKind") {
			t.Errorf("kind %d has no name", k)
		}
	}
}
