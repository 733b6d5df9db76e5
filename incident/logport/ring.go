package logport

import (
	"encoding/binary"
	"strconv"
)

// The ring: the port's entries, stored back to back in chunks of ChunkSize
// bytes, each entry already an ENTRY frame, so that a sender writes a run
// of entries to its stream as one slice, straight from the chunk, with no
// copy and no allocation. Chunk numbers rise by one per chunk; ring[0] is
// the oldest held, the last is the tail being filled. Everything here runs
// under Port.mu.
//
// A subscriber's cursor is a chunk number, a byte offset and the next
// sequence number. The producer never waits for a subscriber: when the
// budget is spent it drops the oldest chunk, moving every cursor in it to
// the next chunk and counting what they skipped as lost. A sender writing
// from a chunk pins it; a pinned chunk dropped from the ring is "retired"
// and still counts against the budget until unpinned, when it is reused.
// Each sender pins at most one chunk, and the budget has room for every
// subscriber's pinned chunk plus two, so the producer always finds one.

// seqPrefix starts every entry's JSON: the port's sequence number is its
// first key.
const seqPrefix = `{"` + SeqKey + `":`

// SeqKey is the key of the port's sequence number in every entry's JSON.
// (An entry that came through incident.Async also has Async's "seq".)
const SeqKey = "port_seq"

type chunk struct {
	no      uint64 // this chunk's number
	buf     []byte // ENTRY frames; cap(buf) == ChunkSize, never reallocated
	first   uint64 // seq of the first entry
	n       int    // entries
	pins    int    // senders writing from it outside the lock
	retired bool   // out of the ring while pinned
}

func (c *chunk) last() uint64 { return c.first + uint64(c.n) - 1 }

// allocatedLocked is how many chunks the port holds: ring, spare, retired.
func (p *Port) allocatedLocked() int {
	n := len(p.ring) + p.retired
	if p.spare != nil {
		n++
	}
	return n
}

func (p *Port) maxChunks() int { return p.cfg.budget / ChunkSize }

// tail is the chunk being filled, or nil.
func (p *Port) tail() *chunk {
	if len(p.ring) == 0 {
		return nil
	}
	return p.ring[len(p.ring)-1]
}

// chunkNo returns the chunk numbered no, or nil if it is not in the ring.
func (p *Port) chunkNo(no uint64) *chunk {
	if len(p.ring) == 0 || no < p.ring[0].no {
		return nil
	}
	if i := no - p.ring[0].no; i < uint64(len(p.ring)) {
		return p.ring[i]
	}
	return nil
}

// appendLocked stores an entry: the frame header, the seq, then the JSON
// with "port_seq" spliced in as its first key. body is one JSON object and
// its "\n", as zap's JSON encoder makes it.
func (p *Port) appendLocked(seq uint64, body []byte) {
	var num [20]byte
	digits := strconv.AppendUint(num[:0], seq, 10)
	comma := len(body) > 2 && body[1] != '}'
	jsonLen := len(seqPrefix) + len(digits) + len(body) - 1
	if comma {
		jsonLen++
	}
	size := frameHeader + entryFixed + jsonLen
	t := p.tail()
	if t == nil || cap(t.buf)-len(t.buf) < size {
		t = p.newChunkLocked()
	}
	b := t.buf
	b = appendHeader(b, frameEntry, entryFixed+jsonLen)
	b = binary.BigEndian.AppendUint64(b, seq)
	b = append(b, seqPrefix...)
	b = append(b, digits...)
	if comma {
		b = append(b, ',')
	}
	b = append(b, body[1:]...)
	t.buf = b
	if t.n == 0 {
		t.first = seq
	}
	t.n++
}

// newChunkLocked appends an empty chunk to the ring, dropping the oldest
// ones if the budget is spent.
func (p *Port) newChunkLocked() *chunk {
	var c *chunk
	for c == nil {
		switch {
		case p.spare != nil:
			c, p.spare = p.spare, nil
		case p.allocatedLocked() < p.maxChunks():
			c = &chunk{buf: make([]byte, 0, ChunkSize)}
		default:
			p.evictLocked()
		}
	}
	c.no, c.buf, c.first, c.n, c.pins, c.retired = p.nextNo, c.buf[:0], 0, 0, 0, false
	p.nextNo++
	p.ring = append(p.ring, c)
	return c
}

// evictLocked drops the oldest chunk. Subscribers whose cursor is in it
// lose the entries they had not taken: they are counted as dropped, and a
// loss notice is queued for each.
func (p *Port) evictLocked() {
	c := p.popLocked()
	var lost uint64
	var losers []string
	for _, s := range p.subs {
		if s.cur != c.no {
			continue
		}
		next := c.first + uint64(c.n)
		if n := next - s.next; n > 0 {
			s.lose(s.next, next-1)
			lost += n
			losers = append(losers, s.peer)
		}
		s.cur, s.off, s.next = c.no+1, 0, next
	}
	if lost > 0 {
		p.overloadLocked(lost, losers)
	}
}

// popLocked takes ring[0] out of the ring, recycling it unless pinned.
func (p *Port) popLocked() *chunk {
	c := p.ring[0]
	p.ring[0] = nil
	p.ring = p.ring[1:]
	if len(p.ring) == 0 {
		p.ring = nil // let append start afresh rather than creep along
	}
	if c.pins > 0 {
		c.retired = true
		p.retired++
	} else {
		p.recycleLocked(c)
	}
	return c
}

// recycleLocked keeps one spare chunk for the producer; the rest go to the
// garbage collector.
func (p *Port) recycleLocked(c *chunk) {
	if p.spare == nil && (len(p.subs) > 0 || p.cfg.history) {
		p.spare = c
	}
}

// unpinLocked ends a sender's write from c.
func (p *Port) unpinLocked(c *chunk) {
	c.pins--
	if c.pins == 0 && c.retired {
		c.retired = false
		p.retired--
		p.recycleLocked(c)
	}
}

// trimLocked frees the chunks every subscriber has passed, unless the port
// keeps history. With no subscriber left it frees everything.
func (p *Port) trimLocked() {
	if p.cfg.history {
		return
	}
	if len(p.subs) == 0 {
		for len(p.ring) > 0 {
			p.popLocked()
		}
		p.spare = nil
		return
	}
	low := p.subs[0].cur
	for _, s := range p.subs[1:] {
		low = min(low, s.cur)
	}
	for len(p.ring) > 1 && p.ring[0].no < low {
		p.popLocked()
	}
}

// heldBytesLocked is the bytes of entries in the ring.
func (p *Port) heldBytesLocked() int {
	n := 0
	for _, c := range p.ring {
		n += len(c.buf)
	}
	return n
}

// frameLen is the length of the frame at the start of b.
func frameLen(b []byte) int {
	return frameHeader + int(binary.BigEndian.Uint32(b[1:5]))
}
