package chaos

import (
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/tetherrpc/tether/partition"
	"github.com/tetherrpc/tether/peer"
)

// ---- faults ----

func (c *chaos) activeFaults(now time.Time) []*fault {
	var out []*fault
	for _, f := range c.faults {
		if f.end.IsZero() || now.Before(f.end) {
			out = append(out, f)
		}
	}
	return out
}

// busy reports whether name has a fault now, or one whose reconnection is
// still being checked (a second fault then would make it fail).
func (c *chaos) busyLocked(name string) bool {
	for _, f := range c.faults {
		if (f.end.IsZero() || time.Now().Before(f.end) || f.checking) && (f.target == name || strings.HasPrefix(f.target, name+"/")) {
			return true
		}
	}
	return false
}

// inject picks a fault and runs it on its own goroutine.
func (c *chaos) inject(wg *sync.WaitGroup) {
	c.mu.Lock()
	active := c.activeFaults(time.Now())
	if len(active) >= maxConcurrent {
		c.mu.Unlock()
		return
	}
	spiking := false
	for _, f := range active {
		spiking = spiking || f.kind == faultSpike
	}
	kinds := []faultKind{faultPartition, faultPartition, faultOneWay, faultLink, faultLink, faultCrash, faultPause}
	if c.spikeOK && !spiking {
		kinds = append(kinds, faultSpike)
	}
	kind := kinds[c.randN(len(kinds))]
	var s *server
	var k *child
	switch kind {
	case faultPause:
		k = c.kids[c.randN(len(c.kids))]
		if c.busyLocked(k.name) {
			c.mu.Unlock()
			return
		}
	case faultSpike:
	default:
		s = c.servers[c.randN(len(c.servers))]
		if c.busyLocked(s.name) {
			c.mu.Unlock()
			return
		}
	}
	f := &fault{kind: kind, start: time.Now(), concurrent: len(active) > 0}
	switch {
	case s != nil:
		f.target, f.ports = s.name, []int{s.port}
	case k != nil:
		f.target, f.ports = k.name, []int{k.port}
	default:
		f.target = "lo"
	}
	c.faults = append(c.faults, f)
	c.faultCount[kind]++
	c.mu.Unlock()

	outage := func() time.Duration {
		if c.long && c.randN(5) == 0 {
			return c.randDur(5*time.Second, 20*time.Second)
		}
		return c.randDur(1500*time.Millisecond, 4*time.Second)
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		switch kind {
		case faultPartition, faultOneWay:
			c.partition(f, s, outage())
		case faultLink:
			c.loseLink(f, s)
		case faultCrash:
			c.crash(f, s, outage())
		case faultPause:
			d := c.randDur(200*time.Millisecond, 1500*time.Millisecond)
			if c.long && c.randN(4) == 0 {
				d = c.randDur(6*time.Second, 8*time.Second) // past the hang bound: evicted as hung
			}
			c.pause(f, k, d)
		case faultSpike:
			c.spike(f)
		}
	}()
}

// healed ends a fault and checks that the clients reconnect, the target
// kept busy (no new fault on it) until then.
func (c *chaos) healed(f *fault, id peer.ID, name string, outage time.Duration) {
	c.mu.Lock()
	f.end, f.checking = time.Now(), true
	c.mu.Unlock()
	c.checkReconnect(f, id, name, outage)
	c.mu.Lock()
	f.checking = false
	c.mu.Unlock()
}

func (c *chaos) endFault(f *fault) {
	c.mu.Lock()
	f.end = time.Now()
	c.mu.Unlock()
}

// watchDetection records, for each live reference on any in-process node
// whose connection touches port, that the fault must be detected on it.
func (c *chaos) watchDetection(f *fault, port int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for name, reg := range c.registries() {
		for _, p := range reg.List() {
			if connTouches(p, port) {
				idle := p.Conn().Stats().Outstanding == 0
				c.detects = append(c.detects, &detect{fault: f, node: name, ref: p, idle: idle})
			}
		}
	}
}

// registries are the registries of the in-process nodes now running.
func (c *chaos) registries() map[string]*peer.Registry {
	out := map[string]*peer.Registry{}
	for _, cl := range c.clients {
		out[cl.name] = cl.n.Peers()
	}
	for _, s := range c.servers {
		s.mu.Lock()
		if s.n != nil && !s.crashing {
			out[s.name] = s.n.Peers()
		}
		s.mu.Unlock()
	}
	return out
}

func connPorts(p *peer.Peer) (local, remote int) {
	if a, ok := p.Conn().LocalAddr().(*net.TCPAddr); ok {
		local = a.Port
	}
	if a, ok := p.Conn().RemoteAddr().(*net.TCPAddr); ok {
		remote = a.Port
	}
	return local, remote
}

func connTouches(p *peer.Peer, port int) bool {
	l, r := connPorts(p)
	return l == port || r == port
}

// partition silences a server's port, both ways or one way.
func (c *chaos) partition(f *fault, s *server, d time.Duration) {
	c.watchDetection(f, s.port)
	var heal func() error
	var err error
	if f.kind == faultOneWay {
		dir := partition.ToPort
		f.detail = "(to it)"
		if c.randN(2) == 0 {
			dir, f.detail = partition.FromPort, "(from it)"
		}
		heal, err = partition.DropPortOneWay(s.port, dir)
	} else {
		heal, err = partition.DropPort(s.port)
	}
	if err != nil {
		c.violate("partitioning %s: %v", s.name, err)
		c.endFault(f)
		return
	}
	time.Sleep(d)
	heal()
	c.healed(f, s.id, s.name, d)
}

