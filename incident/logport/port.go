package logport

import (
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap/zapcore"

	"github.com/tetherrpc/tether/rpc"
)

// The methods a port registers.
const (
	// MethodSubscribe is the stream a subscriber opens to receive entries.
	MethodSubscribe = "log.subscribe"
	// MethodIncidents is the call that lists incident files.
	MethodIncidents = "log.incidents"
	// MethodIncident is the stream that fetches one incident file.
	MethodIncident = "log.incident"
)

// Port serves a node's log stream to subscribers. Make one with New, tee
// its Core into the node's logging pipeline, Register its methods on the
// node, and Close it when the node stops.
type Port struct {
	cfg     config
	epoch   uint64
	closing chan struct{}
	wg      sync.WaitGroup // subscriptions, fetches, notices

	// active is true while the port has subscribers or keeps history: while
	// false, Write only numbers entries and encodes nothing.
	active atomic.Bool

	mu        sync.Mutex
	seq       uint64   // last sequence number given
	ring      []*chunk // see ring.go
	nextNo    uint64   // number of the next chunk
	spare     *chunk
	retired   int // chunks out of the ring, pinned by senders
	subs      []*sub
	nextSubID uint64
	closed    bool
	ended     counts // subscriptions that ended
	oversize  uint64
	refused   uint64
	misbehave uint64
	overload  overloadState
}

type counts struct {
	produced, delivered, dropped, losses uint64
}

// Registrar is where a port registers its methods: an *rpc.Mux, or a
// *tether.Node.
type Registrar interface {
	Handle(method string, h rpc.Handler)
	HandleStream(method string, h rpc.StreamHandler)
}

// New returns a port. It starts no goroutine: subscriptions run on the rpc
// layer's handler goroutines (and one reader each), and overload notices on
// a goroutine of their own, at most once an hour.
func New(opts ...Option) *Port {
	cfg := defaultConfig()
	for _, o := range opts {
		o(&cfg)
	}
	cfg.resolve()
	p := &Port{
		cfg:     cfg,
		epoch:   rand.Uint64() | 1,
		closing: make(chan struct{}),
	}
	p.active.Store(cfg.history)
	return p
}

// Register registers the port's methods (MethodSubscribe, MethodIncidents,
// MethodIncident) on r.
func (p *Port) Register(r Registrar) {
	r.HandleStream(MethodSubscribe, rpc.StreamFunc(p.serveSubscribe))
	r.Handle(MethodIncidents, rpc.Func(p.serveList))
	r.HandleStream(MethodIncident, rpc.StreamFunc(p.serveFetch))
}

// Core returns the tap: a zapcore.Core that publishes every entry written
// to it to the port's subscribers. Tee it into the node's pipeline, best
// behind incident.Async, so that it runs on Async's writer goroutine:
//
//	core := incident.Async(zapcore.NewTee(fileCore, port.Core()))
//
// Write never blocks on a subscriber and never fails. It encodes the entry
// once with zap's JSON encoder into a pooled buffer (only while someone
// subscribes, or WithHistory), takes the port's lock to number it and copy
// it into the ring, wakes the senders that wait for it, and returns. Its
// cost does not depend on how slow, or how many, the subscribers are.
// Concurrent writers are safe; they serialise on the lock for the copy only.
func (p *Port) Core() zapcore.Core {
	return &tapCore{p: p, enc: zapcore.NewJSONEncoder(p.cfg.encoder)}
}

// Epoch identifies this port among the ports a node has had: a random
// number, told to subscribers, so that one resuming after a reconnection
// knows whether the sequence numbers it has still mean anything.
func (p *Port) Epoch() uint64 { return p.epoch }

// Budget is the port's memory budget in bytes.
func (p *Port) Budget() int { return p.cfg.budget }

// Close ends every subscription (each subscriber gets an error frame
// matching ErrClosed after the entries already on their way, if it takes
// them within a second; else its stream is cut), waits for the port's
// goroutines, and frees its memory. Entries written afterwards are
// ignored. Close is idempotent.
func (p *Port) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	p.active.Store(false)
	// A sender blocked in Write (its subscriber granted credit and stopped
	// reading) gets the grace period, then fails.
	for _, s := range p.subs {
		s.st.SetWriteDeadline(time.Now().Add(closeGrace))
	}
	p.mu.Unlock()
	close(p.closing)
	p.wg.Wait()
	p.mu.Lock()
	for len(p.ring) > 0 {
		p.popLocked()
	}
	p.spare = nil
	p.mu.Unlock()
	return nil
}

