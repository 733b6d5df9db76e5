package rpc

import (
	"context"
	"encoding/binary"
	"io"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tetherrpc/tether/internal/ttest"
	"github.com/tetherrpc/tether/partition"
)

// sentWindows records the window updates windows sends of its own.
type sentWindows struct {
	mu     sync.Mutex
	deltas map[uint32]uint64
}

func (s *sentWindows) send(hdr []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if hdr[1] != yamuxTypeWindow || binary.BigEndian.Uint16(hdr[2:4]) != 0 {
		panic("windows sent something other than a plain window update")
	}
	s.deltas[binary.BigEndian.Uint32(hdr[4:8])] += uint64(binary.BigEndian.Uint32(hdr[8:12]))
	return nil
}

func (s *sentWindows) total(id uint32) uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.deltas[id]
}

func testWindows(maxWin uint32, connLimit int64, node *WindowBudget) (*windows, *sentWindows) {
	sent := &sentWindows{deltas: make(map[uint32]uint64)}
	cfg := &Config{MaxStreamWindow: maxWin, MaxConnWindow: connLimit, WindowBudget: node}
	return newWindows(cfg, sent.send), sent
}

// yamuxOpens plays yamux opening stream id: a SYN granting its whole window
// beyond the initial one.
func yamuxOpens(t *testing.T, ws *windows, id uint32) {
	t.Helper()
	d, send := ws.outbound(id, yamuxFlagSYN, yamuxWindow(ws.maxWin)-initialWindow)
	if d != 0 || !send {
		t.Fatalf("SYN passed on with delta %d (send %v), want 0 (true): the stream starts at the protocol's window", d, send)
	}
}

// yamuxModel plays yamux's side of one stream: it grants its whole window
// again once half of it is consumed, as yamux's Stream.Read does.
type yamuxModel struct {
	granted  uint64
	consumed uint64
}

// read has the reader consume n bytes: yamux's update first (it comes from
// inside yamux's Read), then the transport's.
func (y *yamuxModel) read(t *testing.T, ws *windows, id uint32, n uint64) {
	t.Helper()
	if y.granted == 0 {
		y.granted = uint64(yamuxWindow(ws.maxWin)) // the SYN's
	}
	y.consumed += n
	if out, max := y.granted-y.consumed, uint64(yamuxWindow(ws.maxWin)); max-out >= max/2 {
		y.granted += max - out
		ws.outbound(id, 0, uint32(max-out))
	}
	if err := ws.read(id, int(n)); err != nil {
		t.Fatal(err)
	}
}

// credit returns what the sender may send now on stream id.
func credit(ws *windows, id uint32) uint64 {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	sw := ws.lookupLocked(id)
	return sw.granted - sw.consumed
}

// checkWindow asserts the invariant: the credit out (the sender's, plus
// what waits unread) never exceeds the stream's window, and the stream's
// reservation covers it.
func checkWindow(t *testing.T, ws *windows, id uint32) *streamWindow {
	t.Helper()
	ws.mu.Lock()
	defer ws.mu.Unlock()
	sw := ws.lookupLocked(id)
	if out := sw.granted - sw.consumed; out > uint64(sw.win) || int64(out) > sw.free+sw.reserved || int64(sw.win) > sw.free+sw.reserved {
		t.Fatalf("stream %d: %d bytes out, window %d, reserved %d", id, out, sw.win, sw.reserved)
	}
	return sw
}

func TestWindowGrowsWhileTheReaderKeepsUp(t *testing.T) {
	node := NewWindowBudget(64 << 20)
	ws, sent := testWindows(4<<20, 32<<20, node)
	ws.noteRTT(int64(time.Hour)) // every window's worth is read "within two round trips"
	yamuxOpens(t, ws, 3)

	// The sender uses its credit; the reader keeps up.
	var y yamuxModel
	var consumed uint64
	for consumed < 64<<20 {
		checkWindow(t, ws, 3)
		c := credit(ws, 3)
		if c == 0 {
			t.Fatalf("the sender has no credit after %d bytes: the stream stalls", consumed)
		}
		n := min(c, 32<<10)
		y.read(t, ws, 3, n)
		consumed += n
	}
	sw := checkWindow(t, ws, 3)
	if sw.win != 4<<20 {
		t.Fatalf("window %d after 64 MiB read at once, want the maximum %d", sw.win, 4<<20)
	}
	if got := sent.total(3); got+initialWindow < consumed {
		t.Fatalf("%d bytes of credit sent for %d read", got, consumed)
	}
	if u := node.Used(); u != 4<<20 {
		t.Fatalf("node budget holds %d, want the stream's window %d", u, 4<<20)
	}

	// Reading slowly (a window's worth over more than eight round trips)
	// halves the window, down to the protocol's.
	ws.rtt.Store(1)
	for range 8 {
		y.read(t, ws, 3, credit(ws, 3))
		checkWindow(t, ws, 3)
	}
	if sw.win != initialWindow {
		t.Fatalf("window %d after slow reading, want %d", sw.win, initialWindow)
	}
	ws.forget(3)
	if u := node.Used(); u != 0 {
		t.Fatalf("node budget holds %d after the stream closed", u)
	}
	if b, n := ws.usage(); b != 0 || n != 0 {
		t.Fatalf("connection holds %d bytes for %d streams after the stream closed", b, n)
	}
}

