package cluster_test

import (
	"crypto/tls"
	"errors"
	"io"
	"log"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/cluster"
	"github.com/tetherrpc/tether/internal/ttest"
	"github.com/tetherrpc/tether/internal/ttest/ttgossip"
	"github.com/tetherrpc/tether/internal/ttest/ttnode"
	"github.com/tetherrpc/tether/partition"
	"github.com/tetherrpc/tether/peer"
	"github.com/tetherrpc/tether/rpc"
)

// flakyTransport is memberlist's UDP and TCP transport with a link that
// can be cut: while cut, nothing goes to the address peer, and nothing
// from it is heard.
type flakyTransport struct {
	*memberlist.NetTransport
	peer    atomic.Pointer[string]
	cut     atomic.Bool
	packets chan *memberlist.Packet
	done    chan struct{}
}

func newFlakyTransport(t *testing.T) *flakyTransport {
	nt, err := memberlist.NewNetTransport(&memberlist.NetTransportConfig{
		BindAddrs: []string{"127.0.0.1"},
		Logger:    log.New(io.Discard, "", 0),
	})
	if err != nil {
		t.Fatal(err)
	}
	f := &flakyTransport{NetTransport: nt, packets: make(chan *memberlist.Packet), done: make(chan struct{})}
	go func() {
		for {
			select {
			case p := <-nt.PacketCh():
				if f.cutFrom(p.From.String()) {
					continue
				}
				select {
				case f.packets <- p:
				case <-f.done:
					return
				}
			case <-f.done:
				return
			}
		}
	}()
	return f
}

func (f *flakyTransport) Shutdown() error {
	close(f.done)
	return f.NetTransport.Shutdown()
}

func (f *flakyTransport) cutFrom(addr string) bool {
	p := f.peer.Load()
	return f.cut.Load() && p != nil && *p == addr
}

func (f *flakyTransport) PacketCh() <-chan *memberlist.Packet { return f.packets }

func (f *flakyTransport) WriteTo(b []byte, addr string) (time.Time, error) {
	if f.cutFrom(addr) {
		return time.Now(), nil // lost on the way
	}
	return f.NetTransport.WriteTo(b, addr)
}

func (f *flakyTransport) DialTimeout(addr string, d time.Duration) (net.Conn, error) {
	if f.cutFrom(addr) {
		return nil, errors.New("flaky link: cut")
	}
	return f.NetTransport.DialTimeout(addr, d)
}

// gossipChurn counts what the cluster told of its members: lines "member
// declared dead" and "member left".
func gossipChurn(logs *observer.ObservedLogs) int {
	return logs.FilterMessage("member declared dead").Len() + logs.FilterMessage("member left").Len()
}

// A gossip link that flaps (cut a second, healed a second, four times)
// between two members costs nothing: the gossip's indirect probes reach
// each through the others, so neither is declared dead, and no tether
// connection is touched.
func TestGossipFlapDoesNotChurnTether(t *testing.T) {
	zl, logs := ttnode.Observed()
	var ms []*member
	var flaky []*flakyTransport
	for i := range 5 {
		mc := ttgossip.Config()
		var ft *flakyTransport
		if i < 2 {
			ft = newFlakyTransport(t)
			mc.Transport = ft
			flaky = append(flaky, ft)
		}
		cfg := cluster.Config{Memberlist: mc}
		if i > 0 {
			cfg.Seeds = []string{ms[0].c.GossipAddr()}
		}
		ms = append(ms, startWith(t, cfg, tether.WithLogger(zl)))
	}
	allConnected(t, ms, 15*time.Second)
	a, b := ms[0].c.GossipAddr(), ms[1].c.GossipAddr()
	flaky[0].peer.Store(&b)
	flaky[1].peer.Store(&a)
	var lost atomic.Int64
	for _, m := range ms {
		m.n.Peers().Subscribe(func(ev peer.Event) {
			if ev.Kind == peer.Disconnected && !retired(ev) {
				lost.Add(1) // (not one of two connections dialed at once, retired)
			}
		})
	}
	for range 4 {
		flaky[0].cut.Store(true)
		flaky[1].cut.Store(true)
		time.Sleep(time.Second)
		flaky[0].cut.Store(false)
		flaky[1].cut.Store(false)
		time.Sleep(time.Second)
	}
	if n := gossipChurn(logs); n != 0 {
		t.Fatalf("the gossip declared %d members dead or gone over a flapping link", n)
	}
	if n := lost.Load(); n != 0 {
		t.Fatalf("%d tether connections lost while only the gossip's link flapped", n)
	}
	for _, m := range ms {
		if !knowsAll(m, ms) || !connected(m, ms) {
			t.Fatalf("%s lost members", m.n.ID())
		}
	}
	t.Logf("4 flaps of a gossip link: no member declared dead, no connection lost; %d lines at Warn",
		logs.FilterLevelExact(zapcore.WarnLevel).Len())
}

