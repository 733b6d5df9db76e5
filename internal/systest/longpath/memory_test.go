package longpath

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/metrics"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/internal/ttest"
	"github.com/tetherrpc/tether/internal/ttest/ttnode"
	"github.com/tetherrpc/tether/partition"
	"github.com/tetherrpc/tether/peer"
	"github.com/tetherrpc/tether/rpc"
)

// Many uploads at once, the node measured alone: 100 peers in a second
// process each upload one bulk stream to the node through a 50 ms round
// trip, to readers slower than the link (a disk), so that every stream's
// window would grow if it could. The node's heap must stay within its
// window budget plus a bounded cost per connection, the budget's use
// within its limit plus the initial window of each stream (the protocol's,
// never refused), and none of it while the connections are idle.
//
// The heap is sampled every 50 ms two ways: the live heap (what the last
// collection found reachable), which is what the node holds and what the
// bound is for; and HeapInuse, which also counts the garbage not yet
// collected, up to as much again as the live heap at GOGC=100, and so is
// held to twice the bound.

const (
	uploaders     = 100
	uploadBudget  = 64 << 20
	perConnSlack  = 320 << 10 // heap per connection past the budget: its stream's first window, never refused (256 KiB), and 64 KiB for yamux, buffers and goroutines
	uploadersRole = "longpath uploaders"
	envTarget     = "TETHER_LONGPATH_TARGET"
	envPeers      = "TETHER_LONGPATH_PEERS"
	envSize       = "TETHER_LONGPATH_SIZE"
)

// uploadLink is the path from each uploader to the node: 25 ms each way.
var uploadLink = partition.Link{Delay: 25 * time.Millisecond}

func TestManyUploadsMemory(t *testing.T) {
	size := 16 << 20
	if testing.Short() || ttest.Race {
		size = 2 << 20
	}
	budget := rpc.NewWindowBudget(uploadBudget)
	n := ttnode.Start(t, tether.WithRPCConfig(rpc.Config{WindowBudget: budget}))
	var read atomic.Int64
	n.HandleStream("slow", rpc.StreamFunc(func(ctx context.Context, s *rpc.Stream) error {
		buf := make([]byte, 32<<10)
		for {
			k, err := s.Read(buf)
			read.Add(int64(k))
			if err != nil {
				break
			}
			time.Sleep(100 * time.Microsecond) // a disk slower than the link
		}
		_, err := s.Write([]byte{1})
		return err
	}))
	ev := ttnode.Subscribe(t, n.Peers())

	base, baseLive := heap()
	child := ttest.StartChild(t, uploadersRole,
		envTarget+"="+n.Addr().String(), envPeers+"="+strconv.Itoa(uploaders), envSize+"="+strconv.Itoa(size))
	if line := child.ReadLine(t); line != "READY" {
		t.Fatalf("uploaders: %s", line)
	}
	ttest.WaitFor(t, 10*time.Second, func() bool { return len(n.Peers().List()) == uploaders }, "every uploader registered")
	idleInuse, idleLive := heap()
	idle := idleLive - baseLive
	idleUsed := budget.Used()

	var peakHeap, peakLive, peakUsed atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		tk := time.NewTicker(50 * time.Millisecond)
		defer tk.Stop()
		for {
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			peakHeap.Store(max(peakHeap.Load(), int64(ms.HeapInuse)-base))
			peakLive.Store(max(peakLive.Load(), liveHeap()-baseLive))
			peakUsed.Store(max(peakUsed.Load(), budget.Used()))
			select {
			case <-stop:
				return
			case <-tk.C:
			}
		}
	})
	start := time.Now()
	fmt.Fprintln(child.Stdin, "GO")
	done := child.ReadLine(t)
	took := time.Since(start)
	close(stop)
	wg.Wait()

	var ok, failed int
	var firstErr string
	fmt.Sscanf(done, "DONE %d %d %q", &ok, &failed, &firstErr)
	limitHeap := budget.Limit() + uploaders*perConnSlack
	limitUsed := budget.Limit() + uploaders*(256<<10)
	t.Logf("%d uploads of %d MiB through a 50 ms round trip in %v (%.0f MiB/s in all): %d done, %d failed %s",
		uploaders, size>>20, took.Round(time.Millisecond), float64(read.Load())/(1<<20)/took.Seconds(), ok, failed, firstErr)
	t.Logf("node heap: %.1f MiB live idle with %d peers (%.1f KiB each; in use %.1f KiB each); peak live %.1f MiB over the baseline, bound %.1f MiB (budget %d MiB + %d KiB a connection); peak in use %.1f MiB (garbage included)",
		mib(idle), uploaders, float64(idle)/uploaders/1024, float64(idleInuse-base)/uploaders/1024,
		mib(peakLive.Load()), mib(limitHeap), budget.Limit()>>20, perConnSlack>>10, mib(peakHeap.Load()))
	t.Logf("budget: %.1f MiB used idle, peak %.1f MiB, limit %d MiB (+ %d initial windows: %.1f MiB); %d evictions",
		mib(idleUsed), mib(peakUsed.Load()), budget.Limit()>>20, uploaders, mib(limitUsed), ev.Count(peer.Disconnected))
	if ok != uploaders {
		t.Fatalf("uploaders: %s", done)
	}
	if peakLive.Load() > limitHeap {
		t.Errorf("node's live heap grew %.1f MiB, over %.1f MiB", mib(peakLive.Load()), mib(limitHeap))
	}
	if peakHeap.Load() > 2*limitHeap {
		t.Errorf("node's heap in use grew %.1f MiB, over %.1f MiB (twice the live bound, for GOGC=100's garbage)", mib(peakHeap.Load()), mib(2*limitHeap))
	}
	if idleUsed != 0 {
		t.Errorf("%d idle connections hold %d bytes of the window budget, want none", uploaders, idleUsed)
	}
	if peakUsed.Load() > limitUsed {
		t.Errorf("budget used %d bytes, over %d", peakUsed.Load(), limitUsed)
	}
	if n := ev.Count(peer.Disconnected); n != 0 {
		t.Errorf("%d uploaders evicted", n)
	}
}

