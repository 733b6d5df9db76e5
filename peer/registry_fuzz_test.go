package peer

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cenkalti/backoff/v4"

	"github.com/tetherrpc/tether/liveness"
	"github.com/tetherrpc/tether/rpc"
)

// FuzzRegistry drives a Registry's state machine with random sequences of
// events over real rpc connections (net.Pipe): references added by either
// side, duplicate connections to the same peer, evictions, the peer saying
// goodbye or vanishing, connections dead on arrival, Keep with dials that
// work, fail or return a dying connection, and Close. Remote IDs come from
// a small set on both sides of the local ID ("a" < "local" < "m" < "z"), so
// that both rules of duplicate resolution run. The invariants:
//
//   - Get and List show at most one reference per ID, each live; at a quiet
//     moment no two known references to one ID are alive at once;
//   - every reference told Connected is told Disconnected exactly once,
//     after its Connected, and only once it is dead; no reference is told
//     Disconnected without having been told Connected;
//   - once nothing happens, the registry settles: Stats().Connects and
//     Disconnects equal the events told, Connects-Disconnects == Peers ==
//     len(List()), and a kept address does not churn (no reconnection
//     without a loss);
//   - Close delivers the last events: after it returns, every Connected
//     reference has had its Disconnected, and Connects == Disconnects.
func FuzzRegistry(f *testing.F) {
	for _, seed := range registrySeeds {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, prog []byte) {
		if len(prog) > 48 {
			prog = prog[:48]
		}
		rig := newFzRig(t)
		defer rig.cleanup()
		rig.run(prog)
		rig.finish()
		if v := rig.violationList(); len(v) > 0 {
			t.Fatalf("program %s:\n%s", describeProg(prog), strings.Join(v, "\n"))
		}
	})
}

// registrySeeds name scenarios (also committed under testdata/fuzz).
var registrySeeds = [][]byte{
	{0, 0, 8, 3, 8},                      // add a twice (same dialer), evict
	{0, 1, 10, 11, 8, 4, 14, 8},          // cross dials to a and z, goodbyes
	{6, 39, 3, 39, 8},                    // keep a; evict; reconnect
	{67, 6, 39, 39, 7, 39, 8},            // keep a with dials dead on arrival, then fine
	{2, 12, 22, 8},                       // dead on arrival, each ID
	{0, 10, 20, 5, 15, 25, 8},            // hard aborts by the peers
	{6, 16, 26, 0, 11, 21, 3, 14, 8, 39}, // keep all, mixed adds
	{47, 16, 39, 39, 17, 39, 8},          // keep z, dials fail, then work
	{97, 6, 39, 39, 39, 7, 8},            // keep a, dials return dying conns
}

func describeProg(prog []byte) string {
	var ops []string
	for _, b := range prog {
		ops = append(ops, fzOpName(b))
	}
	return strings.Join(ops, " ")
}

func fzOpName(b byte) string {
	id := fzIDs[int(b/10)%len(fzIDs)]
	switch b % 10 {
	case 0:
		return "add-dialed(" + id + ")"
	case 1:
		return "add-accepted(" + id + ")"
	case 2:
		return "add-dead(" + id + ")"
	case 3:
		return "evict(" + id + ")"
	case 4:
		return "goodbye(" + id + ")"
	case 5:
		return "vanish(" + id + ")"
	case 6:
		return "keep-toggle(" + id + ")"
	case 7:
		return fmt.Sprintf("dial-mode(%s,%s)", id, fzModeNames[int(b/30)%len(fzModeNames)])
	case 8:
		return "check"
	default:
		return fmt.Sprintf("sleep(%dms)", b/10%4)
	}
}

var fzIDs = []string{"a", "z", "m"}

const (
	dialOK = iota
	dialFail
	dialDead  // the connection dies before Dial returns
	dialDying // the peer aborts it as Dial returns
	numDialModes
)

var fzModeNames = []string{"ok", "fail", "dead", "dying"}

type fzRig struct {
	t testing.TB
	r *Registry

	mu      sync.Mutex
	remotes map[string][]*rpc.Conn // by ID, newest last
	all     []*rpc.Conn            // every conn made, both sides, to close at the end
	keeps   map[string]func()
	modes   map[string]int
	losers  []*rpc.Conn // connections Add did not keep: retired

	evMu         sync.Mutex
	connected    map[*Peer]int
	disconnected map[*Peer]int
	order        []Event
	violations   []string
	closed       bool
}

