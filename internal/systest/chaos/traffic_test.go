package chaos

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/tetherrpc/tether/incident/logport"
	"github.com/tetherrpc/tether/peer"
	"github.com/tetherrpc/tether/rpc"
)

// ---- traffic ----

// track records when a reference dies (once per reference).
func (c *chaos) track(p *peer.Peer) {
	c.mu.Lock()
	_, ok := c.deaths[p]
	if !ok {
		c.deaths[p] = time.Time{}
	}
	c.mu.Unlock()
	if !ok {
		context.AfterFunc(p.Conn().Context(), func() {
			c.mu.Lock()
			c.deaths[p] = time.Now()
			c.mu.Unlock()
		})
	}
}

func (c *chaos) deathOf(p *peer.Peer) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.deaths[p]
}

// serverIDs are the IDs of every server a client keeps, in-process first.
func (c *chaos) serverRefs(cl *client, inProcessOnly bool) []*peer.Peer {
	var out []*peer.Peer
	for _, p := range cl.n.Peers().List() {
		name := c.nameOf(p.ID(), p)
		if strings.HasPrefix(name, "S") || (!inProcessOnly && strings.HasPrefix(name, "P")) {
			out = append(out, p)
		}
	}
	return out
}

// call makes one call and checks what came back.
func (c *chaos) call(ctx context.Context, cl *client, p *peer.Peer, method string, payload []byte, timeout time.Duration) {
	c.track(p)
	deadBefore := p.Err() != nil
	var before rpc.Stats
	if deadBefore {
		before = p.Conn().Stats()
	}
	deadline := time.Now().Add(timeout)
	cctx, cancel := context.WithDeadline(ctx, deadline)
	t0 := time.Now()
	err := p.Call(cctx, method, payload, nil)
	t1 := time.Now()
	cancel()
	if ctx.Err() != nil {
		return // the run is over
	}
	c.calls.Add(1)
	if over := t1.Sub(deadline); over > 0 {
		for {
			m := c.maxOverrun.Load()
			if int64(over) <= m || c.maxOverrun.CompareAndSwap(m, int64(over)) {
				break
			}
		}
		if over > overrun {
			c.late(deadline, t1, over-overrun, "%s: a %s call to %s outlived its deadline (%v) by %v: %v", cl.name, method, c.nameOf(p.ID(), p), timeout, over, err)
		}
	}
	td := c.deathOf(p)
	switch {
	case err == nil:
		c.okCalls.Add(1)
	case errors.Is(err, rpc.ErrDeadReference):
		c.deadCalls.Add(1)
		if p.Err() == nil {
			c.violate("%s: a call returned ErrDeadReference on a live reference: %v", cl.name, err)
		}
		if !td.IsZero() && t0.Before(td) {
			c.outstandingFailed.Add(1)
			if lag := t1.Sub(td); lag > overrun {
				c.late(td, t1, lag-overrun, "%s: a call outstanding at the eviction of %s failed %v after it", cl.name, c.nameOf(p.ID(), p), lag)
			}
		}
		cl.errMu.Lock()
		cl.errLogs = append(cl.errLogs, time.Now())
		cl.errMu.Unlock()
		cl.n.Logger().Error("call failed", zap.String("peer", string(p.ID())), zap.String("method", method), zap.Error(err))
	case errors.Is(err, context.DeadlineExceeded):
		c.deadlineCalls.Add(1)
		if !td.IsZero() && t0.Before(td) && td.Before(deadline.Add(-10*time.Millisecond)) {
			c.violate("%s: a call outstanding at the eviction of %s (%v before its deadline) returned %v, not ErrDeadReference",
				cl.name, c.nameOf(p.ID(), p), deadline.Sub(td), err)
		}
	default:
		c.otherCalls.Add(1)
		c.violate("%s: a %s call to %s returned an unclear error %T: %v", cl.name, method, c.nameOf(p.ID(), p), err, err)
	}
	if deadBefore {
		c.deadRefCalls.Add(1)
		took := t1.Sub(t0)
		if took > c.maxDeadCallDur() {
			c.maxDeadCall.Store(int64(took))
		}
		after := p.Conn().Stats()
		if !errors.Is(err, rpc.ErrDeadReference) {
			c.violate("%s: a call on a reference evicted before it returned %v after %v", cl.name, err, took)
		} else if took > 20*time.Millisecond {
			c.late(t0, t1, took-20*time.Millisecond, "%s: a call on a reference evicted before it returned after %v", cl.name, took)
		}
		if after.CallsOut != before.CallsOut || !after.LastSent.Equal(before.LastSent) {
			c.violate("%s: a call on an evicted reference went out (CallsOut %d -> %d)", cl.name, before.CallsOut, after.CallsOut)
		}
	}
}

func (c *chaos) maxDeadCallDur() time.Duration { return time.Duration(c.maxDeadCall.Load()) }

