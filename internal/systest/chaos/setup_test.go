package chaos

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/incident/logport"
	"github.com/tetherrpc/tether/internal/ttest"
	"github.com/tetherrpc/tether/internal/ttest/ttnode"
	"github.com/tetherrpc/tether/peer"
	"github.com/tetherrpc/tether/rpc"
)

// ---- set-up ----

func (c *chaos) run() {
	t := c.t
	for i := range numServers {
		s := &server{idx: i, name: fmt.Sprintf("S%d", i), id: peer.ID(rpc.NewID())}
		c.startServer(s, "127.0.0.1:0")
		c.servers = append(c.servers, s)
		c.byAddr[s.addr] = s.name
	}
	for i := range numPausable {
		addr, kid := ttnode.StartChild(t)
		_, ps, _ := net.SplitHostPort(addr)
		port, _ := strconv.Atoi(ps)
		k := &child{idx: i, name: fmt.Sprintf("P%d", i), addr: addr, port: port, proc: kid}
		c.kids = append(c.kids, k)
		c.byAddr[addr] = k.name
	}
	for i := range numClients {
		cl := &client{idx: i, name: fmt.Sprintf("C%d", i), dir: filepath.Join(c.dir, fmt.Sprintf("C%d", i))}
		cl.metrics = prometheus.NewRegistry()
		n, err := tether.Listen("127.0.0.1:0", tether.WithIncidentDir(cl.dir), tether.WithMetrics(cl.metrics))
		if err != nil {
			t.Fatal(err)
		}
		cl.n = n
		c.clients = append(c.clients, cl)
	}
	// Every client is listed before any connects: the servers' events
	// name their peers from the list.
	for _, cl := range c.clients {
		cl.n.Peers().Subscribe(func(ev peer.Event) { c.onEvent(cl.name, nil, ev) })
		for addr := range c.byAddr {
			cl.n.Peers().Keep(addr)
		}
	}
	defer c.closeAll()
	ttest.WaitFor(t, 15*time.Second, func() bool {
		for _, cl := range c.clients {
			if len(cl.n.Peers().List()) < numServers+numPausable {
				return false
			}
		}
		return true
	}, "every client to connect to every server")
	for _, k := range c.kids {
		for _, p := range c.clients[0].n.Peers().List() {
			if p.Addr() == k.addr {
				k.id = p.ID()
			}
		}
	}

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for _, cl := range c.clients {
		for w := range 4 {
			wg.Add(1)
			go func() { defer wg.Done(); c.caller(ctx, cl, w) }()
		}
		wg.Add(2)
		go func() { defer wg.Done(); c.holder(ctx, cl) }()
		go func() { defer wg.Done(); c.reader(ctx, cl) }()
	}
	for _, s := range c.servers {
		wg.Add(1)
		go func() { defer wg.Done(); c.gather(ctx, c.clients[0], s) }()
	}

	// Faults, until a few seconds before the end; then everything heals
	// and must reconnect.
	var fwg sync.WaitGroup
	injectUntil := c.start.Add(c.dur - 6*time.Second)
	time.Sleep(1500 * time.Millisecond)
	for time.Now().Before(injectUntil) {
		if c.long {
			time.Sleep(c.randDur(500*time.Millisecond, 3*time.Second))
		} else {
			time.Sleep(c.randDur(300*time.Millisecond, 1500*time.Millisecond))
		}
		if !time.Now().Before(injectUntil) {
			break
		}
		c.inject(&fwg)
	}
	fwg.Wait() // every fault healed, every reconnection checked
	if rest := time.Until(c.start.Add(c.dur)); rest > 0 {
		time.Sleep(rest)
	}
	// At the end every client holds a live reference to every server.
	for _, cl := range c.clients {
		if n := len(cl.n.Peers().List()); n != numServers+numPausable {
			c.violate("at the end %s holds %d live references, want %d", cl.name, n, numServers+numPausable)
		}
	}
	cancel()
	wg.Wait()
}

// startServer starts (or restarts) a server node on addr.
func (c *chaos) startServer(s *server, addr string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	gen := s.gen + 1
	dir := filepath.Join(c.dir, fmt.Sprintf("%s-gen%d", s.name, gen))
	name := s.name
	metrics := prometheus.NewRegistry()
	n, err := tether.Listen(addr,
		tether.WithMetrics(metrics),
		tether.WithID(string(s.id)),
		tether.WithIncidentDir(dir),
		tether.WithLogPort(logport.WithSubscriptionEnd(func(st logport.SubscriberStats, err error) {
			c.mu.Lock()
			c.subEnds++
			c.delivered[name] += st.Delivered
			c.mu.Unlock()
			if st.Produced != st.Delivered+st.Dropped || st.Queued != 0 {
				c.violate("log subscription to %s ended with produced %d != delivered %d + dropped %d (queued %d)",
					name, st.Produced, st.Delivered, st.Dropped, st.Queued)
			}
		})))
	if err != nil {
		c.violate("starting %s on %s: %v", s.name, addr, err)
		return
	}
	n.Handle("echo", rpc.Func(ttnode.Echo))
	n.Handle("hold", rpc.Func(func(ctx context.Context, _ []byte) ([]byte, error) {
		<-ctx.Done()
		return nil, ctx.Err()
	}))
	s.n, s.metrics, s.gen, s.crashing = n, metrics, gen, false
	s.dirs = append(s.dirs, dir)
	if s.addr == "" {
		s.addr = n.Addr().String()
		s.port = ttnode.Port(c.t, n)
	}
	n.Peers().Subscribe(func(ev peer.Event) { c.onEvent(name, s, ev) })
	// Log traffic: a few lines every 10 ms.
	s.stopLogs, s.logsDone = make(chan struct{}), make(chan struct{})
	go func(stop, done chan struct{}) {
		defer close(done)
		tick := time.NewTicker(logInterval)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			n.Logger().Info("share stored", zap.Int("i", i), zap.String("key", "k"+strconv.Itoa(i%97)))
			n.Logger().Debug("share checked", zap.Int("i", i))
			c.logLines.Add(1)
		}
	}(s.stopLogs, s.logsDone)
}

func (c *chaos) closeAll() {
	c.closing.Store(true)
	for _, cl := range c.clients {
		c.tallyEvictions(cl.metrics)
	}
	for _, s := range c.servers {
		s.mu.Lock()
		if s.n != nil {
			c.tallyEvictions(s.metrics)
		}
		s.mu.Unlock()
	}
	var wg sync.WaitGroup
	for _, cl := range c.clients {
		wg.Add(1)
		go func() { defer wg.Done(); cl.n.Close() }()
	}
	for _, s := range c.servers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.mu.Lock()
			n := s.n
			s.n = nil
			stop, done := s.stopLogs, s.logsDone
			s.mu.Unlock()
			if n != nil {
				close(stop)
				<-done
				n.Close()
			}
		}()
	}
	wg.Wait()
}

// tallyEvictions adds a node's evictions so far, by the cause labels its
// metrics give them (tether_evictions_total), to the report's.
func (c *chaos) tallyEvictions(reg *prometheus.Registry) {
	fams, err := reg.Gather()
	if err != nil {
		c.violate("reading a node's metrics: %v", err)
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, fam := range fams {
		if fam.GetName() != "tether_evictions_total" {
			continue
		}
		for _, m := range fam.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "cause" {
					c.evictions[l.GetValue()] += int(m.GetCounter().GetValue())
				}
			}
		}
	}
}