func newFzRig(t testing.TB) *fzRig {
	rig := &fzRig{
		t:            t,
		remotes:      map[string][]*rpc.Conn{},
		keeps:        map[string]func(){},
		modes:        map[string]int{},
		connected:    map[*Peer]int{},
		disconnected: map[*Peer]int{},
	}
	lc := liveness.LAN()
	lc.HangAfter, lc.DeadAfter = time.Minute, time.Minute // liveness is not under test here
	r, err := New(Config{
		LocalID:    "local",
		Liveness:   lc,
		NewBackOff: func() backoff.BackOff { return backoff.NewConstantBackOff(2 * time.Millisecond) },
		Dial:       rig.dial,
	})
	if err != nil {
		t.Fatal(err)
	}
	rig.r = r
	r.Subscribe(rig.onEvent)
	return rig
}

func (rig *fzRig) violate(format string, args ...any) {
	rig.evMu.Lock()
	rig.violations = append(rig.violations, fmt.Sprintf(format, args...))
	rig.evMu.Unlock()
}

func (rig *fzRig) violationList() []string {
	rig.evMu.Lock()
	defer rig.evMu.Unlock()
	return append([]string(nil), rig.violations...)
}

func (rig *fzRig) onEvent(ev Event) {
	rig.evMu.Lock()
	defer rig.evMu.Unlock()
	rig.order = append(rig.order, ev)
	p := ev.Peer
	switch ev.Kind {
	case Connected:
		if rig.connected[p] > 0 {
			rig.violations = append(rig.violations, fmt.Sprintf("reference %p to %s told Connected twice", p, ev.ID))
		}
		if rig.disconnected[p] > 0 {
			rig.violations = append(rig.violations, fmt.Sprintf("reference %p to %s told Connected after its Disconnected", p, ev.ID))
		}
		rig.connected[p]++
	case Disconnected:
		if rig.connected[p] == 0 {
			rig.violations = append(rig.violations, fmt.Sprintf("reference %p to %s told Disconnected (cause %v) before, or without, Connected", p, ev.ID, ev.Cause))
		}
		if rig.disconnected[p] > 0 {
			rig.violations = append(rig.violations, fmt.Sprintf("reference %p to %s told Disconnected twice", p, ev.ID))
		}
		if p.Err() == nil {
			rig.violations = append(rig.violations, fmt.Sprintf("reference %p to %s told Disconnected while alive", p, ev.ID))
		}
		rig.disconnected[p]++
	}
}

// pair makes a connection to a remote with the given ID over net.Pipe; the
// local side is the dialer if dialed.
func (rig *fzRig) pair(ctx context.Context, id string, dialed bool) (local, remote *rpc.Conn, err error) {
	a, b := net.Pipe()
	mux := rpc.NewMux()
	mux.Handle("echo", rpc.Func(func(_ context.Context, req []byte) ([]byte, error) { return req, nil }))
	lcfg := &rpc.Config{ID: "local", HandshakeTimeout: 5 * time.Second}
	rcfg := &rpc.Config{ID: id, Mux: mux, HandshakeTimeout: 5 * time.Second}
	type res struct {
		c   *rpc.Conn
		err error
	}
	ch := make(chan res, 1)
	go func() {
		var c *rpc.Conn
		var err error
		if dialed {
			c, err = rpc.Server(ctx, b, rcfg)
		} else {
			c, err = rpc.Client(ctx, b, rcfg)
		}
		ch <- res{c, err}
	}()
	if dialed {
		local, err = rpc.Client(ctx, a, lcfg)
	} else {
		local, err = rpc.Server(ctx, a, lcfg)
	}
	r := <-ch
	if err != nil || r.err != nil {
		if local != nil {
			local.Abort(nil)
		}
		if r.c != nil {
			r.c.Abort(nil)
		}
		return nil, nil, fmt.Errorf("pair: %v / %v", err, r.err)
	}
	rig.mu.Lock()
	rig.remotes[id] = append(rig.remotes[id], r.c)
	rig.all = append(rig.all, local, r.c)
	rig.mu.Unlock()
	return local, r.c, nil
}

func (rig *fzRig) dial(ctx context.Context, addr string) (*rpc.Conn, error) {
	id, _, _ := strings.Cut(addr, ":")
	rig.mu.Lock()
	mode := rig.modes[id]
	closed := rig.closed
	rig.mu.Unlock()
	if closed {
		return nil, errors.New("fuzz rig closed")
	}
	switch mode {
	case dialFail:
		return nil, errors.New("connection refused")
	}
	local, remote, err := rig.pair(ctx, id, true)
	if err != nil {
		return nil, err
	}
	switch mode {
	case dialDead:
		remote.Abort(errors.New("crashed"))
		<-local.Done()
	case dialDying:
		remote.Abort(errors.New("crashed"))
	}
	return local, nil
}