func TestWindowNeverGrowsPastTheBudgets(t *testing.T) {
	node := NewWindowBudget(3 << 20)
	ws, _ := testWindows(4<<20, 2<<20, node)
	ws.noteRTT(int64(time.Hour))
	for _, id := range []uint32{3, 5} {
		yamuxOpens(t, ws, id)
	}
	ys := map[uint32]*yamuxModel{3: {}, 5: {}}
	for range 400 {
		for _, id := range []uint32{3, 5} {
			checkWindow(t, ws, id)
			ys[id].read(t, ws, id, credit(ws, id))
		}
		if b, _ := ws.usage(); b > 2<<20 {
			t.Fatalf("connection holds %d bytes of windows, its budget is %d", b, 2<<20)
		}
	}
	if ws.limited.Load() == 0 {
		t.Fatal("no growth refused, yet the streams want 8 MiB of a 2 MiB budget")
	}
	// The node's budget: a second connection grows only into what is left.
	ws2, _ := testWindows(4<<20, 32<<20, node)
	ws2.noteRTT(int64(time.Hour))
	yamuxOpens(t, ws2, 7)
	var y7 yamuxModel
	for range 400 {
		checkWindow(t, ws2, 7)
		y7.read(t, ws2, 7, credit(ws2, 7))
		if u := node.Used(); u > node.Limit() {
			t.Fatalf("node budget holds %d, its limit is %d", u, node.Limit())
		}
	}
	ws.close()
	ws2.close()
	if u := node.Used(); u != 0 {
		t.Fatalf("node budget holds %d after every connection closed", u)
	}
}

func TestIdleConnectionsTakeNoBudget(t *testing.T) {
	node := NewWindowBudget(8 << 20)
	for range 1000 { // idle peers: each has its control stream open
		ws, _ := testWindows(4<<20, 32<<20, node)
		ws.noteRTT(int64(time.Hour))
		yamuxOpens(t, ws, yamuxCtrlStream)
	}
	if u := node.Used(); u != 0 {
		t.Fatalf("1,000 idle connections hold %d bytes of the node's budget", u)
	}
	ws, _ := testWindows(4<<20, 32<<20, node)
	ws.noteRTT(int64(time.Hour))
	yamuxOpens(t, ws, 3)
	var y yamuxModel
	for range 100 {
		y.read(t, ws, 3, credit(ws, 3))
	}
	if sw := checkWindow(t, ws, 3); sw.win != 4<<20 {
		t.Fatalf("beside 1,000 idle connections a stream's window reached %d, want %d", sw.win, 4<<20)
	}
}

func TestWindowUpdatesForClosedStreamsGrantNothing(t *testing.T) {
	ws, _ := testWindows(4<<20, 32<<20, NewWindowBudget(64<<20))
	yamuxOpens(t, ws, 3)
	ws.forget(3)
	if d, send := ws.outbound(3, 0, 1<<20); send || d != 0 {
		t.Fatalf("update for a forgotten stream: delta %d, sent %v", d, send)
	}
	if d, send := ws.outbound(3, yamuxFlagFIN, 1<<20); !send || d != 0 {
		t.Fatalf("FIN for a forgotten stream: delta %d, sent %v; want 0, true", d, send)
	}
	yamuxOpens(t, ws, yamuxCtrlStream) // kept inline, not in the map
	if b, n := ws.usage(); b != 0 || n != 1 || ws.streams == nil {
		t.Fatalf("after the control stream opened: %d bytes for %d streams", b, n)
	}
	ws.forget(yamuxCtrlStream)
	if d, send := ws.outbound(yamuxCtrlStream, 0, 1<<20); send || d != 0 {
		t.Fatalf("update for the forgotten control stream: delta %d, sent %v", d, send)
	}
	yamuxOpens(t, ws, 5)
	if d, send := ws.outbound(5, yamuxFlagRST, 0); !send || d != 0 {
		t.Fatalf("RST: delta %d, sent %v", d, send)
	}
	if b, n := ws.usage(); b != 0 || n != 0 {
		t.Fatalf("%d bytes for %d streams held after a reset", b, n)
	}
}