// enter registers a handler goroutine for Close to wait for; it reports
// false once the port is closed.
func (p *Port) enter() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	p.wg.Add(1)
	return true
}

// sub is one subscription. Fields below mu are guarded by Port.mu.
type sub struct {
	id    uint64
	peer  string
	st    *rpc.Stream
	since time.Time
	wake  chan struct{} // 1-buffered

	start     uint64 // Produced counts the seqs above it
	next      uint64 // next seq to take
	cur       uint64 // cursor: chunk number
	off       int    //         byte offset in that chunk
	credit    uint64
	sending   int // entries taken, being written
	sendBytes int
	delivered uint64
	dropped   uint64
	losses    uint64 // loss notices sent
	loss      Loss   // notice to send; First == 0 if none
	waiting   bool   // the sender sleeps on wake
	err       error  // the reader's verdict: a protocol violation
	gone      error  // the reader's stream failed
	eof       bool   // the subscriber closed its side: unsubscribed
}

// lose records that the entries first..last will never be sent.
func (s *sub) lose(first, last uint64) {
	s.dropped += last - first + 1
	if s.loss.First == 0 {
		s.loss.First = first
	}
	s.loss.Last = last
}

// poke wakes the sender if it sleeps; never blocks.
func (s *sub) poke() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// addSub registers a subscription starting where req says.
func (p *Port) addSub(peer string, st *rpc.Stream, req subscribeReq) (*sub, hello, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		p.refused++
		return nil, hello{}, &Error{Code: CodeClosed, Message: "the port is closed"}
	}
	if len(p.subs) >= p.cfg.maxSubs {
		p.refused++
		return nil, hello{}, &Error{Code: CodeTooMany, Message: "the port serves its limit of " + strconv.Itoa(p.cfg.maxSubs) + " subscribers"}
	}
	p.nextSubID++
	s := &sub{id: p.nextSubID, peer: peer, st: st, since: p.cfg.now(), wake: make(chan struct{}, 1)}
	// By default a subscription starts after the newest entry, at the end
	// of the tail chunk (or at the next chunk when the ring is empty).
	s.start, s.next = p.seq, p.seq+1
	s.cur = p.nextNo
	if t := p.tail(); t != nil {
		s.cur, s.off = t.no, len(t.buf)
	}
	from := uint64(0)
	switch req.mode {
	case modeRetained:
		if len(p.ring) > 0 && p.ring[0].n > 0 {
			from = p.ring[0].first
		}
	case modeFrom:
		from = req.from
		if req.epoch != p.epoch || from == 0 {
			from = 1 // another incarnation: everything of this one
		}
	}
	if from > 0 && from <= p.seq {
		p.startAtLocked(s, from)
	}
	p.subs = append(p.subs, s)
	p.active.Store(true)
	return s, hello{epoch: p.epoch, next: s.start + 1, maxCredit: p.cfg.maxCredit}, nil
}

// startAtLocked moves a new subscription's start back to seq from (at most
// p.seq), as far as the ring holds entries; the rest is lost at once.
func (p *Port) startAtLocked(s *sub, from uint64) {
	s.start, s.next = from-1, from
	var c *chunk
	for _, rc := range p.ring {
		if rc.n > 0 && rc.last() >= from {
			c = rc
			break
		}
	}
	if c == nil { // nothing held from there on: all of it is gone
		s.lose(from, p.seq)
		s.next = p.seq + 1
		return
	}
	if c.first > from {
		s.lose(from, c.first-1)
		s.next = c.first
	}
	s.cur, s.off = c.no, 0
	for seq := c.first; seq < s.next; seq++ {
		s.off += frameLen(c.buf[s.off:])
	}
}

// removeSub ends a subscription: what it had queued is dropped and its
// counts go to the port's totals.
func (p *Port) removeSub(s *sub) SubscriberStats {
	p.mu.Lock()
	defer p.mu.Unlock()
	if s.next <= p.seq {
		s.dropped += p.seq - s.next + 1
		s.next = p.seq + 1
	}
	st := p.subStatsLocked(s)
	p.ended.produced += st.Produced
	p.ended.delivered += st.Delivered
	p.ended.dropped += st.Dropped
	p.ended.losses += st.Losses
	for i, x := range p.subs {
		if x == s {
			last := len(p.subs) - 1
			copy(p.subs[i:], p.subs[i+1:])
			p.subs[last] = nil
			p.subs = p.subs[:last]
			break
		}
	}
	p.active.Store(len(p.subs) > 0 || (p.cfg.history && !p.closed))
	p.trimLocked()
	return st
}
