package peer

import (
	"math/rand/v2"
	"slices"
)

// Sample returns up to n live references chosen at random, those neither
// suspect nor overdue first (then the overdue, then the suspect), without
// copying the registry: it costs O(n) however many peers there are, where
// List costs O(peers). Pass it to FirstK with a few more than k, as
// alternates: FirstK(ctx, r.Sample(k+2), k, fn).
func (r *Registry) Sample(n int) []*Peer {
	r.mu.Lock()
	defer r.mu.Unlock()
	total := len(r.live)
	if n <= 0 || total == 0 {
		return nil
	}
	out := make([]*Peer, 0, min(n, total))
	var spare []*Peer // live, but overdue or suspect
	take := func(p *Peer) {
		switch {
		case p.conn.Err() != nil:
		case p.Suspect() || p.Overdue():
			spare = append(spare, p)
		default:
			out = append(out, p)
		}
	}
	if n*4 < total {
		// Random draws: each finds a healthy peer unless many are unwell,
		// so a few times n of them find n.
		seen := make(map[int]struct{}, 2*n)
		for range 4*n + 16 {
			i := rand.IntN(total)
			if _, dup := seen[i]; dup {
				continue
			}
			seen[i] = struct{}{}
			take(r.live[i])
			if len(out) == n {
				return out
			}
		}
		// Too many unwell to find n by chance: fall back to a scan of
		// the rest, from a random place.
		start := rand.IntN(total)
		for j := range total {
			i := (start + j) % total
			if _, dup := seen[i]; dup {
				continue
			}
			take(r.live[i])
			if len(out) == n {
				return out
			}
		}
	} else {
		start := rand.IntN(total)
		for j := range total {
			take(r.live[(start+j)%total])
			if len(out) == n {
				return out
			}
		}
	}
	slices.SortStableFunc(spare, func(a, b *Peer) int { return unwell(a) - unwell(b) })
	return append(out, spare[:min(len(spare), n-len(out))]...)
}

// unwell ranks a live reference for new work: 0 healthy, 1 overdue,
// 2 suspect.
func unwell(p *Peer) int {
	switch {
	case p.Suspect():
		return 2
	case p.Overdue():
		return 1
	}
	return 0
}

// index puts p in live, in old's place if old was there, and in dialed
// if this side dialed it.
func (r *Registry) index(p, old *Peer) {
	if old != nil && r.dialed[old.addr] == old {
		delete(r.dialed, old.addr)
	}
	if p.dialed {
		r.dialed[p.addr] = p
	}
	if i, ok := r.pos[old]; ok && old != nil {
		delete(r.pos, old)
		r.live[i] = p
		r.pos[p] = i
		return
	}
	r.pos[p] = len(r.live)
	r.live = append(r.live, p)
}

// unindex takes p out of live, moving the last one into its place, and
// out of dialed.
func (r *Registry) unindex(p *Peer) {
	if r.dialed[p.addr] == p {
		delete(r.dialed, p.addr)
	}
	i, ok := r.pos[p]
	if !ok {
		return
	}
	delete(r.pos, p)
	last := len(r.live) - 1
	if i != last {
		r.live[i] = r.live[last]
		r.pos[r.live[i]] = i
	}
	r.live[last] = nil
	r.live = r.live[:last]
}
