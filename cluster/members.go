package cluster

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"math"

	"github.com/hashicorp/memberlist"
	"go.uber.org/zap"

	"github.com/tetherrpc/tether/peer"
)

// metaVersion starts a member's metadata: the version, then its tether
// address.
const metaVersion = 1

func encodeMeta(addr string) []byte { return append([]byte{metaVersion}, addr...) }

func decodeMeta(b []byte) (string, error) {
	if len(b) < 2 || b[0] != metaVersion {
		return "", errors.New("metadata of an unknown version")
	}
	addr := string(b[1:])
	if err := peer.CheckAddr(addr); err != nil {
		return "", err
	}
	return addr, nil
}

// delegate gives the gossip this node's metadata; it carries no messages
// of its own.
type delegate struct{ meta []byte }

func (d *delegate) NodeMeta(limit int) []byte {
	if len(d.meta) > limit {
		return nil // Join's advertised address is far below the 512-byte limit
	}
	return d.meta
}
func (d *delegate) NotifyMsg([]byte)                  {}
func (d *delegate) GetBroadcasts(_, _ int) [][]byte   { return nil }
func (d *delegate) LocalState(bool) []byte            { return nil }
func (d *delegate) MergeRemoteState(_ []byte, _ bool) {}

// events hears the gossip's verdicts. memberlist calls it from one
// goroutine at a time, in order, sometimes with its own locks held: it
// must not call back into memberlist, and does not block.
type events struct{ c *Cluster }

func (e *events) NotifyJoin(n *memberlist.Node)   { e.c.update(n, true) }
func (e *events) NotifyUpdate(n *memberlist.Node) { e.c.update(n, true) }
func (e *events) NotifyLeave(n *memberlist.Node)  { e.c.update(n, false) }

// update records that n is a member (alive) or is no longer one (it left,
// or was declared dead), and rebalances what this node keeps.
func (c *Cluster) update(n *memberlist.Node, alive bool) {
	id := peer.ID(n.Name)
	if id == c.self {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return
	}
	old := c.members[id]
	if !alive {
		if old == nil {
			return
		}
		delete(c.members, id)
		how := "declared dead"
		if n.State == memberlist.StateLeft {
			how = "left"
		}
		c.log.Info("member "+how, zap.String("member", string(id)), zap.String("addr", old.addr), zap.Int("members", len(c.members)))
	} else {
		addr, err := decodeMeta(n.Meta)
		if err != nil {
			if old == nil {
				c.log.Info("not a member: its metadata", zap.String("member", string(id)), zap.String("gossip", n.Address()), zap.Error(err))
			}
			return
		}
		if old != nil && old.addr == addr {
			return
		}
		if k := c.kept[id]; k != nil && old != nil { // moved: keep the new address
			k.Stop()
			delete(c.kept, id)
		}
		c.members[id] = &member{id: id, addr: addr, gossip: n.Address(), score: pairScore(c.self, id)}
		if old == nil {
			c.log.Debug("member joined", zap.String("member", string(id)), zap.String("addr", addr), zap.Int("members", len(c.members)))
		}
	}
	c.notify()
	c.rebalance()
}

// rebalance starts keeping the members this node should dial and stops
// keeping the others. c.mu is held.
func (c *Cluster) rebalance() {
	limit := c.threshold()
	for id, k := range c.kept {
		m := c.members[id]
		if m == nil || !c.dials(m, limit) {
			k.Stop()
			delete(c.kept, id)
		}
	}
	for id, m := range c.members {
		if !c.dials(m, limit) {
			c.unpair(id)
			continue
		}
		if _, ok := c.kept[id]; ok {
			continue
		}
		k, err := c.n.Peers().KeepAddr(string(id) + "@" + m.addr)
		if err != nil {
			c.log.Info("not keeping a member", zap.String("member", string(id)), zap.Error(err))
			continue
		}
		c.kept[id] = k
	}
}

// threshold is the score below which a pair of members is connected: all
// pairs while the cluster has at most maxKept other members; beyond, a
// fraction maxKept/members of them, so that each member has maxKept
// connections on average.
func (c *Cluster) threshold() uint64 {
	others := len(c.members)
	if others <= c.maxKept {
		return math.MaxUint64
	}
	return uint64(float64(c.maxKept) / float64(others) * math.MaxUint64)
}

// dials reports whether this node keeps m connected: whether their pair
// is among those connected. Both members of a pair keep it (so that each
// redials after a loss, and counts the other among its kept addresses for
// readiness); when both dial at once, the registry keeps the connection
// the smaller ID dialed and retires the other with a goodbye.
func (c *Cluster) dials(m *member, threshold uint64) bool {
	return threshold == math.MaxUint64 || m.score < threshold
}

// pairScore hashes a pair of IDs, the same whichever side asks.
func pairScore(a, b peer.ID) uint64 {
	if b < a {
		a, b = b, a
	}
	h := sha256.New()
	h.Write([]byte(a))
	h.Write([]byte{0})
	h.Write([]byte(b))
	return binary.BigEndian.Uint64(h.Sum(nil))
}

// ErrUnpaired is the cause of the goodbye a member says on a connection it
// no longer keeps because the cluster outgrew the bound (Config.MaxKept):
// the pair is no longer among those connected.
var ErrUnpaired = errors.New("cluster: the pair is no longer kept connected (the bound)")

// unpair says goodbye on this node's own connection to a member it does
// not keep, if it holds one (made while it kept it), so that the bound
// holds; the member is still a member, and its dials are still admitted.
// c.mu is held.
func (c *Cluster) unpair(id peer.ID) {
	p, ok := c.n.Peers().Get(id)
	if !ok || !p.Dialed() || p.Err() != nil {
		return
	}
	c.unpairPeer(p)
}

func (c *Cluster) unpairPeer(p *peer.Peer) {
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		p.Conn().Leave(ErrUnpaired)
	}()
}

// connected hears of the node's new references: one this node dialed to a
// member it no longer keeps (a dial under way when the keeping stopped) is
// let go at once.
func (c *Cluster) connected(ev peer.Event) {
	if ev.Kind != peer.Connected || !ev.Peer.Dialed() {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return
	}
	if m := c.members[ev.ID]; m != nil && !c.dials(m, c.threshold()) {
		c.unpairPeer(ev.Peer)
	}
}
