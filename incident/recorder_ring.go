package incident

import (
	"slices"

	"go.uber.org/zap/zapcore"
)

// record is one remembered entry. Its fields are owned: the context fields
// of the core it was written through, then its own, snapshotted.
type record struct {
	ent    zapcore.Entry
	seq    uint64
	fields []zapcore.Field
}

// ring keeps the last size records of one level class. Slots are reused,
// fields slices included, so recording allocates nothing once warm.
type ring struct {
	recs []record
	next int // oldest slot once full
	size int
}

func (r *ring) add(ent zapcore.Entry, seq uint64, ctx, fields []zapcore.Field) {
	if r.size == 0 {
		return
	}
	var rec *record
	if n := len(r.recs); n < r.size {
		if n < cap(r.recs) {
			r.recs = r.recs[:n+1]
		} else {
			r.recs = append(r.recs, record{})
		}
		rec = &r.recs[n]
	} else {
		rec = &r.recs[r.next]
		r.next++
		if r.next == r.size {
			r.next = 0
		}
	}
	rec.ent = ent
	rec.seq = seq
	old := len(rec.fields)
	rec.fields = append(append(rec.fields[:0], ctx...), fields...)
	if old > len(rec.fields) {
		clear(rec.fields[len(rec.fields):old])
	}
}

// reset empties the ring, keeping its memory and dropping references.
func (r *ring) reset() {
	for i := range r.recs {
		clear(r.recs[i].fields)
		r.recs[i].fields = r.recs[i].fields[:0]
		r.recs[i].ent = zapcore.Entry{}
	}
	r.recs = r.recs[:0]
	r.next = 0
}

// ringSet is the history: one ring per level class.
type ringSet [4]ring

func newRingSet(sizes [4]int) *ringSet {
	var rs ringSet
	for i := range rs {
		rs[i].size = sizes[i]
	}
	return &rs
}

// ringIndex maps a level to its ring: Debug (and below), Info, Warn, Error
// (and above).
func ringIndex(l zapcore.Level) int {
	switch {
	case l <= zapcore.DebugLevel:
		return 0
	case l == zapcore.InfoLevel:
		return 1
	case l == zapcore.WarnLevel:
		return 2
	default:
		return 3
	}
}

func (rs *ringSet) add(ent zapcore.Entry, seq uint64, ctx, fields []zapcore.Field) {
	rs[ringIndex(ent.Level)].add(ent, seq, ctx, fields)
}

// merged returns every record, oldest first by sequence number.
func (rs *ringSet) merged() []*record {
	n := 0
	for i := range rs {
		n += len(rs[i].recs)
	}
	out := make([]*record, 0, n)
	for i := range rs {
		for j := range rs[i].recs {
			out = append(out, &rs[i].recs[j])
		}
	}
	slices.SortFunc(out, func(a, b *record) int {
		switch {
		case a.seq < b.seq:
			return -1
		case a.seq > b.seq:
			return 1
		}
		return 0
	})
	return out
}

func (rs *ringSet) reset() {
	for i := range rs {
		rs[i].reset()
	}
}
