package peer

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/tetherrpc/tether/liveness"
	"github.com/tetherrpc/tether/rpc"
)

// The hot paths at 10 and at 10,000 peers: each should cost the same at
// both sizes. The peers are real rpc connections over net.Pipe, with
// liveness probing slowed to once an hour so that the probes of 10,000
// idle peers do not load the machine the benchmark runs on.

var benchSizes = []int{10, 10_000}

// quietLiveness is liveness.LAN without idle probing.
func quietLiveness() liveness.Config {
	c := liveness.LAN()
	c.Interval = time.Hour
	return c
}

// fleet is a registry holding n peers, each the client end of a pipe
// whose server end serves mux.
type fleet struct {
	r      *Registry
	peers  []*Peer
	mu     sync.Mutex
	theirs []*rpc.Conn
	mux    *rpc.Mux
	seq    int
	wrap   func(net.Conn) net.Conn // our end of each pipe, if set
}

// newFleet makes a registry with cfg (quietLiveness if unset) and n peers,
// torn down when tb ends.
func newFleet(tb testing.TB, cfg Config, n int) *fleet {
	tb.Helper()
	return newFleetWrapped(tb, cfg, n, nil)
}

// newFleetWrapped is newFleet with our end of each pipe wrapped by wrap.
func newFleetWrapped(tb testing.TB, cfg Config, n int, wrap func(net.Conn) net.Conn) *fleet {
	tb.Helper()
	if cfg.LocalID == "" {
		cfg.LocalID = "local"
	}
	if cfg.Liveness == (liveness.Config{}) {
		cfg.Liveness = quietLiveness()
	}
	r, err := New(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	mux := rpc.NewMux()
	mux.Handle("echo", rpc.Func(func(_ context.Context, b []byte) ([]byte, error) { return b, nil }))
	f := &fleet{r: r, mux: mux, wrap: wrap}
	tb.Cleanup(f.close)
	f.peers = make([]*Peer, n)
	var wg sync.WaitGroup
	errc := make(chan error, 1)
	sem := make(chan struct{}, 32)
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			p, err := f.add()
			if err != nil {
				select {
				case errc <- err:
				default:
				}
				return
			}
			f.peers[i] = p
		}()
	}
	wg.Wait()
	select {
	case err := <-errc:
		tb.Fatal(err)
	default:
	}
	return f
}

// add connects one more peer, with a fresh ID.
func (f *fleet) add() (*Peer, error) {
	f.mu.Lock()
	f.seq++
	id := fmt.Sprintf("p%05d", f.seq)
	f.mu.Unlock()
	var a net.Conn
	a, b := net.Pipe()
	if f.wrap != nil {
		a = f.wrap(a)
	}
	ch := make(chan *rpc.Conn, 1)
	go func() {
		c, err := rpc.Server(context.Background(), b, &rpc.Config{ID: id, Mux: f.mux})
		if err != nil {
			c = nil
		}
		ch <- c
	}()
	ours, err := rpc.Client(context.Background(), a, &rpc.Config{ID: "local"})
	theirs := <-ch
	if theirs != nil {
		f.mu.Lock()
		f.theirs = append(f.theirs, theirs)
		f.mu.Unlock()
	}
	if err != nil {
		return nil, err
	}
	if theirs == nil {
		ours.Close()
		return nil, errors.New("server side of the pipe failed its handshake")
	}
	return f.r.add(ours, "pipe-"+id, true)
}

// close resets the far ends first (a goodbye to each of 10,000 peers
// takes seconds), then closes the registry.
func (f *fleet) close() {
	f.mu.Lock()
	theirs := f.theirs
	f.theirs = nil
	f.mu.Unlock()
	for _, c := range theirs {
		c.Abort(rpc.ErrClosed)
	}
	f.r.Close()
}

// BenchmarkCall is one call to one peer of many.
func BenchmarkCall(b *testing.B) {
	for _, n := range benchSizes {
		b.Run(fmt.Sprintf("peers=%d", n), func(b *testing.B) {
			f := newFleet(b, Config{}, n)
			p := f.peers[n/2]
			ctx := context.Background()
			arg := []byte("x")
			var reply []byte
			b.ReportAllocs()
			for b.Loop() {
				if err := p.Call(ctx, "echo", arg, &reply); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkGet is a lookup by ID.
func BenchmarkGet(b *testing.B) {
	for _, n := range benchSizes {
		b.Run(fmt.Sprintf("peers=%d", n), func(b *testing.B) {
			f := newFleet(b, Config{}, n)
			ids := make([]ID, n)
			for i, p := range f.peers {
				ids[i] = p.ID()
			}
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				if _, ok := f.r.Get(ids[i%n]); !ok {
					b.Fatal("not found")
				}
				i++
			}
		})
	}
}

// BenchmarkEvict is an eviction, from Evict to the subscriber's hearing of
// it (the peer evicted is added, with the timer stopped, each round).
func BenchmarkEvict(b *testing.B) {
	for _, n := range benchSizes {
		b.Run(fmt.Sprintf("peers=%d", n), func(b *testing.B) {
			f := newFleet(b, Config{}, n)
			gone := make(chan ID, 1)
			cancel := f.r.Subscribe(func(ev Event) {
				if ev.Kind == Disconnected {
					gone <- ev.ID
				}
			})
			defer cancel() // before the fleet's teardown evicts the rest
			b.ReportAllocs()
			for b.Loop() {
				b.StopTimer()
				p, err := f.add()
				if err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				f.r.Evict(p.ID(), nil)
				<-gone
			}
		})
	}
}

// BenchmarkSubscribeFanout is one event told to four subscribers.
func BenchmarkSubscribeFanout(b *testing.B) {
	for _, n := range benchSizes {
		b.Run(fmt.Sprintf("peers=%d", n), func(b *testing.B) {
			f := newFleet(b, Config{}, n)
			const subs = 4
			told := make(chan struct{}, subs)
			for range subs {
				cancel := f.r.Subscribe(func(ev Event) {
					if ev.Kind == Recovered {
						told <- struct{}{}
					}
				})
				defer cancel()
			}
			p := f.peers[0]
			b.ReportAllocs()
			for b.Loop() {
				f.r.events.push(Event{Kind: Recovered, ID: p.ID(), Peer: p})
				for range subs {
					<-told
				}
			}
		})
	}
}

// BenchmarkFirstK is the choice of peers for a k-of-n read (k = 3) over
// the whole registry, with calls that answer at once: what a read costs
// beside its calls. "list" passes List, which copies every reference;
// "sample" passes Sample(k+2).
func BenchmarkFirstK(b *testing.B) {
	for _, n := range benchSizes {
		b.Run(fmt.Sprintf("peers=%d", n), func(b *testing.B) {
			f := newFleet(b, Config{}, n)
			ctx := context.Background()
			fn := func(ctx context.Context, p *Peer) (int, error) { return 1, nil }
			b.Run("list", func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					if _, err := FirstK(ctx, f.r.List(), 3, fn); err != nil {
						b.Fatal(err)
					}
				}
			})
			b.Run("sample", func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					if _, err := FirstK(ctx, f.r.Sample(5), 3, fn); err != nil {
						b.Fatal(err)
					}
				}
			})
		})
	}
}
