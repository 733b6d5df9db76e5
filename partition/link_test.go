package partition_test

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/tetherrpc/tether/internal/ttest"
	"github.com/tetherrpc/tether/partition"
)

const mib = 1 << 20

// overLink returns a proxy with links up and down and both ends of a
// connection through it.
func overLink(t testing.TB, up, down partition.Link) (p *partition.Proxy, client, server net.Conn) {
	t.Helper()
	srv := startServer(t)
	p = startProxy(t, srv.ln.Addr().String())
	p.SetLink(up, down)
	client = dialProxy(t, p)
	server = srv.accept(t, 5*time.Second)
	return p, client, server
}

// oneWay writes a byte to from and returns how long it took to reach to.
func oneWay(t *testing.T, from, to net.Conn) time.Duration {
	t.Helper()
	start := time.Now()
	write(t, from, "x")
	readN(t, to, 1, 10*time.Second)
	return time.Since(start)
}

// stallCheck fails t with msg, or skips it if this process stalled between
// from and to long enough to explain the miss.
func stallCheck(t *testing.T, s *ttest.Stalls, from, to time.Time, msg string) {
	t.Helper()
	if d := s.Overlap(from, to); d > 0 {
		t.Skipf("%s, but this process stalled %v of that time: the machine's doing", msg, d)
	}
	t.Fatal(msg)
}

func TestLinkDelayEachWay(t *testing.T) {
	const upDelay, downDelay = 60 * time.Millisecond, 20 * time.Millisecond
	p, client, server := overLink(t, partition.Link{Delay: upDelay}, partition.Link{Delay: downDelay})
	stalls := ttest.WatchStalls(10 * time.Millisecond)
	defer stalls.Stop()
	for _, dir := range []struct {
		name     string
		from, to net.Conn
		d        time.Duration
	}{{"up", client, server, upDelay}, {"down", server, client, downDelay}} {
		start := time.Now()
		least := time.Hour
		for range 5 {
			took := oneWay(t, dir.from, dir.to)
			if took < dir.d {
				t.Fatalf("%s: one way took %v through a link of %v", dir.name, took, dir.d)
			}
			least = min(least, took)
		}
		if bound := dir.d + ttest.Scaled(30*time.Millisecond); least > bound {
			stallCheck(t, stalls, start, time.Now(), fmt.Sprintf("%s: the quickest of 5 one-way trips took %v, over %v", dir.name, least, bound))
		}
	}

	// The link is the path, not a fault: Heal after Blackhole keeps it.
	p.Blackhole()
	p.Heal()
	if took := oneWay(t, client, server); took < upDelay {
		t.Fatalf("after Blackhole and Heal one way took %v; the link of %v is gone", took, upDelay)
	}
}

// A delay adds latency, not a pause per read: a stream of writes arrives
// Delay behind, as fast as it was written.
func TestLinkDelayIsLatencyNotPause(t *testing.T) {
	const d, n, gap = 100 * time.Millisecond, 10, 10 * time.Millisecond
	_, client, server := overLink(t, partition.Link{Delay: d}, partition.Link{Delay: d})
	stalls := ttest.WatchStalls(10 * time.Millisecond)
	defer stalls.Stop()
	start := time.Now()
	go func() {
		tk := time.NewTicker(gap)
		defer tk.Stop()
		for range n {
			if _, err := client.Write([]byte{1}); err != nil {
				return
			}
			<-tk.C
		}
	}()
	readN(t, server, n, 10*time.Second)
	took := time.Since(start)
	if took < d+(n-1)*gap {
		t.Fatalf("%d writes %v apart arrived within %v through a %v link", n, gap, took, d)
	}
	// A pause per read would take n×d = 1 s.
	if bound := d + n*gap + 200*time.Millisecond; took > bound {
		stallCheck(t, stalls, start, time.Now(), fmt.Sprintf("%d writes %v apart took %v through a %v link, over %v", n, gap, took, d, bound))
	}
}

