package partition_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/tetherrpc/tether/internal/ttest"
	"github.com/tetherrpc/tether/partition"
)

func TestNetworkCloseReleasesEverything(t *testing.T) {
	before := goleak.IgnoreCurrent()
	n := partition.NewNetwork(partition.WithBufferSize(4))
	ln, err := n.Host("b").Listen(":80")
	if err != nil {
		t.Fatal(err)
	}
	client, err := n.Host("a").Dial(context.Background(), "b:80")
	if err != nil {
		t.Fatal(err)
	}
	server, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	delayed, _ := connect(t, n, "a", "c")
	n.Delay("a", "c", time.Hour) // a timer that must not outlive Close
	write(t, delayed, "late")    // due in an hour
	n.Cut("a", "b")
	write(t, client, "full")

	calls := map[string]chan error{}
	start := func(name string, f func() error) {
		ch := make(chan error, 1)
		calls[name] = ch
		go func() { ch <- f() }()
	}
	start("read", func() error { _, err := server.Read(make([]byte, 1)); return err })
	start("write", func() error { _, err := client.Write([]byte("blocked")); return err })
	start("accept", func() error { _, err := ln.Accept(); return err })
	start("dial", func() error { _, err := n.Host("a").Dial(context.Background(), "b:80"); return err })
	for name, ch := range calls {
		if err, ok := ttest.Within(ch, 10*time.Millisecond); ok {
			t.Fatalf("%s returned %v before Close", name, err)
		}
	}

	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	for name, ch := range calls {
		if err, ok := ttest.Within(ch, 2*time.Second); !ok || !errors.Is(err, net.ErrClosed) {
			t.Errorf("blocked %s after Network.Close = %v (returned: %v); want net.ErrClosed", name, err, ok)
		}
	}
	if _, err := n.Host("a").Listen(":1"); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Listen after Close = %v", err)
	}
	if err := n.Close(); err != nil {
		t.Errorf("second Close = %v", err)
	}
	goleak.VerifyNone(t, before)
}

// TestConcurrentUse streams data both ways over several connections while
// links are cut, delayed and healed at random, and checks every byte.
func TestConcurrentUse(t *testing.T) {
	n := partition.NewNetwork(partition.WithBufferSize(4 << 10))
	defer n.Close()
	const conns, size = 4, 256 << 10
	hosts := []string{"h0", "h1", "h2"}

	var wg sync.WaitGroup
	errs := make(chan error, 4*conns)
	stream := func(w, r net.Conn, seed int) {
		data := pattern(size, seed)
		wg.Add(2)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(seed), 1))
			for b := data; len(b) > 0; {
				k := min(len(b), 1+rng.IntN(8<<10))
				if _, err := w.Write(b[:k]); err != nil {
					errs <- err
					return
				}
				b = b[k:]
			}
		}()
		go func() {
			defer wg.Done()
			r.SetReadDeadline(time.Now().Add(15 * time.Second))
			got := make([]byte, size)
			if _, err := io.ReadFull(r, got); err != nil {
				errs <- err
				return
			}
			if !bytes.Equal(got, data) {
				errs <- errors.New("stream arrived changed")
			}
		}()
	}
	for i := range conns {
		a, b := hosts[i%len(hosts)], hosts[(i+1)%len(hosts)]
		c, s := connect(t, n, a, b)
		stream(c, s, 2*i+1)
		stream(s, c, 2*i+2)
	}

	stop := make(chan struct{})
	chaos := make(chan struct{})
	go func() {
		defer close(chaos)
		rng := rand.New(rand.NewPCG(7, 7))
		for {
			select {
			case <-stop:
				return
			default:
			}
			a, b := hosts[rng.IntN(len(hosts))], hosts[rng.IntN(len(hosts))]
			switch rng.IntN(5) {
			case 0:
				n.Cut(a, b)
			case 1:
				n.CutOneWay(a, b)
			case 2:
				n.Delay(a, b, time.Duration(rng.IntN(2000))*time.Microsecond)
			case 3:
				n.Heal(a, b)
			case 4:
				n.HealAll()
			}
			waitFor(time.Duration(rng.IntN(500)) * time.Microsecond)
		}
	}()
	waitFor(200 * time.Millisecond)
	close(stop)
	<-chaos
	n.HealAll()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// waitFor lets time pass; the chaos above needs time between changes, not
// synchronisation.
func waitFor(d time.Duration) {
	t := time.NewTimer(d)
	<-t.C
}
