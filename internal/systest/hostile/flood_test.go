package hostile

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/internal/ttest"
	"github.com/tetherrpc/tether/liveness"
	"github.com/tetherrpc/tether/peer"
	"github.com/tetherrpc/tether/rpc"
)

// The flooding peers run in a child process of their own (this test
// binary, re-executed in the role "flood mode@addr"), as a remote attacker
// would: their own CPU and garbage are not the victim's. The child starts
// in the kernel's idle scheduling class, so that on the one machine that
// runs the victim and the attacker alike, the attacker takes no CPU from
// the victim, as an attacker on a machine of its own would not: the floor
// is about what the victim does for its other peers while it serves a
// flood, not about sharing the cores with the attacker. On a busy machine
// the idle class gets no CPU at all; the child is then moved to nice 19,
// which gets a little (see hostileChild.flood). If even that gets no flood
// under way, or the starved flooder is evicted for missing its probes
// before its flood is judged, the test says so and skips, rather than
// judge a flood that did not happen.
//
// A flooder is persistent: cut off, it connects again (under a new ID)
// and goes on. It starts when it reads a line on stdin, moves to nice 19
// when it reads "NICE", prints "READY" once its flood is under way (past
// the victim's limit), and "STATS sent refused connections attempts" when
// its stdin closes.

func init() {
	if spec, ok := strings.CutPrefix(ttest.Role(), "flood "); ok {
		mode, addr, _ := strings.Cut(spec, "@")
		if err := ttest.SetPriority(ttest.Idle); err != nil {
			fmt.Fprintf(os.Stderr, "hostile child: %v; the flood shares the victim's CPUs\n", err)
		}
		os.Exit(runHostileChild(mode, addr))
	}
}

// hostileChild is a flooding child process.
type hostileChild struct {
	*ttest.Child
	lines chan string // its output, line by line
}

// startHostileChild starts a flooder, waiting for its cue.
func startHostileChild(t *testing.T, mode, addr string) *hostileChild {
	t.Helper()
	c := &hostileChild{Child: ttest.StartChild(t, "flood "+mode+"@"+addr, "GODEBUG="), lines: make(chan string, 4)}
	go func() {
		defer close(c.lines)
		for {
			line, err := c.Out.ReadString('\n')
			if err != nil {
				return
			}
			c.lines <- strings.TrimSuffix(line, "\n")
		}
	}()
	return c
}

// flood starts the flood and waits until it is under way. The flooder
// starts in the idle scheduling class, which takes nothing from the
// victim; on a busy machine that class gets no CPU, and after a while the
// flooder is moved to nice 19, which gets a little. It returns the
// priority the flood runs at, or an error saying why the flood did not get
// under way (run from the attack's goroutine, it must not fail the test
// itself).
func (c *hostileChild) flood() (ttest.Priority, error) {
	if _, err := io.WriteString(c.Stdin, "GO\n"); err != nil {
		return 0, fmt.Errorf("cueing the flooder: %v", err)
	}
	prio := ttest.Idle
	line, ok := ttest.Within(c.lines, 2*time.Second)
	if !ok {
		prio = ttest.Lowest
		if _, err := io.WriteString(c.Stdin, "NICE\n"); err != nil {
			return 0, fmt.Errorf("cueing the flooder: %v", err)
		}
		d := ttest.Scaled(5 * time.Second)
		if line, ok = ttest.Within(c.lines, d); !ok {
			return 0, fmt.Errorf("the flooder got no flood under way in 2 s in %v, nor in %v more at %v: this machine is too busy to give it CPU", ttest.Idle, d, prio)
		}
	}
	if line != "READY" {
		return 0, fmt.Errorf("the flooder said %q, not READY", line)
	}
	return prio, nil
}

// childStats is what a hostile child did.
type childStats struct {
	sent     int64 // calls, streams or junk messages
	refused  int64 // answered "resource exhausted"
	conns    int64 // connections that got past the handshake
	attempts int64 // connections tried, those closed unheard included
}

// stop ends the flood and returns what the child did.
func (c *hostileChild) stop() (childStats, error) {
	c.Stdin.Close()
	var st childStats
	line, ok := ttest.Within(c.lines, ttest.Scaled(10*time.Second))
	if !ok {
		return st, errors.New("the flooder did not report its figures within 10 s of its cue to stop")
	}
	if _, err := fmt.Sscanf(line, "STATS %d %d %d %d", &st.sent, &st.refused, &st.conns, &st.attempts); err != nil {
		return st, fmt.Errorf("the flooder's figures %q: %v", line, err)
	}
	return st, nil
}