func mib(n int64) float64 { return float64(n) / (1 << 20) }

// heap returns the heap in use and the live heap after a collection (two:
// the first empties sync.Pools into their victim caches).
func heap() (inuse, live int64) {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return int64(ms.HeapInuse), liveHeap()
}

// liveHeap returns the heap that the last collection found reachable:
// what the node holds, without the garbage that HeapInuse also counts
// until the next collection (up to as much again at GOGC=100).
func liveHeap() int64 {
	s := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	metrics.Read(s)
	return int64(s[0].Value.Uint64())
}

// uploadersChild, in the process TestManyUploadsMemory starts, runs the
// uploaders and exits; elsewhere it returns at once.
func uploadersChild() {
	if ttest.Role() != uploadersRole {
		return
	}
	os.Exit(runUploaders(os.Getenv(envTarget), ttnode.EnvInt(envPeers, 1), ttnode.EnvInt(envSize, 1<<20)))
}

// runUploaders connects count nodes to target through a proxy over
// uploadLink and says "READY"; at "GO" on its input each uploads size bytes
// on one stream at once, and it says "DONE ok failed first-error". It
// ends when its input does.
func runUploaders(target string, count, size int) int {
	in := bufio.NewScanner(os.Stdin)
	proxy, err := partition.NewProxy(target)
	if err != nil {
		fmt.Println("proxy:", err)
		return 1
	}
	defer proxy.Close()
	proxy.SetLink(uploadLink, uploadLink)
	nodes := make([]*tether.Node, count)
	peers := make([]*peer.Peer, count)
	defer func() {
		for _, n := range nodes {
			if n != nil {
				n.Close()
			}
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	errs := make([]error, count)
	for i := range count {
		nodes[i], errs[i] = tether.New()
		if errs[i] != nil {
			fmt.Println("node:", errs[i])
			return 1
		}
		wg.Go(func() { peers[i], errs[i] = nodes[i].Dial(ctx, proxy.Addr()) })
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			fmt.Println("dial:", err)
			return 1
		}
	}
	fmt.Println("READY")
	if !in.Scan() || in.Text() != "GO" {
		return 1
	}
	var ok, failed atomic.Int64
	var first atomic.Value
	for _, p := range peers {
		wg.Go(func() {
			if err := upload(ctx, p, size); err != nil {
				failed.Add(1)
				first.CompareAndSwap(nil, err.Error())
				return
			}
			ok.Add(1)
		})
	}
	wg.Wait()
	firstErr, _ := first.Load().(string)
	fmt.Printf("DONE %d %d %q\n", ok.Load(), failed.Load(), firstErr)
	for in.Scan() {
	}
	return 0
}

// upload sends size bytes on one "slow" stream and waits for its answer.
func upload(ctx context.Context, p *peer.Peer, size int) error {
	s, err := p.Stream(ctx, "slow")
	if err != nil {
		return err
	}
	defer s.Close()
	buf := make([]byte, 64<<10)
	for sent := 0; sent < size; sent += len(buf) {
		if _, err := s.Write(buf); err != nil {
			return err
		}
	}
	if err := s.CloseWrite(); err != nil {
		return err
	}
	var ack [1]byte
	_, err = io.ReadFull(s, ack[:])
	return err
}
