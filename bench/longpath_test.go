package bench

import (
	"context"

	"io"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/tetherrpc/tether/partition"
	"github.com/tetherrpc/tether/rpc"
)

// Long paths: one bulk stream through a partition.Proxy whose Link delays
// every byte (the kernel here has no netem), beside raw TCP and a plain
// yamux stream through the same link, in one run:
//
//	cd bench && go test -run '^$' -bench 'LongPath' -benchtime 1x

// paths are the links measured: loopback (no proxy); 50 ms and 200 ms
// round trips with no rate limit and a queue large enough for 1 GiB/s, so
// the link carries what the endpoints allow; and an ocean on a 200 Mbit/s
// link: a 300-360 ms round trip (30 ms of jitter each way), 25 MiB/s, and
// the Link's default queue (two round trips of data), as a router's.
var paths = []struct {
	name string
	link partition.Link
}{
	{"loopback", partition.Link{}},
	{"rtt50ms", unlimited(25 * time.Millisecond)},
	{"rtt200ms", unlimited(100 * time.Millisecond)},
	{"rtt300ms-25MiBps", partition.Link{Delay: 150 * time.Millisecond, Jitter: 30 * time.Millisecond, Rate: 25 << 20}},
}

// unlimited is a link of oneWay delay each way with no rate limit.
func unlimited(oneWay time.Duration) partition.Link {
	return partition.Link{Delay: oneWay, Queue: int(2 * oneWay.Seconds() * (1 << 30))}
}

// streamSize is what one stream carries per benchmark op: enough for a
// tuned window to reach its rate and hold it for a while.
func streamSize(l partition.Link, system string) int64 {
	switch {
	case l.Delay == 0:
		return 256 << 20
	case system == "yamux": // 256 KiB per round trip: keep it under 15 s
		return int64(float64(10<<20) * float64(50*time.Millisecond) / float64(2*l.Delay))
	default:
		return 128 << 20
	}
}

// linked returns the address to dial for target: target itself on
// loopback, else a proxy's carrying it over l each way.
func linked(tb testing.TB, target string, l partition.Link) string {
	if l == (partition.Link{}) {
		return target
	}
	p, err := partition.NewProxy(target)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { p.Close() })
	p.SetLink(l, l)
	return p.Addr()
}

// sink accepts one connection on a fresh loopback listener and hands it to
// serve; it returns the listener's address.
func sink(tb testing.TB, serve func(net.Conn)) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		c, err := ln.Accept()
		ln.Close()
		if err == nil {
			serve(c)
		}
	})
	tb.Cleanup(func() { ln.Close(); wg.Wait() })
	return ln.Addr().String()
}

// zeros is an endless source of zero bytes.
type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }

// upload copies size bytes into w, half-closes with closeWrite, and waits
// for the far end to acknowledge the end with one byte read from r.
func upload(w io.Writer, r io.Reader, closeWrite func() error, size int64) error {
	if _, err := io.CopyN(w, zeros{}, size); err != nil {
		return err
	}
	if err := closeWrite(); err != nil {
		return err
	}
	var ack [1]byte
	_, err := io.ReadFull(r, ack[:])
	return err
}

// drainAck reads rw to its end, then writes one byte.
func drainAck(rw io.ReadWriter) {
	io.Copy(io.Discard, rw)
	rw.Write([]byte{1})
}

