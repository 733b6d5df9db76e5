package scale

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/tetherrpc/tether/peer"
	"github.com/tetherrpc/tether/rpc"
)

// The keepers process (RunReconnect's peers) is told its part by these
// environment variables, besides envAddr.
const (
	envKeep   = "TETHER_SCALE_KEEP_COUNT"  // kept peers
	envSteady = "TETHER_SCALE_KEEP_STEADY" // steady peers
)

// IDs of the keepers process's peers, as the node sees them.
func keptID(i int) peer.ID   { return peer.ID(fmt.Sprintf("kept-%05d", i)) }
func steadyID(i int) peer.ID { return peer.ID(fmt.Sprintf("steady-%d", i)) }

// echoMethod is the steady peers' handler, which the node calls.
const echoMethod = "scale.echo"

// keepersChild runs the keepers process if this is one; it returns
// otherwise.
func keepersChild() {
	v, ok := os.LookupEnv(envKeep)
	if !ok {
		return
	}
	n, err1 := strconv.Atoi(v)
	steady, err2 := strconv.Atoi(os.Getenv(envSteady))
	if err1 != nil || err2 != nil || n < 0 || steady < 0 {
		fmt.Fprintf(os.Stderr, "scale keepers: bad counts %q, %q\n", v, os.Getenv(envSteady))
		os.Exit(2)
	}
	os.Exit(runKeepers(os.Getenv(envAddr), n, steady, os.Stdin, os.Stdout))
}

// runKeepers makes n+steady peers, each a peer.Registry of its own that
// keeps addr (peer.Registry.KeepAddr, with the default backoff), and
// answers the node on standard output:
//
//   - "CONNECTED" once every one is connected;
//   - after "PARTITIONED" on in: "LOST n" once every kept peer (not the
//     steady ones) has evicted the node;
//   - after "HEALED": nothing; after "REPORT": "FAILED before after cpu",
//     the kept peers' failed dials from PARTITIONED to HEALED and after,
//     and this process's CPU since HEALED in thousandths of a core.
//
// It closes everything and returns when in ends.
func runKeepers(addr string, n, steady int, in io.Reader, out io.Writer) int {
	if err := RaiseFileLimit(n + steady + 1024); err != nil {
		fmt.Fprintln(os.Stderr, "scale keepers:", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	mux := rpc.NewMux()
	mux.Handle(echoMethod, rpc.Func(func(_ context.Context, b []byte) ([]byte, error) { return b, nil }))

	failed := &failCounter{} // failed dials of kept peers
	var partitioned atomic.Bool
	var lost atomic.Int64
	lostAll := make(chan struct{})
	var lostOnce sync.Once

	regs := make([]*peer.Registry, 0, n+steady)
	defer func() {
		var wg sync.WaitGroup
		sem := make(chan struct{}, 64)
		for _, r := range regs {
			sem <- struct{}{}
			wg.Go(func() { defer func() { <-sem }(); r.Close() })
		}
		wg.Wait()
	}()
	var kepts []*peer.Kept
	for i := range n + steady {
		id, isKept := keptID(i), i < n
		if !isKept {
			id = steadyID(i - n)
		}
		log := zap.NewNop()
		if isKept {
			log = zap.New(&dialFailCore{c: failed})
		}
		r, err := peer.New(peer.Config{
			LocalID: id,
			Logger:  log,
			Dial: func(ctx context.Context, addr string) (*rpc.Conn, error) {
				var d net.Dialer
				nc, err := d.DialContext(ctx, "tcp", addr)
				if err != nil {
					return nil, err
				}
				c, err := rpc.Client(ctx, nc, &rpc.Config{ID: string(id), Mux: mux})
				if err != nil {
					nc.Close()
				}
				return c, err
			},
		})
		if err != nil {
			fmt.Fprintln(os.Stderr, "scale keepers:", err)
			return 1
		}
		regs = append(regs, r)
		if isKept {
			lostThis := false
			r.Subscribe(func(ev peer.Event) {
				if ev.Kind == peer.Disconnected && partitioned.Load() && !lostThis {
					lostThis = true // the subscriber's goroutine is the registry's own, one at a time
					if lost.Add(1) == int64(n) {
						lostOnce.Do(func() { close(lostAll) })
					}
				}
			})
		}
		k, err := r.KeepAddr(addr)
		if err != nil {
			fmt.Fprintln(os.Stderr, "scale keepers:", err)
			return 1
		}
		kepts = append(kepts, k)
	}
	go func() { // "CONNECTED"
		for _, k := range kepts {
			if _, err := k.Wait(ctx); err != nil {
				return
			}
		}
		fmt.Fprintln(out, "CONNECTED")
	}()

	var before int64
	var cpuHeal time.Duration
	var healAt time.Time
	sc := bufio.NewScanner(in)
	for sc.Scan() {
		switch sc.Text() {
		case "PARTITIONED":
			failed.take()
			partitioned.Store(true)
			if n == 0 {
				lostOnce.Do(func() { close(lostAll) })
			}
			go func() {
				select {
				case <-lostAll:
					fmt.Fprintf(out, "LOST %d\n", n)
				case <-ctx.Done():
				}
			}()
		case "HEALED":
			before, _ = failed.take()
			cpuHeal, healAt = cpuTime(), time.Now()
		case "REPORT":
			after, first := failed.take()
			if first != "" {
				fmt.Fprintf(os.Stderr, "scale keepers: first failed dial after the heal: %s\n", first)
			}
			// and this process's CPU since the heal, in thousandths of a core
			fmt.Fprintf(out, "FAILED %d %d %d\n", before, after, int((cpuTime()-cpuHeal).Seconds()*1000/time.Since(healAt).Seconds()))
		}
	}
	return 0
}

// failCounter counts failed dials and keeps the first one's error.
type failCounter struct {
	mu    sync.Mutex
	n     int64
	first string
}

func (c *failCounter) add(err string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n++; c.first == "" {
		c.first = err
	}
}

// take returns the count and the first error, and starts afresh.
func (c *failCounter) take() (int64, string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	n, first := c.n, c.first
	c.n, c.first = 0, ""
	return n, first
}

// dialFailCore is a zap core that counts a kept address's failed dials
// (the registry logs each: "reconnect failed" at Debug, or at Warn when it
// stays unreachable).
type dialFailCore struct{ c *failCounter }

func (c *dialFailCore) Enabled(zapcore.Level) bool        { return true }
func (c *dialFailCore) With([]zapcore.Field) zapcore.Core { return c }
func (c *dialFailCore) Sync() error                       { return nil }

func (c *dialFailCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	switch e.Message {
	case "reconnect failed", "kept address unreachable", "kept address still unreachable":
		return ce.AddCore(e, c)
	}
	return ce
}

func (c *dialFailCore) Write(_ zapcore.Entry, fields []zapcore.Field) error {
	enc := zapcore.NewMapObjectEncoder()
	for _, f := range fields {
		f.AddTo(enc)
	}
	c.c.add(fmt.Sprint(enc.Fields["error"]))
	return nil
}

// keepersProc is the keepers process, seen from the node.
type keepersProc struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	lines chan string // its standard output, line by line; closed at its end
	done  chan struct{}
	werr  error
	once  sync.Once
}

func startKeepers(ctx context.Context, addr string, n, steady int) (*keepersProc, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("scale: cannot find this binary to re-execute: %w", err)
	}
	cmd := exec.CommandContext(ctx, exe)
	cmd.Env = append(os.Environ(), envKeep+"="+strconv.Itoa(n), envSteady+"="+strconv.Itoa(steady), envAddr+"="+addr)
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
		return nil, fmt.Errorf("scale: starting the keepers process: %w", err)
	}
	k := &keepersProc{cmd: cmd, stdin: stdin, lines: make(chan string, 16), done: make(chan struct{})}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			k.lines <- sc.Text()
		}
		close(k.lines)
		k.werr = cmd.Wait()
		close(k.done)
	}()
	return k, nil
}