// longPath connects a client and a server Conn over the in-memory network
// with oneWay of delay each way and buffers large enough not to limit a
// tuned window.
func longPath(t *testing.T, oneWay time.Duration, ccfg, scfg *Config) (client, server *Conn) {
	t.Helper()
	nw := partition.NewNetwork(partition.WithBufferSize(64 << 20))
	t.Cleanup(func() { nw.Close() })
	nw.Delay("client", "server", oneWay)
	ln, err := nw.Host("server").Listen(":1")
	if err != nil {
		t.Fatal(err)
	}
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	cn, err := nw.Host("client").Dial(context.Background(), "server:1")
	if err != nil {
		t.Fatal(err)
	}
	sn := within(t, 10*time.Second, accepted, "accept")
	ln.Close()
	return pairOver(t, "mem", cn, sn, ccfg, scfg)
}

// upload streams size bytes to the "drain" handler and returns the rate.
func upload(c *Conn, size int64) (float64, error) {
	s, err := c.OpenStream(context.Background(), "drain")
	if err != nil {
		return 0, err
	}
	defer s.Close()
	start := time.Now()
	if _, err := io.CopyN(s, zeros{}, size); err != nil {
		return 0, err
	}
	s.CloseWrite()
	var ack [1]byte
	if _, err := io.ReadFull(s, ack[:]); err != nil {
		return 0, err
	}
	return float64(size) / time.Since(start).Seconds(), nil
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }

// drainMux serves "drain": read everything, then answer one byte.
func drainMux(read *atomic.Int64) *Mux {
	m := NewMux()
	m.HandleStream("drain", StreamFunc(func(ctx context.Context, s *Stream) error {
		n, err := io.Copy(io.Discard, s)
		if read != nil {
			read.Add(n)
		}
		if err != nil {
			return err
		}
		_, err = s.Write([]byte{1})
		return err
	}))
	return m
}

func TestStreamWindowTunesToALongPath(t *testing.T) {
	// 50 ms round trip: a fixed 256 KiB window carries at most 5 MiB/s.
	c, srv := longPath(t, 25*time.Millisecond, nil, &Config{Mux: drainMux(nil)})
	stalls := ttest.WatchStalls(50 * time.Millisecond)
	defer stalls.Stop()
	start := time.Now()
	rate, err := upload(c, 32<<20)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("32 MiB over a 50 ms round trip: %.1f MiB/s, %d doublings", rate/(1<<20), srv.wire.win.grown.Load())
	if srv.wire.win.grown.Load() < 4 {
		t.Fatalf("the window doubled %d times: it should reach 4 MiB at least", srv.wire.win.grown.Load())
	}
	// Twice what any fixed 256 KiB window can carry, whatever the CPU.
	if ceiling := float64(initialWindow) / 0.050; rate < 2*ceiling {
		if stalls.Overlap(start, time.Now()) > 0 {
			t.Skipf("%.1f MiB/s, but the process was stalled: the machine is too busy to tell", rate/(1<<20))
		}
		t.Fatalf("%.1f MiB/s: a fixed window carries %.1f MiB/s on this path", rate/(1<<20), ceiling/(1<<20))
	}
}

