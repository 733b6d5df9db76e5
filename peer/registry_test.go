package peer

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/tetherrpc/tether/internal/ttest"
	"github.com/tetherrpc/tether/liveness"
	"github.com/tetherrpc/tether/rpc"
)

// observed returns a logger that records what it is given at Info and
// above in logs, and tells summary each time it writes a summary line.
func observed() (log *zap.Logger, logs *observer.ObservedLogs, summary <-chan struct{}) {
	core, logs := observer.New(zapcore.InfoLevel)
	sig := make(chan struct{}, 1)
	hook := zap.Hooks(func(e zapcore.Entry) error {
		if e.Message == "peers evicted" { // (hooks run after the observer has it)
			select {
			case sig <- struct{}{}:
			default:
			}
		}
		return nil
	})
	return zap.New(core, hook), logs, sig
}

// warnLines is the entries at Warn and above.
func warnLines(logs *observer.ObservedLogs) []observer.LoggedEntry {
	return logs.Filter(func(e observer.LoggedEntry) bool { return e.Level >= zapcore.WarnLevel }).All()
}

// checkIndex checks that the registry's index for Sample and Dial holds
// exactly its references.
func checkIndex(t *testing.T, r *Registry) {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.live) != len(r.peers) || len(r.pos) != len(r.peers) {
		t.Fatalf("index: %d live, %d positions, %d peers", len(r.live), len(r.pos), len(r.peers))
	}
	for i, p := range r.live {
		if r.peers[p.id] != p || r.pos[p] != i {
			t.Fatalf("index: live[%d] = %v, not in peers at its position", i, p)
		}
	}
	for addr, p := range r.dialed {
		if r.peers[p.id] != p || !p.dialed || p.addr != addr {
			t.Fatalf("index: dialed[%s] = %v", addr, p)
		}
	}
}

// A fifth of the registry's peers evicted at once: every eviction is told
// to subscribers and counted, no other peer is touched, and the log says
// it in a few lines (the first evictions, then one summary) with one
// incident mark.
func TestMassEviction(t *testing.T) {
	n := massPeers
	evict := n / 5
	log, logs, summary := observed()
	f := newFleet(t, Config{Logger: log}, n)
	if got := len(f.r.List()); got != n {
		t.Fatalf("%d peers registered, want %d", got, n)
	}
	var mu sync.Mutex
	told := map[ID]int{}
	all := make(chan struct{})
	f.r.Subscribe(func(ev Event) {
		if ev.Kind != Disconnected {
			return
		}
		mu.Lock()
		told[ev.ID]++
		if len(told) == evict && told[ev.ID] == 1 {
			close(all)
		}
		mu.Unlock()
	})
	victims := map[ID]bool{}
	for i := 0; i < n; i += 5 {
		victims[f.peers[i].ID()] = true
	}
	t0 := time.Now()
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := w * 5; i < n; i += 20 {
				cause := error(&liveness.Verdict{Kind: liveness.Silent, Silence: time.Second})
				if i%20 == 0 {
					cause = &liveness.Verdict{Kind: liveness.Unanswered, Silence: 1500 * time.Millisecond}
				}
				if !f.r.Evict(f.peers[i].ID(), cause) {
					t.Errorf("peer %d was not live", i)
				}
			}
		})
	}
	wg.Wait()
	select {
	case <-all:
	case <-time.After(2 * time.Minute):
		mu.Lock()
		t.Fatalf("%d of %d evictions told after 30 s", len(told), evict)
	}
	took := time.Since(t0)
	mu.Lock()
	for id, c := range told {
		if !victims[id] || c != 1 {
			t.Errorf("peer %s told %d times (a victim: %v)", id, c, victims[id])
		}
	}
	mu.Unlock()
	checkIndex(t, f.r)
	st := f.r.Stats()
	if st.Disconnects != uint64(evict) || st.Peers != n-evict || len(f.r.List()) != n-evict {
		t.Fatalf("stats after evicting %d of %d: %d disconnects, %d peers", evict, n, st.Disconnects, st.Peers)
	}
	// The last summary comes once the burst has been quiet for foldQuiet.
	folded := func() int {
		n := 0
		for _, e := range logs.FilterMessage("peers evicted").All() {
			n += int(e.ContextMap()["count"].(int64))
		}
		return n
	}
	timeout := time.After(foldQuiet + 10*time.Second)
	for folded() < evict-foldSingles {
		select {
		case <-summary:
		case <-timeout:
			t.Fatalf("summaries account for %d of %d folded evictions", folded(), evict-foldSingles)
		}
	}
	warns := warnLines(logs)
	singles, summaries, incidents, counted := 0, 0, 0, 0
	for _, e := range warns {
		m := e.ContextMap()
		switch e.Message {
		case "peer evicted":
			singles++
			counted++
		case "peers evicted":
			summaries++
			counted += int(m["count"].(int64))
			t.Logf("summary: %v", m)
		default:
			t.Errorf("unexpected line %s %v", e.Message, m)
		}
		if m[incidentKey] == true {
			incidents++
		}
	}
	t.Logf("%d of %d peers evicted and told in %v; %d lines at Warn: %d single, %d summary",
		evict, n, took.Round(time.Millisecond), len(warns), singles, summaries)
	if len(warns) > 10 || singles != foldSingles || summaries < 1 || counted != evict || incidents != 1 {
		t.Fatalf("%d lines at Warn (%d single, %d summaries) account for %d of %d evictions, %d incidents",
			len(warns), singles, summaries, counted, evict, incidents)
	}
}