// loseLink silences one connection between a client and a server (its
// ephemeral port): the client must notice, and reconnect at once on a new
// connection.
func (c *chaos) loseLink(f *fault, s *server) {
	cl := c.clients[c.randN(len(c.clients))]
	p, ok := cl.n.Peers().Get(s.id)
	if !ok {
		c.endFault(f)
		return
	}
	local, _ := connPorts(p)
	c.mu.Lock()
	f.ports = []int{local}
	f.target = s.name + "/" + cl.name
	f.detail = fmt.Sprintf("(port %d)", local)
	c.mu.Unlock()
	c.watchDetection(f, local)
	heal, err := partition.DropPort(local)
	if err != nil {
		c.violate("dropping %s's connection to %s: %v", cl.name, s.name, err)
		c.endFault(f)
		return
	}
	// Wait for the eviction (or a generous bound), then for the new
	// connection: Keep redials at once (backoff from 100 ms).
	t0 := time.Now()
	select {
	case <-p.Done():
	case <-time.After(4 * time.Second):
	}
	if p.Err() != nil {
		td := time.Now()
		bound := reconnectBound(0)
		for time.Since(td) < 10*time.Second {
			if q, ok := cl.n.Peers().Get(s.id); ok && q != p {
				took := time.Since(td)
				c.mu.Lock()
				c.reconnects = append(c.reconnects, took)
				c.reconBound = append(c.reconBound, bound)
				c.mu.Unlock()
				if took > bound {
					c.violate("%s reconnected to %s %v after losing a connection (bound %v)", cl.name, s.name, took, bound)
				}
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	if rest := 2*time.Second - time.Since(t0); rest > 0 {
		time.Sleep(rest)
	}
	heal()
	c.endFault(f)
}

// crash closes a server and starts it again on the same address.
func (c *chaos) crash(f *fault, s *server, d time.Duration) {
	s.mu.Lock()
	n := s.n
	s.crashing = true
	stop, done := s.stopLogs, s.logsDone
	s.mu.Unlock()
	close(stop)
	<-done
	c.tallyEvictions(s.metrics) // before its own shutdown, which is not judged
	n.Close()
	s.mu.Lock()
	s.n = nil
	s.mu.Unlock()
	time.Sleep(d)
	c.startServer(s, s.addr)
	c.healed(f, s.id, s.name, d)
}

// pause stops a child-process server for d.
func (c *chaos) pause(f *fault, k *child, d time.Duration) {
	f.detail = fmt.Sprintf("(%v)", d.Round(time.Millisecond))
	k.proc.Pause()
	time.Sleep(d)
	k.proc.Resume()
	if d >= hangBound {
		c.healed(f, k.id, k.name, d)
	} else {
		c.endFault(f)
	}
}

// spike shapes loopback to a few Mbit/s for a while: queues, and latency,
// build up for everyone.
func (c *chaos) spike(f *fault) {
	rate := []string{"8mbit", "16mbit", "32mbit"}[c.randN(3)]
	f.detail = "(" + rate + ")"
	heal, err := partition.LimitRate("lo", rate)
	if err != nil {
		c.violate("shaping lo: %v", err)
		c.endFault(f)
		return
	}
	time.Sleep(c.randDur(time.Second, 3*time.Second))
	heal()
	c.endFault(f)
}

// reconnectBound is how long Keep may take to reconnect after an outage
// of d: the backoff interval then (jittered, capped at 10 s), a dial
// attempt that was under way, and the handshake.
func reconnectBound(d time.Duration) time.Duration {
	next := min(10*time.Second, 2*d+100*time.Millisecond)
	return next*3/2 + dialTimeout + time.Second
}

// checkReconnect waits for every client to hold a live reference to the
// server again, if the fault cost it its reference.
func (c *chaos) checkReconnect(f *fault, id peer.ID, name string, outage time.Duration) {
	healed := time.Now()
	bound := reconnectBound(outage)
	var wg sync.WaitGroup
	for _, cl := range c.clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				p, ok := cl.n.Peers().Get(id)
				if ok && p.Since().Before(f.start) {
					return // never lost: nothing to reconnect
				}
				if ok {
					took := time.Since(healed)
					if p.Since().Before(healed) {
						took = 0 // reconnected during the fault (a one-way partition's other side)
					}
					c.mu.Lock()
					c.reconnects = append(c.reconnects, took)
					c.reconBound = append(c.reconBound, bound)
					c.mu.Unlock()
					return
				}
				if time.Since(healed) > bound {
					st := cl.n.Peers().Stats()
					kept, live := cl.n.Peers().KeptReachable()
					far := "not in this process"
					for _, s := range c.servers {
						if s.id == id {
							s.mu.Lock()
							if n := s.n; n != nil {
								q, ok := n.Peers().Get(cl.n.ID())
								far = fmt.Sprintf("holds a live reference to it: %v", ok)
								if ok {
									far += fmt.Sprintf(" (since %.3fs)", q.Since().Sub(c.start).Seconds())
								}
							}
							s.mu.Unlock()
						}
					}
					c.mu.Lock()
					hist := strings.Join(c.history[cl.name+"/"+name], "; ")
					c.mu.Unlock()
					c.violate("%s has not reconnected to %s %v after the %s healed (outage %v, bound %v); %s: %d connects, %d disconnects, %d reconnects, %d kept, %d live; the server %s; %s's last events for it: %s",
						cl.name, name, time.Since(healed).Round(time.Millisecond), f.kind, outage.Round(time.Millisecond), bound,
						cl.name, st.Connects, st.Disconnects, st.Reconnects, kept, live, far, cl.name, hist)
					return
				}
				time.Sleep(5 * time.Millisecond)
			}
		}()
	}
	wg.Wait()
}