func BenchmarkLongPath(b *testing.B) {
	for _, path := range paths {
		b.Run(path.name+"/tcp", func(b *testing.B) {
			size := streamSize(path.link, "tcp")
			b.SetBytes(size)
			for b.Loop() {
				addr := linked(b, sink(b, func(c net.Conn) { drainAck(c); c.Close() }), path.link)
				c, err := net.Dial("tcp", addr)
				if err != nil {
					b.Fatal(err)
				}
				if err := upload(c, c, c.(*net.TCPConn).CloseWrite, size); err != nil {
					b.Fatal(err)
				}
				c.Close()
			}
		})
		b.Run(path.name+"/yamux", func(b *testing.B) {
			size := streamSize(path.link, "yamux")
			b.SetBytes(size)
			for b.Loop() {
				addr := linked(b, sink(b, func(c net.Conn) {
					s, err := yamux.Server(c, nil)
					if err != nil {
						return
					}
					defer s.Close()
					if st, err := s.AcceptStream(); err == nil {
						drainAck(st)
						st.Close()
					}
				}), path.link)
				c, err := net.Dial("tcp", addr)
				if err != nil {
					b.Fatal(err)
				}
				s, _ := yamux.Client(c, nil)
				st, err := s.OpenStream()
				if err != nil {
					b.Fatal(err)
				}
				if err := upload(st, st, st.Close, size); err != nil {
					b.Fatal(err)
				}
				s.Close()
			}
		})
		b.Run(path.name+"/tether", func(b *testing.B) {
			size := streamSize(path.link, "tether")
			b.SetBytes(size)
			var grown uint64
			for b.Loop() {
				client, server := tetherOverLink(b, path.link, drainMux())
				s, err := client.OpenStream(context.Background(), "drain")
				if err != nil {
					b.Fatal(err)
				}
				if err := upload(s, s, s.CloseWrite, size); err != nil {
					b.Fatal(err)
				}
				grown = server.Stats().WindowGrowths
				s.Close()
				closeTether(client, server)
			}
			b.ReportMetric(float64(grown), "doublings")
		})
	}
}

// drainMux serves "drain" (read to the end, answer one byte) and "echo".
func drainMux() *rpc.Mux {
	m := echoMux()
	m.HandleStream("drain", rpc.StreamFunc(func(ctx context.Context, s *rpc.Stream) error {
		drainAck(s)
		return nil
	}))
	return m
}

// tetherOverLink connects a pair of rpc.Conns through l each way (none
// if zero); the server serves mux.
func tetherOverLink(tb testing.TB, l partition.Link, mux *rpc.Mux) (client, server *rpc.Conn) {
	conns := make(chan net.Conn, 1)
	addr := sink(tb, func(c net.Conn) { conns <- c })
	if l != (partition.Link{}) {
		p, err := partition.NewProxy(addr)
		if err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(func() { p.Close() })
		p.SetLink(l, l)
		addr = p.Addr()
	}
	cc, err := net.Dial("tcp", addr)
	if err != nil {
		tb.Fatal(err)
	}
	sc := <-conns
	ctx := context.Background()
	type res struct {
		c   *rpc.Conn
		err error
	}
	ch := make(chan res, 1)
	go func() {
		c, err := rpc.Server(ctx, sc, &rpc.Config{Mux: mux})
		ch <- res{c, err}
	}()
	client, err = rpc.Client(ctx, cc, &rpc.Config{})
	r := <-ch
	if err != nil || r.err != nil {
		tb.Fatalf("tether handshake: client %v, server %v", err, r.err)
	}
	return client, r.c
}

// BenchmarkLongPathCalls measures 64 B calls on a 50 ms round trip (and
// on loopback), alone and beside two bulk streams on the same connection,
// and the two streams' rates (fairness).
func BenchmarkLongPathCalls(b *testing.B) {
	b.Run("loopback", func(b *testing.B) { benchCallsBesideBulk(b, partition.Link{}) })
	b.Run("unlimited", func(b *testing.B) { benchCallsBesideBulk(b, partition.Link{Delay: 25 * time.Millisecond}) })
	b.Run("100MiBps", func(b *testing.B) {
		benchCallsBesideBulk(b, partition.Link{Delay: 25 * time.Millisecond, Rate: 100 << 20})
	})
}