func (rig *fzRig) newestRemote(id string) *rpc.Conn {
	rig.mu.Lock()
	defer rig.mu.Unlock()
	rs := rig.remotes[id]
	for i := len(rs) - 1; i >= 0; i-- {
		if rs[i].Err() == nil {
			return rs[i]
		}
	}
	return nil
}

func (rig *fzRig) run(prog []byte) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, b := range prog {
		id := fzIDs[int(b/10)%len(fzIDs)]
		switch b % 10 {
		case 0, 1:
			local, _, err := rig.pair(ctx, id, b%10 == 0)
			if err != nil {
				rig.violate("handshake over a pipe failed: %v", err)
				return
			}
			p, err := rig.r.add(local, id+":1", b%10 == 0)
			if err != nil {
				rig.violate("Add: %v", err)
				return
			}
			rig.checkAdd(p, local, id)
		case 2:
			local, remote, err := rig.pair(ctx, id, true)
			if err != nil {
				rig.violate("handshake over a pipe failed: %v", err)
				return
			}
			remote.Abort(errors.New("crashed"))
			<-local.Done()
			if _, err := rig.r.add(local, id+":1", true); err != nil {
				rig.violate("Add of a dead conn: %v", err)
			}
		case 3:
			rig.r.Evict(ID(id), nil)
		case 4:
			if c := rig.newestRemote(id); c != nil {
				c.Close()
			}
		case 5:
			if c := rig.newestRemote(id); c != nil {
				c.Abort(errors.New("vanished"))
			}
		case 6:
			rig.mu.Lock()
			stop := rig.keeps[id]
			delete(rig.keeps, id)
			rig.mu.Unlock()
			if stop != nil {
				stop()
			} else {
				stop = rig.r.Keep(id + ":1")
				rig.mu.Lock()
				rig.keeps[id] = stop
				rig.mu.Unlock()
			}
		case 7:
			rig.mu.Lock()
			rig.modes[id] = int(b/30) % numDialModes
			rig.mu.Unlock()
		case 8:
			rig.checkViews()
		default:
			time.Sleep(time.Duration(b/10%4) * time.Millisecond)
		}
	}
}

// checkAdd: Add returns a reference to the peer it was given; when it
// keeps an older reference instead, the new connection is retired: it
// must be dead once the registry settles (see settled).
func (rig *fzRig) checkAdd(p *Peer, local *rpc.Conn, id string) {
	if p.ID() != ID(id) {
		rig.violate("Add returned a reference to %s for a connection to %s", p.ID(), id)
	}
	if p.conn != local {
		rig.mu.Lock()
		rig.losers = append(rig.losers, local)
		rig.mu.Unlock()
	}
}

// checkViews checks Get and List against each other.
func (rig *fzRig) checkViews() {
	list := rig.r.List()
	seen := map[ID]*Peer{}
	for _, p := range list {
		if q := seen[p.ID()]; q != nil {
			rig.violate("List shows two references to %s: %p and %p", p.ID(), q, p)
		}
		seen[p.ID()] = p
	}
	for _, id := range fzIDs {
		p, ok := rig.r.Get(ID(id))
		if ok && (p == nil || p.ID() != ID(id)) {
			rig.violate("Get(%s) returned %v", id, p)
		}
	}
}

// liveKnown counts the references told Connected that are alive now, by ID.
func (rig *fzRig) liveKnown() map[ID][]*Peer {
	rig.evMu.Lock()
	defer rig.evMu.Unlock()
	out := map[ID][]*Peer{}
	for p := range rig.connected {
		if p.Err() == nil {
			out[p.ID()] = append(out[p.ID()], p)
		}
	}
	return out
}

// settled reports whether the registry is quiet: every dead reference
// told Connected has been told Disconnected, and the counters match.
func (rig *fzRig) settled() (bool, string) {
	rig.mu.Lock()
	for _, c := range rig.losers {
		if c.Err() == nil {
			rig.mu.Unlock()
			return false, fmt.Sprintf("a connection to %s that Add did not keep is still alive", c.RemoteID())
		}
	}
	rig.mu.Unlock()
	st := rig.r.Stats()
	rig.evMu.Lock()
	defer rig.evMu.Unlock()
	var nc, nd int
	for p, n := range rig.connected {
		nc += n
		if p.Err() != nil && rig.disconnected[p] == 0 {
			return false, fmt.Sprintf("dead reference %p to %s (%v) not yet told Disconnected", p, p.ID(), p.Err())
		}
	}
	for _, n := range rig.disconnected {
		nd += n
	}
	if uint64(nc) != st.Connects || uint64(nd) != st.Disconnects {
		return false, fmt.Sprintf("events told: %d connected, %d disconnected; Stats: %d connects, %d disconnects", nc, nd, st.Connects, st.Disconnects)
	}
	return true, ""
}

