package scale

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/partition"
	"github.com/tetherrpc/tether/peer"
)

// silenceAllBut drops every packet to or from the node's port except
// those of the given peers' ports: a silent partition of every other
// connection to the node, and of every new one (a redial too). It returns
// the instant the rules were in place.
func silenceAllBut(nodePort int, keep []int) (time.Time, error) {
	if err := partition.CheckNamespace(); err != nil {
		return time.Time{}, err
	}
	var b bytes.Buffer
	b.WriteString("*filter\n")
	for i := 0; i < len(keep); i += portsPerRule {
		group := keep[i:min(i+portsPerRule, len(keep))]
		s := make([]string, len(group))
		for j, p := range group {
			s[j] = strconv.Itoa(p)
		}
		fmt.Fprintf(&b, "-A INPUT -p tcp -m multiport --ports %s -j ACCEPT\n", strings.Join(s, ","))
	}
	fmt.Fprintf(&b, "-A INPUT -p tcp --dport %d -j DROP\n-A INPUT -p tcp --sport %d -j DROP\nCOMMIT\n", nodePort, nodePort)
	path, err := tool("iptables-restore")
	if err != nil {
		return time.Time{}, err
	}
	cmd := exec.Command(path, "--noflush", "-w")
	cmd.Stdin = &b
	out, err := cmd.CombinedOutput()
	at := time.Now()
	if err != nil {
		return time.Time{}, fmt.Errorf("scale: iptables-restore: %v: %s", err, bytes.TrimSpace(out))
	}
	return at, nil
}

// waitUntil polls cond every 5 ms for up to d.
func waitUntil(ctx context.Context, d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) || ctx.Err() != nil {
			return false
		}
		time.Sleep(5 * time.Millisecond)
	}
	return true
}

// callLog times the node's calls to steady peers.
type callLog struct {
	mu     sync.Mutex
	at     []time.Time
	took   []time.Duration
	failed int
}

func (l *callLog) run(ctx context.Context, p *peer.Peer, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	arg := []byte("ping")
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		var reply []byte
		t0 := time.Now()
		err := p.Call(cctx, echoMethod, arg, &reply)
		took := time.Since(t0)
		cancel()
		l.mu.Lock()
		if err != nil {
			if ctx.Err() == nil {
				l.failed++
			}
		} else {
			l.at, l.took = append(l.at, t0), append(l.took, took)
		}
		l.mu.Unlock()
		if err != nil && p.Err() != nil {
			return
		}
	}
}

// split returns the calls begun before the partition and those begun
// between the heal and end, and the failed calls.
func (l *callLog) split(part, heal, end time.Time) (before, wave []time.Duration, failed int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for i, at := range l.at {
		switch {
		case at.Before(part):
			before = append(before, l.took[i])
		case !at.Before(heal) && at.Before(end):
			wave = append(wave, l.took[i])
		}
	}
	return before, wave, l.failed
}

// slow returns the start times, from heal, of up to n calls begun
// before end that took longer than over.
func (l *callLog) slow(heal, end time.Time, over time.Duration, n int) []float64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []float64
	for i, at := range l.at {
		if !at.Before(heal) && at.Before(end) && l.took[i] > over && len(out) < n {
			out = append(out, ms(at.Sub(heal)))
		}
	}
	return out
}

// reconnectNode is the node, with its registry's events indexed by ID.
type reconnectNode struct {
	n    *tether.Node
	dir  string
	stop func()
	warn atomic.Int64
	// The node's log lines for handshakes refused and cut off.
	refused, cut atomic.Int64
	why          refusals

	mu        sync.Mutex
	live      map[peer.ID]bool
	partAt    time.Time
	healAt    time.Time
	lostAt    map[peer.ID]time.Time // kept peers evicted since the partition
	backAt    map[peer.ID]time.Time // kept peers connected since the heal
	steadyOut int
}

func startReconnectNode(opts []tether.Option) (*reconnectNode, error) {
	dir, err := os.MkdirTemp("", "tether-reconnect-incidents-")
	if err != nil {
		return nil, err
	}
	rn := &reconnectNode{dir: dir, live: map[peer.ID]bool{}, lostAt: map[peer.ID]time.Time{}, backAt: map[peer.ID]time.Time{}}
	zl := zap.New(&handshakeCore{warn: &rn.warn, refused: &rn.refused, cut: &rn.cut, why: &rn.why})
	n, err := tether.Listen("127.0.0.1:0", append([]tether.Option{tether.WithLogger(zl), tether.WithIncidentDir(dir)}, opts...)...)
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	rn.n = n
	rn.stop = n.Peers().Subscribe(rn.event)
	return rn, nil
}

