package scale

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Environment variables by which Run tells the re-executed binary that it
// is the peers process, and what to do.
const (
	envSystem = "TETHER_SCALE_PEERS_SYSTEM" // the System's name
	envAddr   = "TETHER_SCALE_PEERS_ADDR"   // the server's address
	envCount  = "TETHER_SCALE_PEERS_COUNT"  // how many connections
	envConc   = "TETHER_SCALE_PEERS_CONC"   // dials in progress at most; 0: all at once
)

// Bounds of the peers process's dialling.
const (
	dialAttempts    = 8                // per connection
	dialTimeout     = 30 * time.Second // per attempt, handshakes included
	dialBackoffBase = 50 * time.Millisecond
	dialBackoffMax  = 2 * time.Second
	closeTimeout    = 10 * time.Second // for closing every connection at the end
)

// Child is the peers process's side of Run. Call it first thing in main,
// or in TestMain before m.Run, with every System the binary may measure:
//
//	func TestMain(m *testing.M) {
//		scale.Child(scale.Tether())
//		goleak.VerifyTestMain(m)
//	}
//
// In the process RunReconnect started, Child runs its kept peers until
// standard input closes, and exits.
// In the process Run started, Child opens the connections, reports on
// standard output, keeps them idle until standard input closes, closes
// them and exits; it never returns. In any other process it returns at
// once.
func Child(systems ...System) {
	keepersChild() // RunReconnect's peers
	name, ok := os.LookupEnv(envSystem)
	if !ok {
		return
	}
	var sys System
	for _, s := range systems {
		if s.Name() == name {
			sys = s
		}
	}
	if sys == nil {
		fmt.Fprintf(os.Stderr, "scale peers: unknown system %q\n", name)
		os.Exit(2)
	}
	n, err1 := strconv.Atoi(os.Getenv(envCount))
	conc, err2 := strconv.Atoi(os.Getenv(envConc))
	if err1 != nil || err2 != nil || n < 0 || conc < 0 {
		fmt.Fprintf(os.Stderr, "scale peers: bad count %q or concurrency %q\n", os.Getenv(envCount), os.Getenv(envConc))
		os.Exit(2)
	}
	os.Exit(runPeers(sys, os.Getenv(envAddr), n, conc, os.Stdin, os.Stdout))
}

// runPeers opens n connections to addr and reports "DIALED ok retries
// failed" on out. Until in says "SETTLED" it redials any connection that
// dies (the server may cut off a handshake the client saw complete); then
// it stops dialling, reports "SETTLED redials" and keeps the connections
// idle. When in ends, it closes them. It returns the exit code.
func runPeers(sys System, addr string, n, conc int, in io.Reader, out io.Writer) int {
	if err := RaiseFileLimit(n + 1024); err != nil {
		fmt.Fprintln(os.Stderr, "scale peers:", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dialCtx, stopDialling := context.WithCancel(ctx)
	defer stopDialling()
	settled := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(in)
		once := false
		for sc.Scan() {
			if sc.Text() == "SETTLED" && !once {
				once = true
				close(settled)
				stopDialling()
			}
		}
		cancel() // standard input ended: the node is done, or gave up
	}()
	var mu sync.Mutex
	conns := make([]io.Closer, n)
	var retries, failed, redials atomic.Int64
	var firstErr atomic.Value
	var sem chan struct{}
	if conc > 0 {
		sem = make(chan struct{}, conc)
	}
	// dial makes one connection, with retries; nil if it gave up or was
	// told to stop.
	dial := func() io.Closer {
		for a := range dialAttempts {
			if a > 0 {
				d := min(dialBackoffBase<<a, dialBackoffMax)
				t := time.NewTimer(d/2 + rand.N(d/2))
				select {
				case <-t.C:
				case <-dialCtx.Done():
					t.Stop()
				}
			}
			if dialCtx.Err() != nil {
				return nil
			}
			if a > 0 {
				retries.Add(1)
			}
			dctx, dcancel := context.WithTimeout(dialCtx, dialTimeout)
			c, err := sys.Dial(dctx, addr)
			dcancel()
			if err == nil {
				return c
			}
			firstErr.CompareAndSwap(nil, err.Error())
		}
		return nil
	}
	var initial, all sync.WaitGroup
	for i := range n {
		if sem != nil {
			select {
			case sem <- struct{}{}:
			case <-dialCtx.Done():
			}
		}
		if dialCtx.Err() != nil {
			failed.Add(int64(n - i)) // never dialled
			break
		}
		initial.Add(1)
		all.Go(func() {
			c := dial()
			if sem != nil {
				<-sem
			}
			if c == nil {
				failed.Add(1)
			}
			initial.Done()
			for range dialAttempts {
				if c == nil {
					return
				}
				mu.Lock()
				conns[i] = c
				mu.Unlock()
				done := doneOf(c)
				if done == nil {
					return
				}
				select {
				case <-done:
				case <-dialCtx.Done():
					return
				}
				redials.Add(1)
				c = dial()
			}
		})
	}
	initial.Wait()
	if e, ok := firstErr.Load().(string); ok {
		fmt.Fprintf(os.Stderr, "scale peers: first dial error: %s\n", e)
	}
	fmt.Fprintf(out, "DIALED %d %d %d\n", int64(n)-failed.Load(), retries.Load(), failed.Load())
	select {
	case <-settled:
		all.Wait() // bounded: every dial and backoff ends with dialCtx
		fmt.Fprintf(out, "SETTLED %d\n", redials.Load())
	case <-ctx.Done():
	}
	<-ctx.Done()
	all.Wait()

	closed := make(chan struct{})
	go func() {
		var cw sync.WaitGroup
		sem := make(chan struct{}, 256)
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			if c != nil {
				sem <- struct{}{}
				cw.Go(func() { defer func() { <-sem }(); c.Close() })
			}
		}
		cw.Wait()
		close(closed)
	}()
	select {
	case <-closed:
	case <-time.After(closeTimeout):
		fmt.Fprintln(os.Stderr, "scale peers: connections not all closed within", closeTimeout)
	}
	return 0
}

