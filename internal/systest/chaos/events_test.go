package chaos

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/tetherrpc/tether/peer"
	"github.com/tetherrpc/tether/rpc"
)

// ---- events: evictions judged ----

func (c *chaos) onEvent(node string, s *server, ev peer.Event) {
	if c.closing.Load() {
		return
	}
	if s != nil {
		s.mu.Lock()
		crashing := s.crashing
		s.mu.Unlock()
		if crashing {
			return // its own shutdown
		}
	}
	c.mu.Lock()
	key := node + "/" + c.nameOf(ev.ID, ev.Peer)
	h := append(c.history[key], fmt.Sprintf("%.3fs %v%s", ev.Time.Sub(c.start).Seconds(), ev.Kind, func() string {
		if ev.Cause != nil {
			return " (" + ev.Cause.Error() + ")"
		}
		return ""
	}()))
	if len(h) > 6 {
		h = h[len(h)-6:]
	}
	c.history[key] = h
	c.mu.Unlock()
	switch ev.Kind {
	case peer.Connected:
		if ev.Reconnect && s == nil {
			c.checkChurn(node, ev)
		}
	case peer.Disconnected:
		c.judgeEviction(node, s == nil, ev)
	}
}

// checkChurn: a kept address reconnects only after a loss.
func (c *chaos) checkChurn(node string, ev peer.Event) {
	c.mu.Lock()
	defer c.mu.Unlock()
	key := node + "/" + string(ev.ID)
	if last, ok := c.keptConn[key]; !ok || ev.Time.Sub(last) > time.Minute {
		msg := fmt.Sprintf("%s reconnected to %s with no loss of it before (churn)", node, c.nameOf(ev.ID, ev.Peer))
		c.churn = append(c.churn, msg)
		c.violations = append(c.violations, fmt.Sprintf("%7.3fs %s", c.now(), msg))
	}
	delete(c.keptConn, key)
}

func (c *chaos) nameOf(id peer.ID, p *peer.Peer) string {
	for _, s := range c.servers {
		if s.id == id {
			return s.name
		}
	}
	if p != nil {
		if n, ok := c.byAddr[p.Addr()]; ok {
			return n
		}
	}
	for _, cl := range c.clients {
		if cl.n.ID() == id {
			return cl.name
		}
	}
	return string(id)
}

func (c *chaos) judgeEviction(node string, onClient bool, ev peer.Event) {
	p := ev.Peer
	lp, rp := connPorts(p)
	now := ev.Time
	c.mu.Lock()
	// The detections this eviction completes.
	for _, d := range c.detects {
		if d.ref == p && !d.done {
			d.done = true
			d.took = now.Sub(d.fault.start)
		}
	}
	if onClient {
		c.keptConn[node+"/"+string(ev.ID)] = now
	}
	// Which fault explains it?
	var why *fault
	for _, f := range c.faults {
		if f.kind == faultSpike {
			continue
		}
		if !slices.Contains(f.ports, lp) && !slices.Contains(f.ports, rp) {
			continue
		}
		if now.Before(f.start) || (!f.end.IsZero() && now.After(f.end.Add(grace))) {
			continue
		}
		why = f
	}
	var spiking bool
	for _, f := range c.activeFaults(now) {
		spiking = spiking || f.kind == faultSpike
	}
	c.mu.Unlock()

	if errors.Is(ev.Cause, peer.ErrReplaced) && onClient {
		// Only the clients dial: two connections of theirs to one server
		// at once would mean Keep dialed twice. (A server may see a
		// client's reconnection overtake its own detection of the old
		// connection: that one is retired, rightly.)
		c.violate("%s: reference to %s replaced by another connection of its own", node, c.nameOf(ev.ID, p))
	}
	switch {
	case why == nil:
		msg := fmt.Sprintf("false eviction: %s evicted %s (ports %d/%d) with no fault on its connection (cause %v; latency spike active: %v)",
			node, c.nameOf(ev.ID, p), lp, rp, ev.Cause, spiking)
		c.mu.Lock()
		c.falseEv = append(c.falseEv, msg)
		c.mu.Unlock()
		c.violate("%s", msg)
	case why.kind == faultPause:
		in := now.Sub(why.start)
		c.mu.Lock()
		c.hangEv = append(c.hangEv, in)
		c.mu.Unlock()
		if in < hangBound-200*time.Millisecond {
			c.violate("%s evicted paused %s %v into its pause (hang bound %v): %v", node, why.target, in.Round(time.Millisecond), hangBound, ev.Cause)
		}
	}
	if onClient {
		go c.checkNoIO(node, p)
	}
}

// checkNoIO: calls on an evicted reference fail at once and write nothing.
func (c *chaos) checkNoIO(node string, p *peer.Peer) {
	time.Sleep(20 * time.Millisecond) // let the connection's goroutines finish
	before := p.Conn().Stats()
	for range 3 {
		t0 := time.Now()
		err := p.Call(context.Background(), "echo", []byte("x"), nil)
		took := time.Since(t0)
		if !errors.Is(err, rpc.ErrDeadReference) {
			c.violate("%s: a call on an evicted reference returned %v after %v", node, err, took)
		} else if took > 20*time.Millisecond {
			c.late(t0, t0.Add(took), took-20*time.Millisecond, "%s: a call on an evicted reference returned after %v", node, took)
		}
	}
	after := p.Conn().Stats()
	if after.CallsOut != before.CallsOut || !after.LastSent.Equal(before.LastSent) {
		c.violate("%s: calls on an evicted reference went out: CallsOut %d -> %d, LastSent moved %v",
			node, before.CallsOut, after.CallsOut, after.LastSent.Sub(before.LastSent))
	}
}