// A tether link that flaps (blackholed 2 s, healed 1 s, three times)
// costs evictions and reconnections on that link only: the member stays a
// member everywhere (the gossip reaches it on its own path), its keepers
// never stop, and it is connected again soon after each heal (the
// keepers' backoff is short for a link lost moments ago).
func TestTetherFlapDoesNotChurnGossip(t *testing.T) {
	zl, logs := ttnode.Observed()
	// x, with the largest ID, is dialed by every other member, through a
	// proxy that blackholes its link.
	var certs []tlsCert
	for range 5 {
		certs = append(certs, newCert(t))
	}
	xi := 0
	for i, c := range certs {
		if c.id > certs[xi].id {
			xi = i
		}
	}
	var ms []*member
	var proxy *partition.Proxy
	var x *member
	for i, c := range certs {
		cfg := cluster.Config{}
		if len(ms) > 0 {
			cfg.Seeds = []string{ms[0].c.GossipAddr()}
		}
		if i == xi {
			// x advertises the proxy, which needs x's port: start the node
			// with a listener reserved first.
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			addr := ln.Addr().String()
			ln.Close()
			if proxy, err = partition.NewProxy(addr); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { proxy.Close() })
			cfg.Advertise = proxy.Addr()
			x = startAsAt(t, addr, c.cert, cfg, tether.WithLogger(zl))
			ms = append(ms, x)
			continue
		}
		ms = append(ms, startAs(t, c.cert, cfg, tether.WithLogger(zl)))
	}
	allConnected(t, ms, 15*time.Second)
	rest := without(ms, x)
	var evicted atomic.Int64
	reconnected := make([]atomic.Int64, len(rest)) // when each last connected to x, UnixNano
	for i, m := range rest {
		m.n.Peers().Subscribe(func(ev peer.Event) {
			switch {
			case ev.ID != x.n.ID():
			case ev.Kind == peer.Disconnected:
				evicted.Add(1)
			case ev.Kind == peer.Connected:
				reconnected[i].Store(ev.Time.UnixNano())
			}
		})
	}
	stillKept := func() bool {
		for _, m := range rest {
			found := false
			for _, o := range m.c.Members() {
				found = found || o.ID == x.n.ID() && o.Kept
			}
			if !found {
				return false
			}
		}
		return true
	}
	var back time.Duration // the longest time to reconnect after a heal
	for range 3 {
		proxy.Blackhole()
		time.Sleep(2 * time.Second)
		if !stillKept() {
			t.Fatal("a member stopped keeping the member whose link is cut")
		}
		proxy.Reset() // what the blackhole held is stale
		healed := time.Now()
		proxy.Heal()
		var last int64
		ttest.WaitFor(t, 5*time.Second, func() bool {
			for i := range reconnected {
				at := reconnected[i].Load()
				if at < healed.UnixNano() {
					return false
				}
				last = max(last, at)
			}
			return true
		}, "every member to reconnect to x after the heal")
		back = max(back, time.Duration(last-healed.UnixNano()))
		allConnected(t, ms, 5*time.Second)
		time.Sleep(500 * time.Millisecond)
	}
	t.Logf("3 flaps of a tether link: %d evictions of the member across %d nodes; all connected again at most %v after a heal; %d lines at Warn",
		evicted.Load(), len(rest), back.Round(time.Millisecond), logs.FilterLevelExact(zapcore.WarnLevel).Len())
	if evicted.Load() < int64(len(rest)) {
		t.Fatalf("%d evictions: the link did not flap", evicted.Load())
	}
	if n := gossipChurn(logs); n != 0 {
		t.Fatalf("the gossip declared %d members dead or gone while a tether link flapped", n)
	}
}

type tlsCert struct {
	cert tls.Certificate
	id   string
}

func newCert(t *testing.T) tlsCert {
	c, err := rpc.NewCertificate()
	if err != nil {
		t.Fatal(err)
	}
	id, err := rpc.TLSID(rpc.TLSConfig(c))
	if err != nil {
		t.Fatal(err)
	}
	return tlsCert{c, id}
}