// waitSettled waits for the registry to be quiet for a little while.
func (rig *fzRig) waitSettled(what string) bool {
	deadline := time.Now().Add(3 * time.Second)
	stable := 0
	var why string
	var last uint64
	for time.Now().Before(deadline) {
		ok, w := rig.settled()
		st := rig.r.Stats()
		if ok && st.Connects == last {
			stable++
			if stable >= 3 {
				return true
			}
		} else {
			stable = 0
			why = w
		}
		last = st.Connects
		time.Sleep(5 * time.Millisecond)
	}
	st := rig.r.Stats()
	rig.violate("%s: the registry did not settle within 3s (%d connects, %d disconnects, %d reconnects so far): %s",
		what, st.Connects, st.Disconnects, st.Reconnects, why)
	return false
}

func (rig *fzRig) finish() {
	// Every kept address dials fine from now on; the registry must then
	// settle, with each kept address connected once and no churn.
	rig.mu.Lock()
	for _, id := range fzIDs {
		rig.modes[id] = dialOK
	}
	kept := len(rig.keeps)
	rig.mu.Unlock()
	if !rig.waitSettled("after the program") {
		return
	}
	if kept > 0 {
		before := rig.r.Stats()
		time.Sleep(40 * time.Millisecond)
		after := rig.r.Stats()
		if after.Connects != before.Connects {
			rig.violate("churn: with nothing happening, %d more connects (%d reconnects) in 40ms",
				after.Connects-before.Connects, after.Reconnects-before.Reconnects)
			return
		}
	}
	rig.checkViews()
	for id, ps := range rig.liveKnown() {
		if len(ps) > 1 {
			rig.violate("%d live references to %s at a quiet moment", len(ps), id)
		}
	}
	st := rig.r.Stats()
	if n := len(rig.r.List()); st.Peers != n || int(st.Connects-st.Disconnects) != n {
		rig.violate("Stats %+v inconsistent with List (%d)", st, n)
	}

	rig.close()
	// Close delivers the last events: nothing may be missing now.
	rig.evMu.Lock()
	for p := range rig.connected {
		if rig.disconnected[p] != 1 {
			rig.violations = append(rig.violations, fmt.Sprintf("after Close, reference %p to %s (%v) was told Disconnected %d times",
				p, p.ID(), p.Err(), rig.disconnected[p]))
		}
	}
	rig.evMu.Unlock()
	if st := rig.r.Stats(); st.Connects != st.Disconnects {
		rig.violate("after Close: %d connects, %d disconnects", st.Connects, st.Disconnects)
	}
}

// close stops every Keep and closes the registry.
func (rig *fzRig) close() {
	rig.mu.Lock()
	rig.closed = true
	stops := rig.keeps
	rig.keeps = nil
	rig.mu.Unlock()
	for _, stop := range stops {
		stop()
	}
	rig.r.Close()
}

func (rig *fzRig) cleanup() {
	rig.close()
	rig.mu.Lock()
	all := rig.all
	rig.mu.Unlock()
	var wg sync.WaitGroup
	for _, c := range all {
		wg.Add(1)
		go func() { defer wg.Done(); c.Close() }()
	}
	wg.Wait()
	// Let the registry's AfterFunc goroutines (gone) finish, so that the
	// goroutine check at the end of the package sees none.
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		if ok, _ := rig.settled(); ok {
			break
		}
		time.Sleep(time.Millisecond)
	}
}

// The regressions FuzzRegistry found, as plain tests.

// Close "delivers the last events": a subscriber hears of every reference
// Close ends, and Stats agree once Close has returned.
func TestRegistryCloseTellsEveryDisconnect(t *testing.T) {
	for trial := range 10 {
		r, err := New(Config{LocalID: "local"})
		if err != nil {
			t.Fatal(err)
		}
		var mu sync.Mutex
		told := map[EventKind]int{}
		r.Subscribe(func(ev Event) {
			mu.Lock()
			told[ev.Kind]++
			mu.Unlock()
		})
		const n = 50
		for i := range n {
			ours, _ := conns(t, fmt.Sprintf("p%02d", i), nil)
			if _, err := r.add(ours, "x", true); err != nil {
				t.Fatal(err)
			}
		}
		r.Close()
		mu.Lock()
		c, d := told[Connected], told[Disconnected]
		mu.Unlock()
		st := r.Stats()
		if c != n || d != n || st.Connects != n || st.Disconnects != n {
			t.Fatalf("trial %d: after Close, subscribers were told %d Connected and %d Disconnected; Stats say %d connects, %d disconnects; want %d of each",
				trial, c, d, st.Connects, st.Disconnects, n)
		}
	}
}