// runHostileChild is the child's side.
func runHostileChild(mode, addr string) int {
	in := bufio.NewReader(os.Stdin)
	if _, err := in.ReadString('\n'); err != nil {
		return 0 // ended before its cue
	}
	stop := make(chan struct{})
	go func() {
		defer close(stop)
		for {
			line, err := in.ReadString('\n')
			if err != nil {
				return
			}
			if line == "NICE\n" {
				if err := ttest.SetPriority(ttest.Lowest); err != nil {
					fmt.Fprintf(os.Stderr, "hostile child: %v\n", err)
				}
			}
		}
	}()
	var sent, refused, conns, attempts atomic.Int64
	var once sync.Once
	underWay := func() { once.Do(func() { fmt.Println("READY") }) }
	for {
		select {
		case <-stop:
			fmt.Printf("STATS %d %d %d %d\n", sent.Load(), refused.Load(), conns.Load(), attempts.Load())
			return 0
		default:
		}
		attempts.Add(1)
		sess, ctrl, err := hostileConnect(addr, fmt.Sprintf("flooder-%s-%d", mode, conns.Load()))
		if err != nil {
			// Refused: try again soon. (A flood of bare TCP connections,
			// as fast as they go, is a SYN flood: the kernel's to bear,
			// with SYN cookies and firewall rate limits, before any
			// library sees a byte.)
			time.Sleep(10 * time.Millisecond)
			continue
		}
		conns.Add(1)
		switch mode {
		case "calls":
			floodCalls(sess, ctrl, stop, &sent, &refused, underWay)
		case "streams":
			floodStreams(sess, ctrl, stop, &sent, &refused, underWay)
		case "garbage":
			junk := make([]byte, 1+rand.IntN(4096))
			for j := range junk {
				junk[j] = byte(rand.Uint32())
			}
			if _, err := ctrl.Write(junk); err == nil {
				sent.Add(1)
				underWay()
			}
			ctrl.SetReadDeadline(time.Now().Add(time.Second))
			io.Copy(io.Discard, ctrl) // until the victim closes it (junk that is a frame's beginning waits for more)
		default:
			fmt.Fprintln(os.Stderr, "hostile child: unknown mode", mode)
			return 1
		}
		sess.Close()
	}
}

func hostileConnect(addr, id string) (*yamux.Session, *yamux.Stream, error) {
	nc, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return nil, nil, err
	}
	nc.SetDeadline(time.Now().Add(2 * time.Second))
	nc.Write(encodeHello(rpc.ProtocolVersion, 0, 4<<20, 1<<16, id))
	if h, err := readHello(nc); err != nil || h.status != 0 {
		nc.Close()
		return nil, nil, fmt.Errorf("hello %+v %v", h, err)
	}
	nc.SetDeadline(time.Time{})
	cfg := yamux.DefaultConfig()
	cfg.LogOutput = io.Discard
	cfg.EnableKeepAlive = false
	cfg.AcceptBacklog = 4096
	sess, err := yamux.Client(nc, cfg)
	if err != nil {
		nc.Close()
		return nil, nil, err
	}
	ctrl, err := sess.OpenStream()
	if err != nil {
		sess.Close()
		return nil, nil, err
	}
	return sess, ctrl, nil
}

// countRefusals reads the control stream without allocating and counts
// refusals, until the connection ends. (The victim's probes are yamux
// pings, which the flooder's yamux answers.)
func countRefusals(ctrl *yamux.Stream, refused *atomic.Int64) {
	br := bufio.NewReaderSize(ctrl, 64<<10)
	var h [18]byte
	for {
		if _, err := io.ReadFull(br, h[:16]); err != nil {
			return
		}
		n := int(binary.BigEndian.Uint32(h[4:8]))
		if h[0] == kindError && n >= 2 {
			if _, err := io.ReadFull(br, h[16:18]); err != nil {
				return
			}
			if rpc.Code(binary.BigEndian.Uint16(h[16:18])) == rpc.CodeResourceExhausted {
				refused.Add(1)
			}
			n -= 2
		}
		br.Discard(n)
	}
}

