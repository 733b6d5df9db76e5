package cluster_test

import (
	"testing"

	"github.com/tetherrpc/tether/cluster"
)

// With a bound of 4 in a cluster of 12, each member holds connections to
// a few others, not eleven; a pair is connected exactly when its members
// keep each other.
func TestClusterBound(t *testing.T) {
	ms := []*member{startWith(t, cluster.Config{MaxKept: 4})}
	for range 11 {
		ms = append(ms, startWith(t, cluster.Config{MaxKept: 4, Seeds: []string{ms[0].c.GossipAddr()}}))
	}
	byID := map[string]*member{}
	for _, m := range ms {
		byID[string(m.n.ID())] = m
	}
	// keeps[a][b]: a keeps b.
	keeps := func() map[string]map[string]bool {
		out := map[string]map[string]bool{}
		for _, m := range ms {
			out[string(m.n.ID())] = map[string]bool{}
			for _, o := range m.c.Members() {
				if o.Kept {
					out[string(m.n.ID())][string(o.ID)] = true
				}
			}
		}
		return out
	}
	settled := func() bool {
		k := keeps()
		for _, m := range ms {
			if !knowsAll(m, ms) {
				return false
			}
			for _, o := range ms {
				a, b := string(m.n.ID()), string(o.n.ID())
				if a == b {
					continue
				}
				want := k[a][b] || k[b][a]
				p, ok := m.n.Peers().Get(o.n.ID())
				if want != (ok && p.Err() == nil) {
					return false
				}
			}
		}
		return true
	}
	waitSettled(t, settled)
	k := keeps()
	total, most := 0, 0
	for _, m := range ms {
		n := len(m.n.Peers().List())
		total += n
		most = max(most, n)
		for b := range k[string(m.n.ID())] {
			if !k[b][string(m.n.ID())] {
				t.Fatalf("%s keeps %s, but not the other way", m.n.ID(), b)
			}
		}
	}
	t.Logf("12 members, bound 4: %d connections in all (a full mesh: 66), at most %d at one member", total/2, most)
	if most >= 11 || total/2 >= 66 {
		t.Fatalf("the bound did not hold: %d connections, %d at one member", total/2, most)
	}
}