func (rn *reconnectNode) event(ev peer.Event) {
	rn.mu.Lock()
	defer rn.mu.Unlock()
	kept := strings.HasPrefix(string(ev.ID), "kept-")
	switch ev.Kind {
	case peer.Connected:
		rn.live[ev.ID] = true
		// (While partitioned no kept peer can connect: a connection that
		// comes before the heal is marked is one the heal let through.)
		if kept && !rn.partAt.IsZero() {
			if _, ok := rn.backAt[ev.ID]; !ok {
				rn.backAt[ev.ID] = ev.Time
			}
		}
	case peer.Disconnected:
		if errors.Is(ev.Cause, peer.ErrReplaced) {
			return // the peer is still connected, through a newer reference
		}
		rn.live[ev.ID] = false
		if kept && !rn.partAt.IsZero() && rn.healAt.IsZero() {
			if _, ok := rn.lostAt[ev.ID]; !ok {
				rn.lostAt[ev.ID] = ev.Time
			}
		}
		if !kept {
			rn.steadyOut++
		}
	}
}

func (rn *reconnectNode) connected() int {
	rn.mu.Lock()
	defer rn.mu.Unlock()
	n := 0
	for _, l := range rn.live {
		if l {
			n++
		}
	}
	return n
}

func (rn *reconnectNode) markPartition(at time.Time) {
	rn.mu.Lock()
	rn.partAt = at
	rn.mu.Unlock()
}

func (rn *reconnectNode) markHeal(at time.Time) {
	rn.mu.Lock()
	rn.healAt = at
	rn.mu.Unlock()
}

func (rn *reconnectNode) lostSincePartition() int {
	rn.mu.Lock()
	defer rn.mu.Unlock()
	return len(rn.lostAt)
}

func (rn *reconnectNode) evictSpan() (first, last time.Time) {
	rn.mu.Lock()
	defer rn.mu.Unlock()
	for _, at := range rn.lostAt {
		if first.IsZero() || at.Before(first) {
			first = at
		}
		if at.After(last) {
			last = at
		}
	}
	return first, last
}

// backTimes returns the kept peers' reconnection times, from the heal.
func (rn *reconnectNode) backTimes() []time.Duration {
	rn.mu.Lock()
	defer rn.mu.Unlock()
	out := make([]time.Duration, 0, len(rn.backAt))
	if rn.healAt.IsZero() {
		return out
	}
	for _, at := range rn.backAt {
		out = append(out, max(at.Sub(rn.healAt), 0))
	}
	return out
}

func (rn *reconnectNode) steadyLost() int {
	rn.mu.Lock()
	defer rn.mu.Unlock()
	return rn.steadyOut
}

func (rn *reconnectNode) incidents() int {
	m, _ := os.ReadDir(rn.dir)
	return len(m)
}

func (rn *reconnectNode) close() {
	rn.stop()
	rn.n.Close()
	os.RemoveAll(rn.dir)
}

// handshakeCore is a zap core that counts the node's lines at Warn and
// above, and its Info lines for handshakes refused and cut off.
type handshakeCore struct {
	warn, refused, cut *atomic.Int64
	why                *refusals
}

// refusals counts the node's refused handshakes by their errors.
type refusals struct {
	mu sync.Mutex
	by map[string]int
}

func (r *refusals) add(why string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.by == nil {
		r.by = map[string]int{}
	}
	if len(r.by) < 20 {
		r.by[why]++
	} else {
		r.by["other"]++
	}
}

// take returns the counts so far and starts afresh.
func (r *refusals) take() map[string]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	m := r.by
	r.by = nil
	return m
}

func (c *handshakeCore) Enabled(l zapcore.Level) bool      { return l >= zapcore.InfoLevel }
func (c *handshakeCore) With([]zapcore.Field) zapcore.Core { return c }
func (c *handshakeCore) Sync() error                       { return nil }

func (c *handshakeCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.Enabled(e.Level) {
		return ce.AddCore(e, c)
	}
	return ce
}

func (c *handshakeCore) Write(e zapcore.Entry, fields []zapcore.Field) error {
	switch {
	case e.Level >= zapcore.WarnLevel:
		c.warn.Add(1)
	case e.Message == "handshake refused":
		c.refused.Add(1)
		enc := zapcore.NewMapObjectEncoder()
		for _, f := range fields {
			f.AddTo(enc)
		}
		why := fmt.Sprint(enc.Fields["error"])
		if i := strings.LastIndex(why, ": "); i >= 0 {
			why = why[i+2:] // the cause, without the addresses
		}
		c.why.add(why)
	case strings.HasPrefix(e.Message, "handshake slots full"):
		c.cut.Add(1)
	}
	return nil
}

// stallWatch records the stretches in which this process did not run a
// ticker of 2 ms for longer than min.
type stallWatch struct {
	min  time.Duration
	mu   sync.Mutex
	at   [][2]time.Time
	quit chan struct{}
	done chan struct{}
	once sync.Once
}

func watchStalls(min time.Duration) *stallWatch {
	w := &stallWatch{min: min, quit: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		t := time.NewTicker(2 * time.Millisecond)
		defer t.Stop()
		last := time.Now()
		for {
			select {
			case <-w.quit:
				return
			case now := <-t.C:
				now = time.Now()
				if now.Sub(last) > w.min {
					w.mu.Lock()
					w.at = append(w.at, [2]time.Time{last, now})
					w.mu.Unlock()
				}
				last = now
			}
		}
	}()
	return w
}

func (w *stallWatch) stop() {
	w.once.Do(func() { close(w.quit) })
	<-w.done
}

func (w *stallWatch) list(n int) [][2]time.Time {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.at[:min(n, len(w.at))])
}
