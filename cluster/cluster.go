package cluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
	"go.uber.org/zap"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/peer"
)

// ErrClosed is the error of a Cluster's methods after Close or Leave.
var ErrClosed = errors.New("cluster: closed")

// Cluster is a node's membership in a cluster: the gossip (memberlist)
// and the registry kept in step with it. Its methods are safe for
// concurrent use.
type Cluster struct {
	n       *tether.Node
	ml      *memberlist.Memberlist
	gate    *Gate
	self    peer.ID
	maxKept int
	log     *zap.Logger

	mu      sync.Mutex
	members map[peer.ID]*member
	kept    map[peer.ID]*peer.Kept // the members this node dials
	changed chan struct{}          // closed, and replaced, at every change
	closed  bool
	wg      sync.WaitGroup // goodbyes under way, the rejoining loop
	unsub   func()         // from the registry's events
	stop    chan struct{}  // closed by Close: the rejoining loop ends

	gossipSelf string // this node's gossip address
}

// member is one other member, as the gossip tells it.
type member struct {
	id     peer.ID
	addr   string // its tether address
	gossip string // its gossip address
	score  uint64 // the pair's rendezvous hash, see selected
}

// Member is one member of the cluster, as this node knows it.
type Member struct {
	ID     peer.ID
	Addr   string // the tether address it advertises
	Gossip string // its gossip address
	// Kept says this node keeps it connected: it dials it, and redials it
	// after a loss. Both members of a pair keep each other, or neither
	// does (see the package doc, "How many connections").
	Kept bool
}

// Join starts the gossip on cfg.BindAddr, joins the cluster through
// cfg.Seeds (starting a new one if there are none), and keeps n's registry
// in step with the members from then on: it keeps members connected as the
// package doc describes, and lets go of those that leave or are declared
// dead. It fails if no seed answers before ctx ends.
func Join(ctx context.Context, n *tether.Node, cfg Config) (*Cluster, error) {
	mc, err := cfg.memberlistConfig()
	if err != nil {
		return nil, err
	}
	c := &Cluster{
		n:       n,
		gate:    cfg.Gate,
		self:    n.ID(),
		maxKept: cfg.maxKept(),
		log:     n.Logger().Named("cluster"),
		members: make(map[peer.ID]*member),
		kept:    make(map[peer.ID]*peer.Kept),
		changed: make(chan struct{}),
		stop:    make(chan struct{}),
	}
	advertise, err := c.advertise(cfg.Advertise, mc)
	if err != nil {
		return nil, err
	}
	if c.gate != nil && !c.gate.c.CompareAndSwap(nil, c) {
		return nil, fmt.Errorf("%w: the Gate is another cluster's", ErrConfig)
	}
	c.unsub = n.Peers().Subscribe(c.connected)
	mc.Name = string(c.self)
	mc.Delegate = &delegate{meta: encodeMeta(advertise)}
	mc.Events = &events{c}
	mc.LogOutput, mc.Logger = logWriter{c.log.Named("memberlist")}, nil
	ml, err := memberlist.Create(mc)
	if err != nil {
		c.unsub()
		c.detach()
		return nil, fmt.Errorf("cluster: starting the gossip: %w", err)
	}
	c.ml = ml
	c.gossipSelf = c.GossipAddr()
	if len(cfg.Seeds) > 0 {
		joined := make(chan error, 1)
		go func() {
			_, err := ml.Join(cfg.Seeds)
			joined <- err
		}()
		select {
		case err = <-joined:
		case <-ctx.Done():
			err = ctx.Err()
		}
		if err != nil {
			c.Close()
			return nil, fmt.Errorf("cluster: joining through %v: %w", cfg.Seeds, err)
		}
	}
	if len(cfg.Seeds) > 0 {
		c.wg.Add(1)
		go c.rejoin(cfg.Seeds, 10*mc.ProbeInterval)
	}
	c.log.Info("joined the cluster", zap.String("gossip", c.GossipAddr()),
		zap.String("addr", advertise), zap.Int("members", ml.NumMembers()))
	return c, nil
}

// advertise returns the tether address to advertise: cfg's, or the
// node's own with an unspecified host replaced by the gossip's.
func (c *Cluster) advertise(addr string, mc *memberlist.Config) (string, error) {
	if addr == "" {
		addr = c.n.Addr().String()
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("%w: Advertise %q: %v", ErrConfig, addr, err)
	}
	if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
		host = mc.AdvertiseAddr
		if host == "" && mc.BindAddr != "0.0.0.0" && mc.BindAddr != "::" {
			host = mc.BindAddr
		}
		if host == "" {
			ip, err := privateIP()
			if err != nil {
				return "", fmt.Errorf("%w: no address to advertise (set Advertise): %v", ErrConfig, err)
			}
			host = ip
		}
	}
	return net.JoinHostPort(host, port), nil
}