func (k *keepersProc) send(line string) error {
	if _, err := io.WriteString(k.stdin, line+"\n"); err != nil {
		return fmt.Errorf("scale: telling the keepers process %q: %w", line, err)
	}
	return nil
}

// next waits up to d for the next line starting with prefix, skipping
// others.
func (k *keepersProc) next(prefix string, d time.Duration) (string, error) {
	t := time.NewTimer(d)
	defer t.Stop()
	for {
		select {
		case line, ok := <-k.lines:
			if !ok {
				<-k.done
				return "", fmt.Errorf("%w: %v", errNoPeers, k.werr)
			}
			if strings.HasPrefix(line, prefix) {
				return line, nil
			}
		case <-t.C:
			return "", fmt.Errorf("scale: the keepers process did not say %q within %v", prefix, d)
		}
	}
}

func (k *keepersProc) expect(line string, d time.Duration) error {
	got, err := k.next(line, d)
	if err == nil && got != line {
		err = fmt.Errorf("scale: the keepers process said %q, not %q", got, line)
	}
	return err
}

// err returns an error if the keepers process has ended.
func (k *keepersProc) err() error {
	select {
	case <-k.done:
		return fmt.Errorf("%w: %v", errNoPeers, k.werr)
	default:
		return nil
	}
}

// stop ends the keepers process: its standard input closes, it closes its
// registries and exits (killed if it takes longer than its bound).
func (k *keepersProc) stop() {
	k.once.Do(func() {
		k.stdin.Close()
		go func() { // drain its output
			for range k.lines {
			}
		}()
		select {
		case <-k.done:
		case <-time.After(closeTimeout + 5*time.Second):
			k.cmd.Process.Kill()
			<-k.done
		}
	})
}