// floodCalls: 64 calls the victim admits and holds, then the same 64 KiB
// of further calls over and over, all past the limit.
func floodCalls(sess *yamux.Session, ctrl *yamux.Stream, stop <-chan struct{}, sent, refused *atomic.Int64, underWay func()) {
	go countRefusals(ctrl, refused)
	var batch []byte
	for id := uint64(1); id <= 64; id++ {
		batch = append(batch, encodeRequest(kindRequest, id, 0, "hold", nil)...)
	}
	ctrl.Write(batch)
	sent.Add(64)
	batch = batch[:0]
	perBatch := int64(0)
	for id := uint64(1 << 20); len(batch) < 64<<10; id++ {
		batch = append(batch, encodeRequest(kindRequest, id, 0, "hold", nil)...)
		perBatch++
	}
	for {
		select {
		case <-stop:
			return
		default:
		}
		ctrl.SetWriteDeadline(time.Now().Add(time.Second))
		_, err := ctrl.Write(batch)
		if err != nil {
			return // cut off, or pushed back: connect again
		}
		sent.Add(perBatch)
		underWay()
	}
}

// floodStreams opens streams as fast as 256 goroutines can, each asking
// for the "hold" stream handler.
func floodStreams(sess *yamux.Session, ctrl *yamux.Stream, stop <-chan struct{}, sent, refused *atomic.Int64, underWay func()) {
	go countRefusals(ctrl, refused)
	var wg sync.WaitGroup
	defer wg.Wait()
	sem := make(chan struct{}, 256)
	var id atomic.Uint64
	for !sess.IsClosed() {
		select {
		case <-stop:
			return
		case sem <- struct{}{}:
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			s, err := sess.OpenStream()
			if err != nil {
				return
			}
			defer s.Close()
			if sent.Add(1) > 128 { // twice the limit
				underWay()
			}
			s.SetDeadline(time.Now().Add(2 * time.Second))
			if _, err := s.Write(encodeRequest(kindStreamOpen, 2*id.Add(1)+1, 0, "hold", nil)); err != nil {
				return
			}
			var h [18]byte
			if _, err := io.ReadFull(s, h[:]); err == nil && h[0] == kindError &&
				rpc.Code(binary.BigEndian.Uint16(h[16:18])) == rpc.CodeResourceExhausted {
				refused.Add(1)
			}
		}()
	}
}

// floodVerdicts checks how the victim treated the flooders: each
// connection either lived on with its excess refused, or was cut off with
// a clear error (a protocol violation naming the limit). Never anything
// else, and never more handlers than the limit at once.
//
// A flooder that got so little CPU that it stopped answering probes is
// evicted for missed heartbeats, rightly; such evictions are counted apart
// (starved), since the flood was not what the victim judged.
func (r *rig) floodVerdicts(t *testing.T, limit int64, maxHolding int64, violation string) (cut, starved int) {
	t.Helper()
	if maxHolding > limit {
		t.Errorf("%d handlers ran at once for one peer, limit %d", maxHolding, limit)
	}
	for _, ev := range r.vev.All() {
		if ev.Kind != peer.Disconnected || ev.ID == r.g.ID() {
			continue
		}
		switch {
		case errors.Is(ev.Cause, rpc.ErrProtocolViolation) && strings.Contains(ev.Cause.Error(), violation):
			cut++
		case errors.Is(ev.Cause, rpc.ErrPeerLeft), errors.Is(ev.Cause, io.EOF), strings.Contains(ev.Cause.Error(), "closed by the peer"), isReset(ev.Cause):
			// the flooder went away (closing with bytes unread resets)
		case errors.Is(ev.Cause, liveness.ErrMissedHeartbeats):
			starved++
		default:
			t.Errorf("a flooder was evicted without a clear cause: %v", ev.Cause)
		}
	}
	t.Logf("flooders cut off for a protocol violation: %d; evicted for missed heartbeats (starved of CPU): %d", cut, starved)
	return cut, starved
}