// Evictions apart from any burst are logged as ever: one Warn line each,
// at once, with the peer, its cause and the calls it failed.
func TestSingleEvictionsLogOneLineEach(t *testing.T) {
	core, logs := observer.New(zapcore.InfoLevel)
	f := newFleet(t, Config{Logger: zap.New(core)}, foldSingles)
	gone := make(chan Event, foldSingles)
	f.r.Subscribe(func(ev Event) {
		if ev.Kind == Disconnected {
			gone <- ev
		}
	})
	for i, p := range f.peers {
		cause := fmt.Errorf("operator %d", i)
		f.r.Evict(p.ID(), cause)
		ev := <-gone
		if !errors.Is(ev.Cause, cause) {
			t.Fatalf("event %+v", ev)
		}
		warns := warnLines(logs)
		if len(warns) != i+1 {
			t.Fatalf("after %d evictions, %d lines at Warn: %v", i+1, len(warns), warns)
		}
		m := warns[i].ContextMap()
		if warns[i].Message != "peer evicted" || m["peer"] != string(p.ID()) || m["calls_cancelled"] != int64(0) {
			t.Fatalf("line %s %v", warns[i].Message, m)
		}
	}
}

// Sample finds healthy peers first, at random, and never a dead one.
func TestSample(t *testing.T) {
	f := newFleet(t, Config{}, 200)
	if s := f.r.Sample(0); s != nil {
		t.Fatalf("Sample(0) = %v", s)
	}
	// Half the peers suspect: a sample of 5 is of the healthy half.
	suspect := map[*Peer]bool{}
	for i, p := range f.peers {
		if i%2 == 0 {
			p.suspect.Store(true)
			suspect[p] = true
		}
	}
	counts := map[*Peer]int{}
	for range 200 {
		s := f.r.Sample(5)
		if len(s) != 5 {
			t.Fatalf("Sample(5) returned %d", len(s))
		}
		seen := map[*Peer]bool{}
		for _, p := range s {
			if suspect[p] || seen[p] {
				t.Fatalf("sample %v: suspect %v, twice %v", s, suspect[p], seen[p])
			}
			seen[p] = true
			counts[p]++
		}
	}
	if len(counts) < 80 { // 1000 draws of 100 healthy peers: all but a few
		t.Fatalf("200 samples of 5 touched only %d of 100 healthy peers", len(counts))
	}
	// Asking for more than there are healthy: the healthy, then the suspect.
	s := f.r.Sample(150)
	if len(s) != 150 {
		t.Fatalf("Sample(150) returned %d", len(s))
	}
	for i, p := range s {
		if suspect[p] != (i >= 100) {
			t.Fatalf("sample position %d suspect %v", i, suspect[p])
		}
	}
	// Dead ones never come back, even when most are.
	for i, p := range f.peers {
		if i%10 != 0 {
			p.Evict(rpc.ErrClosed)
			<-p.Done()
		}
	}
	for _, p := range f.r.Sample(50) {
		if p.Err() != nil {
			t.Fatalf("a dead peer sampled: %v", p)
		}
	}
	if all := f.r.Sample(1000); len(all) > 20 {
		t.Fatalf("Sample(1000) of 20 live peers returned %d", len(all))
	}
}