// privateIP is an address of this host that others on its network reach:
// the first non-loopback unicast IPv4 address of an interface that is up.
func privateIP() (string, error) {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return "", err
	}
	for _, a := range addrs {
		if ipn, ok := a.(*net.IPNet); ok && !ipn.IP.IsLoopback() && ipn.IP.To4() != nil {
			return ipn.IP.String(), nil
		}
	}
	return "", errors.New("no IPv4 address but loopback")
}

// GossipAddr is the address this node gossips on: other nodes' Seeds.
func (c *Cluster) GossipAddr() string {
	ln := c.ml.LocalNode()
	return net.JoinHostPort(ln.Addr.String(), strconv.Itoa(int(ln.Port)))
}

// Members returns the other members, alive or suspect, sorted by ID.
func (c *Cluster) Members() []Member {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]Member, 0, len(c.members))
	for _, m := range c.members {
		_, kept := c.kept[m.id]
		out = append(out, Member{ID: m.id, Addr: m.addr, Gossip: m.gossip, Kept: kept})
	}
	slices.SortFunc(out, func(a, b Member) int {
		switch {
		case a.ID < b.ID:
			return -1
		case a.ID > b.ID:
			return 1
		}
		return 0
	})
	return out
}

// Leave tells the cluster that this node leaves (the others let it go at
// once, rather than after declaring it dead), says goodbye on its
// connections to members, and closes c. The node itself stays up.
func (c *Cluster) Leave(ctx context.Context) error {
	timeout := 5 * time.Second
	if dl, ok := ctx.Deadline(); ok {
		timeout = time.Until(dl)
	}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return ErrClosed
	}
	c.mu.Unlock()
	err := c.ml.Leave(timeout)
	ids := c.memberIDs()
	c.Close()
	for _, id := range ids {
		if p, ok := c.n.Peers().Get(id); ok {
			p.Conn().Leave(ErrLeft)
		}
	}
	return err
}

// ErrLeft is the cause of the goodbye Leave says to members.
var ErrLeft = errors.New("cluster: this node left the cluster")

// Close stops the gossip without a word (the others will declare this
// node dead) and stops keeping members connected; live connections stay
// until the node or the peer ends them. The Gate admits no one after it.
func (c *Cluster) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	kept := c.kept
	c.kept = map[peer.ID]*peer.Kept{}
	c.mu.Unlock()
	close(c.stop)
	c.unsub()
	c.detach()
	for _, k := range kept {
		k.Stop()
	}
	err := c.ml.Shutdown()
	c.wg.Wait()
	c.mu.Lock()
	c.members = map[peer.ID]*member{}
	c.notify()
	c.mu.Unlock()
	return err
}

// detach closes the Gate.
func (c *Cluster) detach() {
	if c.gate != nil {
		c.gate.c.CompareAndSwap(c, nil)
	}
}

func (c *Cluster) memberIDs() []peer.ID {
	c.mu.Lock()
	defer c.mu.Unlock()
	ids := make([]peer.ID, 0, len(c.members))
	for id := range c.members {
		ids = append(ids, id)
	}
	return ids
}

// isMember reports whether id is a member, and returns a channel closed at
// the next change.
func (c *Cluster) isMember(id peer.ID) (bool, <-chan struct{}) {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, ok := c.members[id]
	return ok, c.changed
}

// notify tells waiters of a change. c.mu is held.
func (c *Cluster) notify() {
	close(c.changed)
	c.changed = make(chan struct{})
}

// String names the cluster by the node's ID and gossip address.
func (c *Cluster) String() string {
	return fmt.Sprintf("cluster.Cluster(%s at %s)", c.self, c.GossipAddr())
}

// rejoin joins through the seeds again, every period, while any of them is
// not a member as this node sees it. The gossip heals no partition by
// itself: each side declares the other dead and stops probing it. A
// member cut off and back (its host silenced, a rack cut) would stay apart
// without this, and so would the two sides of a split.
func (c *Cluster) rejoin(seeds []string, period time.Duration) {
	defer c.wg.Done()
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		select {
		case <-c.stop:
			return
		case <-t.C:
		}
		if missing := c.missingSeeds(seeds); len(missing) > 0 {
			if n, err := c.ml.Join(missing); n > 0 {
				c.log.Debug("rejoined through seeds", zap.Strings("seeds", missing), zap.Int("reached", n), zap.Error(err))
			}
		}
	}
}

// missingSeeds returns the seeds that are no member's gossip address.
func (c *Cluster) missingSeeds(seeds []string) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	known := make(map[string]bool, len(c.members))
	for _, m := range c.members {
		known[m.gossip] = true
	}
	var out []string
	for _, s := range seeds {
		if !known[s] && s != c.gossipSelf {
			out = append(out, s)
		}
	}
	return out
}
