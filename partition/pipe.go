package partition

import (
	"bytes"
	"time"
)

// chunk is one Write's worth of bytes (or a FIN) travelling one direction.
type chunk struct {
	data   []byte
	fin    bool
	arrive time.Time // when it reaches the far end; zero while held by a cut
}

// pipe is one direction of a connection: what one end writes and the other
// reads. Every field is guarded by the owning pair's mutex.
//
// Bytes pass through two stages: inFlight (written, not yet arrived: on the
// wire, delayed, or held by a cut) and recv (arrived, not yet read). Chunks
// arrive strictly in order, as TCP delivers them. Their total is bounded by
// the network's buffer size, which is what makes a writer block.
type pipe struct {
	pr    *pair
	link  link
	cut   bool
	delay time.Duration

	inFlight    []chunk
	flightBytes int
	recv        bytes.Buffer
	eof         bool // the writer's FIN has arrived: reads drain recv, then see io.EOF

	readerGone bool // the reading end closed: arriving bytes are discarded
	broken     bool // the writing end has seen the reader's FIN: writes fail

	timer   *time.Timer // delivers delayed chunks; nil until first needed
	timerAt time.Time   // when timer is due; zero when not armed
}

// space returns how many more bytes the writer may send now.
func (p *pipe) space() int {
	return p.pr.net.bufSize - p.flightBytes - p.recv.Len()
}

// send puts c on the wire at now: it arrives after the link's delay, or is
// held while the link is cut.
func (p *pipe) send(c chunk, now time.Time) {
	if !p.cut {
		c.arrive = now.Add(p.delay)
	}
	p.inFlight = append(p.inFlight, c)
	p.flightBytes += len(c.data)
	p.deliverDue(now)
	p.arm()
}

// deliverDue moves every chunk that has arrived by now, in order, to the
// reading end. A chunk that has arrived waits for those before it.
func (p *pipe) deliverDue(now time.Time) {
	delivered := false
	for len(p.inFlight) > 0 {
		c := p.inFlight[0]
		if c.arrive.IsZero() || c.arrive.After(now) {
			break
		}
		p.inFlight[0] = chunk{}
		p.inFlight = p.inFlight[1:]
		p.flightBytes -= len(c.data)
		delivered = true
		switch {
		case c.fin:
			p.eof = true
			p.pr.reverse(p).broken = true
		case !p.readerGone:
			p.recv.Write(c.data)
		}
	}
	if len(p.inFlight) == 0 {
		p.inFlight = nil // let a long queue's array go
	}
	if delivered {
		p.pr.broadcast()
	}
}

// arm makes sure the timer fires when the first chunk in flight is due.
func (p *pipe) arm() {
	if p.pr.done || len(p.inFlight) == 0 || p.inFlight[0].arrive.IsZero() {
		return
	}
	at := p.inFlight[0].arrive
	if !p.timerAt.IsZero() && !p.timerAt.After(at) {
		return // due no later than needed; it re-arms when it fires
	}
	p.timerAt = at
	if p.timer == nil {
		p.timer = time.AfterFunc(time.Until(at), p.fire)
	} else {
		p.timer.Reset(time.Until(at))
	}
}

// fire is the timer's callback. A stale call (one that raced a Reset) is
// harmless: it delivers what is due and re-arms.
func (p *pipe) fire() {
	p.pr.mu.Lock()
	defer p.pr.mu.Unlock()
	p.timerAt = time.Time{}
	if p.pr.done {
		return
	}
	p.deliverDue(time.Now())
	p.arm()
}

// setLink applies a new state of the pipe's link at now. On a cut, what
// has already arrived stays arrived and what is still in flight is held, as
// lost packets are kept for retransmission; on heal, everything held is sent
// again and arrives after the link's delay.
func (p *pipe) setLink(s linkState, now time.Time) {
	switch {
	case s.cut && !p.cut:
		p.deliverDue(now)
		for i := range p.inFlight {
			p.inFlight[i].arrive = time.Time{}
		}
		p.stopTimer()
	case !s.cut && p.cut:
		for i := range p.inFlight {
			p.inFlight[i].arrive = now.Add(s.delay)
		}
	}
	p.cut, p.delay = s.cut, s.delay
	p.deliverDue(now)
	p.arm()
}

func (p *pipe) stopTimer() {
	if p.timer != nil {
		p.timer.Stop()
	}
	p.timerAt = time.Time{}
}

// release drops everything once neither end can use the pipe.
func (p *pipe) release() {
	p.stopTimer()
	p.inFlight = nil
	p.flightBytes = 0
	p.recv = bytes.Buffer{}
}