// Floods from a persistent attacker in another process, which connects
// again (under a new ID) whenever it is cut off, and at once whenever it is
// refused: calls past the limit, streams past it, random bytes on the
// control stream. The victim runs at most its limit of handlers for any
// connection, refuses the excess or cuts the flooder off with a clear
// error, and its other peer goes on. With the violation penalty (the
// default) a host cut off for a violation is refused at accept for a
// while, so the flood costs the victim one accept per attempt and G's p99
// latency rises by at most 2x (the promised floor). Without it every
// reconnection costs a handshake, a session and an eviction: that run
// asserts the same correctness, and logs what the penalty saves.
func TestHostileFloods(t *testing.T) {
	ttest.SkipShort(t, "floods from a child process, about 20 s")
	for _, mode := range []string{"calls", "streams", "garbage"} {
		for _, penalty := range []bool{true, false} {
			name := mode + "/penalty"
			opts := []tether.Option{}
			if !penalty {
				name = mode + "/no penalty"
				opts = append(opts, tether.WithViolationPenalty(0, 0))
			}
			t.Run(name, func(t *testing.T) {
				if !penalty && ttest.Race {
					// Without the penalty a victim built with the race
					// detector (5-10x slower) on a CI machine shared with
					// other packages' tests is driven into overload: once,
					// its well-behaved peer was convicted as silent (616 ms
					// without an ACK from the starved victim's kernel). This
					// variant is a comparison, not a promise; the default
					// runs under -race above.
					t.Skip("the comparison without the penalty runs without -race only")
				}
				// The floor is a p99 over a fraction of a second, on a
				// machine that CI shares with other packages' tests: it
				// must hold in one of three attempts, each on fresh nodes
				// (a victim that remembers the flooder's host from the last
				// attempt would refuse it from the start). The
				// correctness checks hold in every attempt.
				var rises []float64
				for attempt := 1; attempt <= 3; attempt++ {
					rise, unmade := floodAttempt(t, fmt.Sprintf("a flood of %s, attempt %d", name, attempt), mode, penalty, opts)
					if unmade != "" {
						t.Skipf("attempt %d: %s", attempt, unmade)
					}
					rises = append(rises, rise)
					if !penalty || rise <= floor || t.Failed() {
						break
					}
				}
				if penalty && slices.Min(rises) > floor {
					t.Errorf("a flood of %s: p99 latency between two other peers rose %.1fx at best (attempts: %.1f), floor %dx", name, slices.Min(rises), rises, floor)
				}
			})
		}
	}
}

// floodAttempt runs one flood of mode against a fresh victim and checks
// how the victim treated it; it returns the rise of G's p99 latency, or,
// when the flood could not be made here, why not.
func floodAttempt(t *testing.T, what, mode string, penalty bool, opts []tether.Option) (rise float64, unmade string) {
	const limit = 64
	r := newRig(t, rpc.Config{MaxConcurrentCalls: limit}, opts...)
	c := startHostileChild(t, mode, r.v.Addr().String())
	goroutines := runtime.NumGoroutine()
	var maxG atomic.Int64
	var st childStats
	var took time.Duration
	var childErr error
	rise = r.underLoad(t, what, func(stop <-chan struct{}, ready func()) {
		t0 := time.Now()
		var prio ttest.Priority
		if prio, childErr = c.flood(); childErr != nil {
			return
		}
		if prio != ttest.Idle {
			t.Logf("the flooder runs at %v: in %v it got no CPU on this busy machine", prio, ttest.Idle)
		}
		ready()
		for {
			select {
			case <-stop:
				st, childErr = c.stop()
				took = time.Since(t0)
				return
			case <-time.After(time.Millisecond):
			}
			maxG.Store(max(maxG.Load(), int64(runtime.NumGoroutine())))
		}
	})
	if childErr != nil {
		return 0, childErr.Error()
	}
	t.Logf("the flooder tried %d connections, %d got past the handshake; it sent %d %s, %d refused as over the limit; at most %d handlers at once on one connection; V's process: goroutines %d -> at most %d",
		st.attempts, st.conns, st.sent, mode, st.refused, r.maxHeld(), goroutines, maxG.Load())
	violation := "limit"
	if mode == "garbage" {
		violation = "" // whatever the junk broke, named
	}
	cut, starved := r.floodVerdicts(t, limit, r.maxHeld(), violation)
	if bound := int64(goroutines + 4*limit + 2*256 + 100); maxG.Load() > bound {
		t.Errorf("V's goroutines rose to %d under the flood, bound %d", maxG.Load(), bound)
	}
	// Penalties of 250 ms, 500 ms, 1 s...: k strikes take 250 ms × (2^k - 1).
	allowed := int64(2 + math.Log2(float64(took)/float64(250*time.Millisecond)+1))
	switch {
	case penalty && st.conns > allowed:
		t.Errorf("the flooder got %d of %d connections past the handshake in %v, penalties allow %d", st.conns, st.attempts, took, allowed)
	case mode != "streams" && cut == 0 && starved > 0:
		return 0, fmt.Sprintf("the flooder, at the lowest CPU priority on this busy machine, got so little CPU that it stopped answering probes and was evicted for it (%d times) before its flood was cut off", starved)
	case mode != "streams" && cut == 0:
		// (A stream flood under -race may stay under the refusal rate that
		// cuts a connection off.)
		t.Errorf("no flooder was cut off, though %d %s went out", st.sent, mode)
	}
	r.gWorks(t)
	return rise, ""
}