// Two connections to one peer added at once (both nodes dialing each
// other at start-up do this): whichever reference is replaced, a
// subscriber hears of it as Connected before Disconnected, never the
// other way round.
func TestRegistryConcurrentAddsTellInOrder(t *testing.T) {
	const trials = 200
	bad := 0
	var example string
	for range trials {
		r := registry(t, Config{})
		var mu sync.Mutex
		state := map[*Peer]EventKind{}
		var disconnects uint64
		r.Subscribe(func(ev Event) {
			mu.Lock()
			defer mu.Unlock()
			if ev.Kind == Disconnected {
				disconnects++
			}
			if ev.Kind == Disconnected && state[ev.Peer] != Connected {
				bad++
				example = fmt.Sprintf("reference to %s told Disconnected (%v) before Connected", ev.ID, ev.Cause)
			}
			state[ev.Peer] = ev.Kind
		})
		var cs []*rpc.Conn
		for range 3 {
			ours, _ := conns(t, "d", nil)
			cs = append(cs, ours)
		}
		var wg sync.WaitGroup
		for _, c := range cs {
			wg.Add(1)
			go func() { defer wg.Done(); r.add(c, "x", true) }()
		}
		wg.Wait()
		// Let the replaced references' events arrive, then stop.
		waitFor(t, func() bool {
			st := r.Stats()
			mu.Lock()
			defer mu.Unlock()
			return disconnects == st.Disconnects
		}, "events")
		r.Close()
	}
	if bad > 0 {
		t.Fatalf("in %d of %d trials of three concurrent Adds, a subscriber was told of a reference out of order; e.g. %s", bad, trials, example)
	}
}

// A reference Keep maintains is replaced only by a loss, not by itself:
// once a kept address is connected, nothing more happens until something
// fails. Here the user also dials the kept address (to get its reference
// at once), which must not start an endless cycle of each connection
// replacing the other.
func TestKeepAndDialSameAddressDoNotChurn(t *testing.T) {
	dials := 0
	var mu sync.Mutex
	r := registry(t, Config{
		NewBackOff: func() backoff.BackOff { return backoff.NewConstantBackOff(5 * time.Millisecond) },
		Dial: func(ctx context.Context, addr string) (*rpc.Conn, error) {
			mu.Lock()
			dials++
			mu.Unlock()
			ours, _ := conns(t, "k", nil)
			return ours, nil
		},
	})
	stop := r.Keep("k:1")
	defer stop()
	waitFor(t, func() bool { _, ok := r.Get("k"); return ok }, "the kept peer to connect")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := r.Dial(ctx, "k:1"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	st := r.Stats()
	mu.Lock()
	n := dials
	mu.Unlock()
	if st.Connects > 2 || n > 2 {
		t.Fatalf("Keep(addr) then Dial(addr), then 300ms of nothing: %d dials, %d connects, %d disconnects (churn: each new connection replaces the last, and the replaced one's loss redials)",
			n, st.Connects, st.Disconnects)
	}
}

// A connection that dies between the handshake and the registry's check
// (the peer crashed, or closed a duplicate) makes Keep retry once, not
// twice: two retry loops for one address would replace each other's
// connections for ever once dials work again.
func TestKeepDeadOnArrivalDoesNotDoubleTheLoop(t *testing.T) {
	var mu sync.Mutex
	dials := 0
	r := registry(t, Config{
		NewBackOff: func() backoff.BackOff { return backoff.NewConstantBackOff(5 * time.Millisecond) },
		Dial: func(ctx context.Context, addr string) (*rpc.Conn, error) {
			mu.Lock()
			dials++
			first := dials == 1
			mu.Unlock()
			ours, theirs := conns(t, "k", nil)
			if first {
				theirs.Abort(errors.New("crashed"))
				<-ours.Done()
			}
			return ours, nil
		},
	})
	stop := r.Keep("k:1")
	defer stop()
	waitFor(t, func() bool { _, ok := r.Get("k"); return ok }, "the kept peer to connect")
	time.Sleep(300 * time.Millisecond)
	st := r.Stats()
	mu.Lock()
	n := dials
	mu.Unlock()
	if st.Connects > 2 || n > 2 {
		t.Fatalf("one connection dead on arrival, then 300ms with working dials: %d dials, %d connects, %d disconnects, %d reconnects (two retry loops replacing each other)",
			n, st.Connects, st.Disconnects, st.Reconnects)
	}
}