func TestLinkJitterSpreadsAndKeepsOrder(t *testing.T) {
	const d, jitter, n, gap = 10 * time.Millisecond, 40 * time.Millisecond, 30, 10 * time.Millisecond
	link := partition.Link{Delay: d, Jitter: jitter}
	_, client, server := overLink(t, link, link)
	sent := make(chan time.Time, n)
	go func() {
		tk := time.NewTicker(gap)
		defer tk.Stop()
		for i := range n {
			sent <- time.Now()
			if _, err := client.Write(binary.BigEndian.AppendUint32(nil, uint32(i))); err != nil {
				return
			}
			<-tk.C
		}
	}()
	least, most := time.Hour, time.Duration(0)
	for i := range n {
		b := readN(t, server, 4, 10*time.Second)
		took := time.Since(<-sent)
		if got := binary.BigEndian.Uint32(b); got != uint32(i) {
			t.Fatalf("message %d arrived in place %d: the link reordered", got, i)
		}
		if took < d {
			t.Fatalf("message %d took %v, under the delay %v", i, took, d)
		}
		least, most = min(least, took), max(most, took)
	}
	t.Logf("latency %v to %v through delay %v, jitter %v", least, most, d, jitter)
	if most-least < jitter/4 {
		t.Fatalf("latencies spread over %v (from %v to %v); jitter %v should spread them more", most-least, least, most, jitter)
	}
	// The least one waited for nothing: no jitter of its own, nobody ahead.
	if bound := d + jitter + ttest.Scaled(50*time.Millisecond); least > bound {
		t.Fatalf("the quickest message took %v, over %v", least, bound)
	}
}

func TestLinkRate(t *testing.T) {
	const rate, size, d = 8 * mib, 4 * mib, 25 * time.Millisecond
	link := partition.Link{Delay: d, Rate: rate}
	_, client, server := overLink(t, link, link)
	stalls := ttest.WatchStalls(10 * time.Millisecond)
	defer stalls.Stop()
	data := pattern(size, 3)
	start := time.Now()
	go client.Write(data)
	got := readN(t, server, size, ttest.Scaled(10*time.Second))
	took := time.Since(start)
	if !bytes.Equal(got, data) {
		t.Fatal("data arrived changed")
	}
	want := d + time.Duration(size)*time.Second/rate // 525 ms
	t.Logf("%d MiB through %d MiB/s and %v took %v (%.1f MiB/s)", size/mib, rate/mib, d, took, float64(size)/mib/took.Seconds())
	if took < want*98/100 {
		t.Fatalf("%d MiB crossed a %d MiB/s link in %v, under %v", size/mib, rate/mib, took, want)
	}
	if bound := want + ttest.Scaled(250*time.Millisecond); took > bound {
		stallCheck(t, stalls, start, time.Now(), fmt.Sprintf("%d MiB crossed a %d MiB/s link in %v, over %v", size/mib, rate/mib, took, bound))
	}
}

// A long path with a queue to match carries a raw TCP stream fast: the
// link, not loopback, bounds what a window-tuning test measures.
func TestLinkLongPathThroughput(t *testing.T) {
	const rtt, size, floor = 50 * time.Millisecond, 256 * mib, 100 * mib
	link := partition.Link{Delay: rtt / 2}
	_, client, server := overLink(t, link, link)
	stalls := ttest.WatchStalls(20 * time.Millisecond)
	defer stalls.Stop()
	start := time.Now()
	took := stream(t, client, server, size)
	rate := float64(size) / took.Seconds()
	t.Logf("%d MiB over a %v round trip in %v: %.0f MiB/s", size/mib, rtt, took, rate/mib)
	if rate < floor {
		stallCheck(t, stalls, start, time.Now(), fmt.Sprintf("a %v round trip carried %.0f MiB/s, under %d MiB/s", rtt, rate/mib, floor/mib))
	}
}