func benchCallsBesideBulk(b *testing.B, link partition.Link) {
	for b.Loop() {
		client, server := tetherOverLink(b, link, drainMux())
		size, settle := int64(256<<20), 300*time.Millisecond // past the windows' first growth
		if link.Delay == 0 {
			size, settle = 2<<30, 20*time.Millisecond
		}
		calls := func(n int) []time.Duration {
			lat := make([]time.Duration, 0, n)
			for range n {
				start := time.Now()
				var out []byte
				if err := client.Call(context.Background(), "echo", make([]byte, 64), &out); err != nil {
					b.Fatal(err)
				}
				lat = append(lat, time.Since(start))
			}
			slices.Sort(lat)
			return lat
		}
		idle := calls(100)
		var rates [2]float64
		var wg sync.WaitGroup
		var running atomic.Int32
		running.Store(2)
		for i := range rates {
			wg.Go(func() {
				defer running.Add(-1)
				s, err := client.OpenStream(context.Background(), "drain")
				if err != nil {
					b.Error(err)
					return
				}
				defer s.Close()
				start := time.Now()
				if err := upload(s, s, s.CloseWrite, size); err != nil {
					b.Error(err)
				}
				rates[i] = float64(size) / time.Since(start).Seconds() / (1 << 20)
			})
		}
		time.Sleep(settle)
		var busy []time.Duration
		var mu sync.Mutex
		var callers sync.WaitGroup
		for range 4 {
			callers.Go(func() {
				for running.Load() == 2 {
					lat := calls(5)
					mu.Lock()
					busy = append(busy, lat...)
					mu.Unlock()
				}
			})
		}
		callers.Wait()
		wg.Wait()
		slices.Sort(busy)
		closeTether(client, server)
		b.ReportMetric(ms(idle[len(idle)/2]), "idle-p50-ms")
		b.ReportMetric(ms(idle[len(idle)*99/100]), "idle-p99-ms")
		if len(busy) > 0 {
			b.ReportMetric(ms(busy[len(busy)/2]), "bulk-p50-ms")
			b.ReportMetric(ms(busy[len(busy)*99/100]), "bulk-p99-ms")
			b.ReportMetric(float64(len(busy)), "bulk-calls")
		}
		b.ReportMetric(rates[0], "MiB/s-stream1")
		b.ReportMetric(rates[1], "MiB/s-stream2")
	}
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// BenchmarkManyUploads has 100 peers each upload one bulk stream to one
// node at once, through a 50 ms round trip, to readers slower than the
// link (a disk), and reports the windows held at the peak beside the
// node's budget. (The node's heap alone is measured by the long-path
// system test, with the peers in another process.)
func BenchmarkManyUploads(b *testing.B) {
	const peers = 100
	budget := rpc.NewWindowBudget(64 << 20)
	for b.Loop() {
		mux := rpc.NewMux()
		mux.HandleStream("drain", rpc.StreamFunc(func(ctx context.Context, s *rpc.Stream) error {
			buf := make([]byte, 32<<10)
			for {
				if _, err := s.Read(buf); err != nil {
					break
				}
				time.Sleep(100 * time.Microsecond) // ~300 MiB/s per reader at most
			}
			s.Write([]byte{1})
			return nil
		}))
		var servers []*rpc.Conn
		var clients []*rpc.Conn
		for range peers {
			conns := make(chan net.Conn, 1)
			addr := linked(b, sink(b, func(c net.Conn) { conns <- c }), unlimited(25*time.Millisecond))
			cc, err := net.Dial("tcp", addr)
			if err != nil {
				b.Fatal(err)
			}
			sc := <-conns
			ch := make(chan *rpc.Conn, 1)
			go func() {
				c, err := rpc.Server(context.Background(), sc, &rpc.Config{Mux: mux, WindowBudget: budget})
				if err != nil {
					b.Error(err)
				}
				ch <- c
			}()
			c, err := rpc.Client(context.Background(), cc, &rpc.Config{})
			if err != nil {
				b.Fatal(err)
			}
			clients, servers = append(clients, c), append(servers, <-ch)
		}
		var peakUsed atomic.Int64
		stop := make(chan struct{})
		var wg sync.WaitGroup
		wg.Go(func() {
			t := time.NewTicker(50 * time.Millisecond)
			defer t.Stop()
			for {
				select {
				case <-stop:
					return
				case <-t.C:
					peakUsed.Store(max(peakUsed.Load(), budget.Used()))
				}
			}
		})
		start := time.Now()
		var up sync.WaitGroup
		for _, c := range clients {
			up.Go(func() {
				s, err := c.OpenStream(context.Background(), "drain")
				if err != nil {
					b.Error(err)
					return
				}
				defer s.Close()
				if err := upload(s, s, s.CloseWrite, 16<<20); err != nil {
					b.Error(err)
				}
			})
		}
		up.Wait()
		took := time.Since(start)
		close(stop)
		wg.Wait()
		for i := range clients {
			closeTether(clients[i], servers[i])
		}
		b.ReportMetric(float64(peers*16)/took.Seconds(), "MiB/s-total")
		b.ReportMetric(float64(peakUsed.Load())/(1<<20), "MiB-peak-windows")
		b.ReportMetric(float64(budget.Limit())/(1<<20), "MiB-budget")
	}
	if u := budget.Used(); u != 0 {
		b.Fatalf("%d bytes of windows still held after every connection closed", u)
	}
}