// Dial returns the live reference it dialed to an address, found without
// a scan of the registry; once that reference dies, it dials again. A
// connection the peer dialed is not one this side dialed.
func TestDialReusesByAddress(t *testing.T) {
	dials := map[string]int{}
	r := registry(t, Config{Dial: func(ctx context.Context, addr string) (*rpc.Conn, error) {
		dials[addr]++
		ours, _ := conns(t, fmt.Sprintf("%s-%d", addr, dials[addr]), nil)
		return ours, nil
	}})
	ctx := context.Background()
	a1, err := r.Dial(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	if a2, _ := r.Dial(ctx, "a"); a2 != a1 || dials["a"] != 1 {
		t.Fatalf("second Dial: %v (first %v), %d dials", a2, a1, dials["a"])
	}
	b, _ := r.Dial(ctx, "b")
	if b == a1 || dials["b"] != 1 {
		t.Fatal("Dial of another address")
	}
	in, _ := conns(t, "c-peer", nil)
	if _, err := r.add(in, "c", false); err != nil {
		t.Fatal(err)
	}
	if c, _ := r.Dial(ctx, "c"); !c.Dialed() || dials["c"] != 1 {
		t.Fatalf("Dial reused a connection the peer dialed: %v", c)
	}
	a1.Evict(nil)
	<-a1.Done()
	a3, _ := r.Dial(ctx, "a")
	if a3 == a1 || a3.Err() != nil || dials["a"] != 2 {
		t.Fatalf("Dial after the eviction: %v, %d dials", a3, dials["a"])
	}
	checkIndex(t, r)
	if got := len(r.Sample(10)); got != 4 {
		t.Fatalf("Sample found %d of 4 live references (a, b, c both ways)", got)
	}
}

// A reference replaced by a newer connection to the same peer gives up its
// place in the index to the newer one, whichever side dialed.
func TestIndexFollowsReplacement(t *testing.T) {
	r := registry(t, Config{LocalID: "m"})
	gone := make(chan struct{}, 4)
	r.Subscribe(func(ev Event) {
		if ev.Kind == Disconnected {
			gone <- struct{}{}
		}
	})
	c1, _ := conns(t, "z", nil)
	c2, _ := conns(t, "z", nil)
	p1, _ := r.add(c1, "x", true)
	p2, _ := r.add(c2, "x", true)
	<-p1.Done()
	checkIndex(t, r)
	if s := r.Sample(5); len(s) != 1 || s[0] != p2 {
		t.Fatalf("Sample after a replacement: %v", s)
	}
	c3, _ := conns(t, "zz", nil)
	c4, _ := conns(t, "zz", nil)
	r.add(c3, "y", false)
	q, _ := r.add(c4, "y", true) // dialed by us, the smaller ID: it wins
	<-c3.Done()
	checkIndex(t, r)
	r.mu.Lock()
	d := r.dialed["y"]
	r.mu.Unlock()
	if d != q {
		t.Fatalf("the reference dialed to y: %v, want %v", d, q)
	}
	p2.Evict(nil)
	q.Evict(nil)
	for range 4 { // two retired, two evicted: each told once it is gone
		<-gone
	}
	checkIndex(t, r)
	if len(r.live) != 0 {
		t.Fatalf("%d left in the index", len(r.live))
	}
}

// mute is our end of a pipe that can be silenced: from then on nothing
// more is read from the peer and what we write vanishes, as across a
// silent partition.
type mute struct {
	net.Conn
	silent atomic.Bool
	gate   chan struct{}
	once   sync.Once
}

func (m *mute) Read(b []byte) (int, error) {
	if m.silent.Load() {
		<-m.gate
		return 0, net.ErrClosed
	}
	return m.Conn.Read(b)
}

func (m *mute) Write(b []byte) (int, error) {
	if m.silent.Load() {
		return len(b), nil
	}
	return m.Conn.Write(b)
}

func (m *mute) Close() error {
	m.once.Do(func() { close(m.gate) })
	return m.Conn.Close()
}

// A fifth of 10,000 peers silenced at once, in memory, with the default
// liveness (no kernel evidence over pipes: each is convicted as
// unanswered): all noticed within 2 s (plus the slack of a loaded
// machine), no other peer evicted, at most 10 lines at Warn. It probes
// 10,000 idle peers four times a second, so it runs only when
// TETHER_MASS_SILENCE is set (to 1, or to another number of peers), and
// not under the race detector.
func TestMassSilence(t *testing.T) {
	env := os.Getenv("TETHER_MASS_SILENCE")
	if env == "" || massPeers < 10_000 {
		t.Skip("set TETHER_MASS_SILENCE=1 (without -race) to silence 2,000 of 10,000 in-memory peers")
	}
	n := 10_000
	if v, err := strconv.Atoi(env); err == nil && v > 1 {
		n = v
	}
	log, logs, summary := observed()
	// The in-memory fleet has no kernel evidence: without the idle probe
	// budget every peer is probed at full rate, as this test wants.
	lan := liveness.LAN()
	lan.IdleProbeBudget = 0
	f := newFleetWrapped(t, Config{Logger: log, Liveness: lan}, n, func(c net.Conn) net.Conn {
		return &mute{Conn: c, gate: make(chan struct{})}
	})
	victims := map[ID]bool{}
	for i, p := range f.peers {
		if i%5 == 0 {
			victims[p.ID()] = true
		}
	}
	var gmu sync.Mutex
	goneAt := map[ID]time.Time{}
	all := make(chan struct{})
	found := 0
	f.r.Subscribe(func(ev Event) {
		if ev.Kind == Disconnected {
			gmu.Lock()
			goneAt[ev.ID] = ev.Time
			if victims[ev.ID] {
				if found++; found == len(victims) {
					close(all)
				}
			}
			gmu.Unlock()
		}
	})
	t0 := time.Now()
	for i, p := range f.peers {
		if i%5 == 0 {
			p.Conn().NetConn().(*mute).silent.Store(true)
		}
	}
	const floor, slack = 2 * time.Second, 3 * time.Second
	select {
	case <-all:
		select { // the summary, once the burst is quiet
		case <-summary:
		case <-time.After(foldQuiet + slack):
		}
	case <-time.After(floor + slack):
	}
	gmu.Lock()
	defer gmu.Unlock()
	var worst time.Duration
	others := 0
	for id, at := range goneAt {
		if victims[id] {
			worst = max(worst, at.Sub(t0))
		} else {
			others++
		}
	}
	warns := warnLines(logs)
	t.Logf("%d of %d silenced peers evicted, the last after %v; %d others evicted; %d lines at Warn; monitor %+v",
		found, len(victims), worst, others, len(warns), f.r.Monitor().Stats())
	if found != len(victims) || worst > floor+slack || others != 0 || len(warns) > 10 {
		t.Fatal("the floor does not hold")
	}
}

// waiters is how many Dials wait for the dial in flight to addr.
func waiters(r *Registry, addr string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	if d := r.dialing[addr]; d != nil {
		return d.waiters
	}
	return 0
}

// Concurrent Dials to an address share one dial: one connection, one
// reference for all. A caller whose context ends stops waiting with its
// context's error, and the dial goes on for the others.
func TestDialShared(t *testing.T) {
	const n = 50
	var dials atomic.Int32
	release := make(chan struct{})
	r := registry(t, Config{Dial: func(ctx context.Context, addr string) (*rpc.Conn, error) {
		dials.Add(1)
		select {
		case <-release:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		ours, _ := conns(t, "shared", nil)
		return ours, nil
	}})
	type result struct {
		p   *Peer
		err error
	}
	results := make(chan result, n)
	for range n {
		go func() {
			p, err := r.Dial(context.Background(), "s:1")
			results <- result{p, err}
		}()
	}
	ctx, cancel := context.WithCancel(context.Background())
	gaveUp := make(chan error, 1)
	go func() {
		_, err := r.Dial(ctx, "s:1")
		gaveUp <- err
	}()
	waitFor(t, func() bool { return waiters(r, "s:1") == n+1 }, "every Dial to wait for the one dial")
	cancel()
	if err := <-gaveUp; !errors.Is(err, context.Canceled) {
		t.Fatalf("Dial whose context ended: %v, want context.Canceled", err)
	}
	if got := waiters(r, "s:1"); got != n {
		t.Fatalf("%d Dials wait after one gave up, want %d", got, n)
	}
	close(release)
	var first *Peer
	for range n {
		res := <-results
		if res.err != nil {
			t.Fatal(res.err)
		}
		if first == nil {
			first = res.p
		}
		if res.p != first {
			t.Fatalf("Dials got different references: %v and %v", first, res.p)
		}
	}
	if d, c := dials.Load(), r.Stats().Connects; d != 1 || c != 1 {
		t.Fatalf("%d concurrent Dials made %d dials and %d connections, want 1 and 1", n, d, c)
	}
	if p, err := r.Dial(context.Background(), "s:1"); p != first || err != nil {
		t.Fatalf("a later Dial: %v, %v; want the live reference", p, err)
	}
	checkIndex(t, r)
}

// A dial all of whose callers have gone is cancelled, and the next Dial
// dials anew; Close ends a dial in flight, its callers told the registry
// closed.
func TestDialSharedCancelled(t *testing.T) {
	cancelled := make(chan struct{}, 4)
	var dials atomic.Int32
	r, err := New(Config{LocalID: "local", Liveness: liveness.Local(), Dial: func(ctx context.Context, addr string) (*rpc.Conn, error) {
		dials.Add(1)
		<-ctx.Done()
		cancelled <- struct{}{}
		return nil, ctx.Err()
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	errs := make(chan error, 2)
	ctx, cancel := context.WithCancel(context.Background())
	for range 2 {
		go func() {
			_, err := r.Dial(ctx, "gone:1")
			errs <- err
		}()
	}
	waitFor(t, func() bool { return waiters(r, "gone:1") == 2 }, "both Dials to wait")
	cancel()
	for range 2 {
		if err := <-errs; !errors.Is(err, context.Canceled) {
			t.Fatalf("Dial whose context ended: %v", err)
		}
	}
	if _, ok := ttest.Within(cancelled, 5*time.Second); !ok {
		t.Fatal("the dial went on after its last caller had gone")
	}

	go func() {
		_, err := r.Dial(context.Background(), "gone:1")
		errs <- err
	}()
	waitFor(t, func() bool { return waiters(r, "gone:1") == 1 && dials.Load() == 2 }, "a new Dial to dial anew")
	r.Close()
	if err, ok := ttest.Within(errs, 5*time.Second); !ok || !errors.Is(err, ErrRegistryClosed) {
		t.Fatalf("Dial in flight at Close: %v", err)
	}
}