// stream sends n bytes from client to server as fast as they go and
// returns how long they took to arrive.
func stream(t testing.TB, client, server net.Conn, n int64) time.Duration {
	t.Helper()
	start := time.Now()
	go func() {
		buf := make([]byte, 256<<10)
		for left := n; left > 0; left -= int64(len(buf)) {
			if _, err := client.Write(buf[:min(left, int64(len(buf)))]); err != nil {
				return
			}
		}
	}()
	server.SetReadDeadline(time.Now().Add(ttest.Scaled(time.Minute)))
	defer server.SetReadDeadline(time.Time{})
	if _, err := io.CopyN(io.Discard, server, n); err != nil {
		t.Fatalf("after %v: %v", time.Since(start), err)
	}
	return time.Since(start)
}

func BenchmarkLink(b *testing.B) {
	const block = mib
	b.Run("direct", func(b *testing.B) {
		client, server := ttest.TCPPair(b)
		benchStream(b, client, server, block)
	})
	for _, c := range []struct {
		name string
		link partition.Link
	}{
		{"none", partition.Link{}},
		{"rtt=50ms", partition.Link{Delay: 25 * time.Millisecond}},
		{"rtt=200ms", partition.Link{Delay: 100 * time.Millisecond}},
		{"rtt=200ms/queue=256MiB", partition.Link{Delay: 100 * time.Millisecond, Queue: 256 * mib}},
		{"rtt=50ms/rate=100MiB", partition.Link{Delay: 25 * time.Millisecond, Rate: 100 * mib}},
	} {
		b.Run(c.name, func(b *testing.B) {
			_, client, server := overLink(b, c.link, c.link)
			benchStream(b, client, server, block)
		})
	}
}

// benchStream measures one raw TCP stream, a block per op.
func benchStream(b *testing.B, client, server net.Conn, block int64) {
	b.SetBytes(block)
	b.ReportAllocs()
	b.ResetTimer()
	stream(b, client, server, int64(b.N)*block)
}

// Through a long path a stream moves at most one receive window per round
// trip: the proxy's kernel acknowledges TCP at once, but yamux's window
// updates cross the link. This is what a test of window tuning relies on.
func TestLinkWindowBoundsYamuxStream(t *testing.T) {
	const rtt, size = 50 * time.Millisecond, 4 * mib
	link := partition.Link{Delay: rtt / 2}
	_, client, server := overLink(t, link, link)
	cfg := yamux.DefaultConfig()
	cfg.LogOutput = io.Discard
	window := int(cfg.MaxStreamWindowSize)
	cs, err := yamux.Client(client, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Close()
	ss, err := yamux.Server(server, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer ss.Close()
	stalls := ttest.WatchStalls(10 * time.Millisecond)
	defer stalls.Stop()

	out, err := cs.Open()
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	go out.Write(make([]byte, size))
	in, err := ss.Accept()
	if err != nil {
		t.Fatal(err)
	}
	in.SetReadDeadline(time.Now().Add(ttest.Scaled(30 * time.Second)))
	if _, err := io.CopyN(io.Discard, in, size); err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	rate, most := float64(size)/took.Seconds(), float64(window)/rtt.Seconds()
	t.Logf("%d MiB with a %d KiB window over a %v round trip: %.2f MiB/s; one window per round trip is %.2f MiB/s",
		size/mib, window>>10, rtt, rate/mib, most/mib)
	// The first window goes out before any round trip: the rest wait.
	if least := time.Duration(float64(size-window) / most * float64(time.Second)); took < least {
		t.Fatalf("%d MiB took %v, under the %v that one window per round trip allows", size/mib, took, least)
	}
	// yamux hands the window back in halves as the reader drains it, so
	// nearly a whole window stays in flight; half is the generous floor.
	if rate < most/2 {
		stallCheck(t, stalls, start, time.Now(), fmt.Sprintf("%.2f MiB/s, under half a window per round trip", rate/mib))
	}
}