// caller makes echo calls with random deadlines to random servers, now and
// then on a reference it kept from before (which may be dead).
func (c *chaos) caller(ctx context.Context, cl *client, w int) {
	rng := rand.New(rand.NewPCG(uint64(cl.idx), uint64(w)))
	cached := map[peer.ID]*peer.Peer{}
	payload := make([]byte, 16<<10)
	for ctx.Err() == nil {
		refs := c.serverRefs(cl, false)
		if len(refs) == 0 {
			time.Sleep(5 * time.Millisecond)
			continue
		}
		p := refs[rng.IntN(len(refs))]
		if old := cached[p.ID()]; old != nil && rng.IntN(3) == 0 {
			p = old // perhaps dead by now
		}
		cached[p.ID()] = p
		size := 64 << rng.IntN(9) // 64 B to 16 KiB
		c.call(ctx, cl, p, "echo", payload[:size], time.Duration(20+rng.IntN(980))*time.Millisecond)
		if rng.IntN(4) == 0 {
			time.Sleep(time.Duration(rng.IntN(20)) * time.Millisecond)
		}
	}
}

// holder keeps calls outstanding on the in-process servers: each is held
// until its deadline, unless its server is evicted first.
func (c *chaos) holder(ctx context.Context, cl *client) {
	const outstanding = 16
	var wg sync.WaitGroup
	for h := range outstanding {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(cl.idx)+100, uint64(h)))
			for ctx.Err() == nil {
				refs := c.serverRefs(cl, true)
				if len(refs) == 0 {
					time.Sleep(5 * time.Millisecond)
					continue
				}
				p := refs[rng.IntN(len(refs))]
				c.call(ctx, cl, p, "hold", nil, time.Duration(500+rng.IntN(3500))*time.Millisecond)
			}
		}()
	}
	wg.Wait()
}

// reader does k-of-n reads over every server the client holds.
func (c *chaos) reader(ctx context.Context, cl *client) {
	key := []byte("share-key")
	for ctx.Err() == nil {
		refs := c.serverRefs(cl, false)
		c.mu.Lock()
		unfaulted := numServers + numPausable
		spiking := false
		for _, f := range c.activeFaults(time.Now()) {
			if f.kind == faultSpike {
				spiking = true
			} else {
				unfaulted--
			}
		}
		c.mu.Unlock()
		const timeout = 2 * time.Second
		rctx, cancel := context.WithTimeout(ctx, timeout)
		t0 := time.Now()
		_, err := peer.FirstK(rctx, refs, readK, func(ctx context.Context, p *peer.Peer) ([]byte, error) {
			var out []byte
			err := p.Call(ctx, "echo", key, &out)
			return out, err
		})
		took := time.Since(t0)
		cancel()
		if ctx.Err() != nil {
			return
		}
		c.reads.Add(1)
		c.mu.Lock()
		c.readLat = append(c.readLat, took)
		c.mu.Unlock()
		if took > timeout+overrun {
			c.late(t0.Add(timeout), t0.Add(took), took-timeout-overrun, "%s: a k-of-n read outlived its deadline by %v", cl.name, took-timeout)
		}
		if err != nil {
			c.readsFailed.Add(1)
			if unfaulted >= readK+2 && !spiking {
				c.violate("%s: a k-of-n read (k=%d) failed with %d servers unfaulted: %v", cl.name, readK, unfaulted, err)
			}
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// gather subscribes to a server's log port through the client, resuming
// after every loss of the connection, and checks that every sequence
// number shows up once, as an entry or in a loss notice.
func (c *chaos) gather(ctx context.Context, cl *client, s *server) {
	var pos logport.Position
	for ctx.Err() == nil {
		p, ok := cl.n.Peers().Get(s.id)
		if !ok {
			time.Sleep(20 * time.Millisecond)
			continue
		}
		var cov *cover
		opts := []logport.SubscribeOption{logport.OnStart(func(start logport.Position) {
			c.mu.Lock()
			defer c.mu.Unlock()
			cov = c.covers[start.Epoch]
			if cov == nil {
				cov = &cover{server: s.name, first: start.Seq + 1, last: start.Seq}
				c.covers[start.Epoch] = cov
				return
			}
			if start.Seq != cov.last {
				c.violations = append(c.violations, fmt.Sprintf("%7.3fs log port of %s: resumed at %d after entry %d: %d entries neither delivered nor announced lost",
					c.now(), s.name, start.Seq, cov.last, int64(start.Seq)-int64(cov.last)))
				cov.last = start.Seq
			}
		})}
		if pos != (logport.Position{}) {
			opts = append(opts, logport.From(pos))
		}
		got, _ := logport.Subscribe(ctx, p, func(e logport.Entry) {
			c.mu.Lock()
			defer c.mu.Unlock()
			first, last := e.Seq, e.Seq
			if e.IsLoss() {
				first, last = e.Lost.First, e.Lost.Last
				cov.lost += e.Lost.N()
			} else {
				cov.entries++
				c.gathered[s.name]++
			}
			if first != cov.last+1 {
				c.violations = append(c.violations, fmt.Sprintf("%7.3fs log port of %s: after %d came %d..%d", c.now(), s.name, cov.last, first, last))
			}
			cov.last = last
		}, opts...)
		if got.Epoch != 0 {
			pos = got
		}
		time.Sleep(20 * time.Millisecond)
	}
}
