package cluster

import (
	"fmt"
	"math"
	"testing"

	"github.com/tetherrpc/tether/peer"
)

// view is the selection of a node among n members (itself included)
// with the bound k, as rebalance computes it: the members it is paired
// with (dialing or dialed).
func view(self peer.ID, all []peer.ID, k int) map[peer.ID]bool {
	c := &Cluster{self: self, maxKept: k, members: map[peer.ID]*member{}}
	for _, id := range all {
		if id != self {
			c.members[id] = &member{id: id, score: pairScore(self, id)}
		}
	}
	limit := c.threshold()
	out := map[peer.ID]bool{}
	for id, m := range c.members {
		if limit == math.MaxUint64 || m.score < limit {
			out[id] = true
		}
	}
	return out
}

func syntheticIDs(n int) []peer.ID {
	ids := make([]peer.ID, n)
	for i := range ids {
		ids[i] = peer.ID(fmt.Sprintf("member-%04d", i))
	}
	return ids
}

// In a cluster of 1,000 with the default bound, each member is paired
// with about 64 others (none with fewer than 32 or more than 100), pairs
// are symmetric (both sides agree), the graph is connected, and a member
// joining changes few pairs among the others.
func TestBoundAtAThousand(t *testing.T) {
	ids := syntheticIDs(1000)
	views := map[peer.ID]map[peer.ID]bool{}
	lo, hi, sum := math.MaxInt, 0, 0
	for _, id := range ids {
		v := view(id, ids, DefaultMaxKept)
		views[id] = v
		lo, hi, sum = min(lo, len(v)), max(hi, len(v)), sum+len(v)
	}
	mean := float64(sum) / float64(len(ids))
	t.Logf("1,000 members, bound %d: connections per member min %d, mean %.1f, max %d", DefaultMaxKept, lo, mean, hi)
	if mean < 56 || mean > 72 || lo < 32 || hi > 100 {
		t.Fatalf("degree min %d mean %.1f max %d; want about %d", lo, mean, hi, DefaultMaxKept)
	}
	for a, v := range views {
		for b := range v {
			if !views[b][a] {
				t.Fatalf("%s is paired with %s, but not the other way", a, b)
			}
		}
	}
	seen := map[peer.ID]bool{ids[0]: true}
	queue := []peer.ID{ids[0]}
	for len(queue) > 0 {
		a := queue[0]
		queue = queue[1:]
		for b := range views[a] {
			if !seen[b] {
				seen[b] = true
				queue = append(queue, b)
			}
		}
	}
	if len(seen) != len(ids) {
		t.Fatalf("the graph of connections reaches %d of %d members", len(seen), len(ids))
	}

	grown := append(ids[:len(ids):len(ids)], "member-new")
	changed := 0
	for _, id := range ids {
		v := view(id, grown, DefaultMaxKept)
		for b := range views[id] {
			if !v[b] {
				changed++
			}
		}
		for b := range v {
			if b != "member-new" && !views[id][b] {
				changed++
			}
		}
	}
	t.Logf("a member joining: %d pairs among the others changed (of %d)", changed/2, sum/2)
	if changed/2 > 200 {
		t.Fatalf("a member joining changed %d pairs", changed/2)
	}
}

// Up to the bound every pair is connected; a negative bound connects
// every pair however many.
func TestBoundAll(t *testing.T) {
	ids := syntheticIDs(65)
	if v := view(ids[0], ids, DefaultMaxKept); len(v) != 64 {
		t.Fatalf("65 members, bound 64: paired with %d", len(v))
	}
	ids = syntheticIDs(300)
	if v := view(ids[0], ids, (&Config{MaxKept: -1}).maxKept()); len(v) != 299 {
		t.Fatalf("300 members, no bound: paired with %d", len(v))
	}
	if v := view(ids[0], ids, DefaultMaxKept); len(v) >= 150 {
		t.Fatalf("300 members, bound 64: paired with %d", len(v))
	}
}