// A rate-limited path, as real ones are: 16 MiB/s, a 100 ms round trip
// with jitter, and a router's queue (the Link's default). The window must
// grow to the bandwidth-delay product (1.6 MiB) despite the delays that
// credit returned in steps, the link's pacing and its jitter add: 10-13
// MiB/s measured, 4.5 when credit went back in quarters and windows grew
// only under 1.2 round trips; a fixed 256 KiB window carries 2.5 MiB/s.
func TestStreamWindowFillsARateLimitedPath(t *testing.T) {
	const rate = 16 << 20
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	p, err := partition.NewProxy(ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	l := partition.Link{Delay: 45 * time.Millisecond, Jitter: 10 * time.Millisecond, Rate: rate}
	p.SetLink(l, l)
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	cn, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	sn := within(t, 10*time.Second, accepted, "accept")
	c, srv := pairOver(t, "tcp", cn, sn, nil, &Config{Mux: drainMux(nil)})
	stalls := ttest.WatchStalls(50 * time.Millisecond)
	defer stalls.Stop()
	start := time.Now()
	got, err := upload(c, 48<<20)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("48 MiB over 16 MiB/s and a 100-120 ms round trip: %.1f MiB/s, %d growths", got/(1<<20), srv.wire.win.grown.Load())
	if got < 0.4*rate {
		if stalls.Overlap(start, time.Now()) > 0 {
			t.Skipf("%.1f MiB/s, but the process was stalled: the machine is too busy to tell", got/(1<<20))
		}
		t.Fatalf("%.1f MiB/s of a 16 MiB/s link: the window stopped short of the path", got/(1<<20))
	}
}

func TestSlowReaderBoundsTheSender(t *testing.T) {
	var read atomic.Int64
	gate := make(chan struct{})
	m := NewMux()
	m.HandleStream("slow", StreamFunc(func(ctx context.Context, s *Stream) error {
		<-gate
		buf := make([]byte, 4<<10)
		for {
			n, err := s.Read(buf)
			read.Add(int64(n))
			if err != nil {
				return nil
			}
			time.Sleep(time.Millisecond) // a slow disk
		}
	}))
	c, srv := pair(t, "tcp", nil, &Config{Mux: m})
	s, err := c.OpenStream(context.Background(), "slow")
	if err != nil {
		t.Fatal(err)
	}
	var written atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 16<<10)
		for {
			n, err := s.Write(buf)
			written.Add(int64(n))
			if err != nil {
				return
			}
		}
	}()
	// Nobody reads: the writer stops at the protocol's initial window.
	ttest.WaitFor(t, 10*time.Second, func() bool {
		w := written.Load()
		time.Sleep(50 * time.Millisecond)
		return w > 0 && written.Load() == w
	}, "the writer blocked on the window")
	if w := written.Load(); w > initialWindow {
		t.Fatalf("%d bytes written to a reader that reads nothing; the window is %d", w, initialWindow)
	}
	close(gate)
	deadline := time.Now().Add(2 * time.Second)
	worst := int64(0)
	for time.Now().Before(deadline) {
		worst = max(worst, written.Load()-read.Load())
		time.Sleep(5 * time.Millisecond)
	}
	if worst > 2*initialWindow {
		t.Fatalf("the writer got %d bytes ahead of a slow reader: its window grew though the reader fell behind", worst)
	}
	if read.Load() == 0 {
		t.Fatal("the slow reader read nothing")
	}
	s.Close()
	<-done
	ttest.WaitFor(t, 10*time.Second, func() bool {
		b, n := srv.wire.win.usage()
		return n == 1 && b == 0 // the control stream's, at its first window
	}, "the server to forget the stream")
}

func TestWindowRTTFollowsThePathNotTheQueue(t *testing.T) {
	ws, _ := testWindows(4<<20, 32<<20, nil)
	ws.noteRTT(int64(50 * time.Millisecond))
	for range 10 { // probes behind bulk data: the queue, not the path
		ws.noteRTT(int64(150 * time.Millisecond))
	}
	if got := time.Duration(ws.rtt.Load()); got > 80*time.Millisecond {
		t.Fatalf("estimate %v after ten queued probes: it follows the queue", got)
	}
	ws.noteRTT(int64(40 * time.Millisecond))
	if got := time.Duration(ws.rtt.Load()); got != 40*time.Millisecond {
		t.Fatalf("estimate %v after a 40ms sample", got)
	}
	for range 200 { // the path really got longer
		ws.noteRTT(int64(200 * time.Millisecond))
	}
	if got := time.Duration(ws.rtt.Load()); got < 190*time.Millisecond {
		t.Fatalf("estimate %v after 200 samples of 200ms: it does not follow a longer path", got)
	}
}

func TestStreamsShareALongPathAndCallsPassThem(t *testing.T) {
	m := drainMux(nil)
	m.Handle("echo", Func(func(ctx context.Context, req []byte) ([]byte, error) { return req, nil }))
	c, _ := longPath(t, 25*time.Millisecond, nil, &Config{Mux: m})
	stalls := ttest.WatchStalls(20 * time.Millisecond)
	defer stalls.Stop()
	callP99 := func(n int) time.Duration {
		var worst []time.Duration
		for range n {
			start := time.Now()
			var out []byte
			if err := c.Call(context.Background(), "echo", make([]byte, 64), &out); err != nil {
				t.Fatal(err)
			}
			worst = append(worst, time.Since(start))
		}
		slices.Sort(worst)
		return worst[len(worst)*99/100]
	}
	idle := callP99(20)

	start := time.Now()
	rates := make(chan float64, 2)
	for range 2 {
		go func() {
			r, err := upload(c, 24<<20)
			if err != nil {
				t.Error(err)
			}
			rates <- r
		}()
	}
	busy := callP99(20)
	a, b := <-rates, <-rates
	t.Logf("two streams: %.1f and %.1f MiB/s; 64 B calls p99 %v idle, %v beside them", a/(1<<20), b/(1<<20), idle, busy)
	excused := stalls.Overlap(start, time.Now())
	if max(a, b) > 2*min(a, b) && excused == 0 {
		t.Errorf("unfair: %.1f vs %.1f MiB/s", a/(1<<20), b/(1<<20))
	}
	// Under the race detector the streams are CPU-bound and the machine's
	// queues, not the windows, set the latency.
	if bound := idle + 50*time.Millisecond + 10*time.Millisecond + excused; busy > bound && !ttest.Race {
		t.Errorf("calls beside bulk streams: p99 %v, over the idle %v plus a round trip plus 10ms", busy, idle)
	}
}