// peersProc is the peers process, seen from the node.
type peersProc struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	done  chan struct{} // closed when the process has ended
	werr  error         // its exit status, once done

	dialedCh  chan struct{} // closed when dialed is set
	settledCh chan struct{} // closed when redials is set
	dialed    dialStats
	redials   int

	mu      sync.Mutex
	told    bool // SETTLED sent
	stopped bool
}

type dialStats struct{ ok, retries, failed int }

// startPeers starts the peers process for system sys: n connections to addr.
func startPeers(ctx context.Context, sys, addr string, n, conc int) (*peersProc, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("scale: cannot find this binary to re-execute: %w", err)
	}
	cmd := exec.CommandContext(ctx, exe)
	cmd.Env = append(os.Environ(),
		envSystem+"="+sys, envAddr+"="+addr, envCount+"="+strconv.Itoa(n), envConc+"="+strconv.Itoa(conc))
	cmd.Stderr = os.Stderr
	cmd.WaitDelay = closeTimeout
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("scale: starting the peers process: %w", err)
	}
	p := &peersProc{cmd: cmd, stdin: stdin, done: make(chan struct{}),
		dialedCh: make(chan struct{}), settledCh: make(chan struct{})}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			var st dialStats
			var r int
			switch {
			case scanLine(sc.Text(), "DIALED %d %d %d", &st.ok, &st.retries, &st.failed):
				p.dialed = st
				close(p.dialedCh)
			case scanLine(sc.Text(), "SETTLED %d", &r):
				p.redials = r
				close(p.settledCh)
			}
		}
		p.werr = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// scanLine parses line with format and reports whether all of it matched.
func scanLine(line, format string, args ...any) bool {
	n, err := fmt.Sscanf(line, format, args...)
	return err == nil && n == len(args)
}

// exited reports whether the peers process has ended.
func (p *peersProc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// dialedOK reports whether the peers process has reported its first
// round of dials, and how many of them made a connection.
func (p *peersProc) dialedOK() (ok int, reported bool) {
	select {
	case <-p.dialedCh:
		return p.dialed.ok, true
	default:
		return 0, false
	}
}

// dialStats waits up to d for the peers process's report of its dials.
func (p *peersProc) dialStats(d time.Duration) (dialStats, bool) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-p.dialedCh:
		return p.dialed, true
	case <-p.done:
	case <-t.C:
	}
	select {
	case <-p.dialedCh:
		return p.dialed, true
	default:
		return dialStats{}, false
	}
}

// err returns an error if the peers process has ended before being told.
func (p *peersProc) err() error {
	if p.exited() {
		return fmt.Errorf("%w: %v", errNoPeers, p.werr)
	}
	return nil
}

// stop tells the peers process to close its connections and end, and
// waits for it (killing it if it takes longer than its bound).
func (p *peersProc) stop() {
	p.mu.Lock()
	if p.stopped {
		p.mu.Unlock()
		return
	}
	p.stopped = true
	p.mu.Unlock()
	p.stdin.Close()
	select {
	case <-p.done:
	case <-time.After(closeTimeout + 5*time.Second):
		p.cmd.Process.Kill()
		<-p.done
	}
}

// doneOf returns a channel closed when c's connection ends, for the kinds
// of connection that have one (rpc.Conn, yamux.Session), else nil.
func doneOf(c io.Closer) <-chan struct{} {
	switch c := c.(type) {
	case interface{ Done() <-chan struct{} }:
		return c.Done()
	case interface{ CloseChan() <-chan struct{} }:
		return c.CloseChan()
	}
	return nil
}

// settle tells the peers process to stop dialling and redialling, and
// returns how many connections it redialled, waiting up to d for the
// answer.
func (p *peersProc) settle(d time.Duration) (redials int, ok bool) {
	p.mu.Lock()
	if !p.told {
		p.told = true
		if _, err := io.WriteString(p.stdin, "SETTLED\n"); err != nil {
			p.mu.Unlock()
			return 0, false
		}
	}
	p.mu.Unlock()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-p.settledCh:
		return p.redials, true
	case <-p.done:
	case <-t.C:
	}
	select {
	case <-p.settledCh:
		return p.redials, true
	default:
		return 0, false
	}
}
