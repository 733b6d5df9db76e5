package server

import (
	"errors"
	"net"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/tetherrpc/tether/peer"
	"github.com/tetherrpc/tether/rpc"
)

// penaltyBox keeps hosts whose connections were cut for protocol
// violations from connecting again for a while: base after the first
// strike, doubling with each further strike up to max, forgotten after a
// quiet forgetAfter. Without it a flooder that is cut off for going past a
// limit connects again at once, and every handshake, session and eviction
// it makes costs the node's other peers CPU; with it a persistent offender
// costs one accept and close per attempt. It bounds its own memory to
// maxPenalized hosts. The key is the host (IP), since without TLS an ID
// costs nothing to change; hosts behind one NAT share a penalty, which only
// delays their new connections, never their established ones.
type penaltyBox struct {
	base, max time.Duration

	mu    sync.Mutex
	hosts map[string]*penalty
}

type penalty struct {
	strikes int
	until   time.Time // refused until then
	last    time.Time // of the last strike
}

const (
	maxPenalized = 4096
	forgetAfter  = 10 * time.Minute
)

func newPenaltyBox(base, limit time.Duration) *penaltyBox {
	if base <= 0 {
		return nil
	}
	return &penaltyBox{base: base, max: max(base, limit), hosts: map[string]*penalty{}}
}

// refused reports whether a connection from addr is to be closed unheard.
func (b *penaltyBox) refused(addr net.Addr, now time.Time) bool {
	if b == nil {
		return false
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	p := b.hosts[hostOf(addr)]
	return p != nil && now.Before(p.until)
}

// strike penalizes addr's host, and returns for how long and the how
// manyth strike it is.
func (b *penaltyBox) strike(addr net.Addr, now time.Time) (time.Duration, int) {
	if b == nil {
		return 0, 0
	}
	host := hostOf(addr)
	if host == "" {
		return 0, 0
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	p := b.hosts[host]
	if p == nil || now.Sub(p.last) > forgetAfter {
		if len(b.hosts) >= maxPenalized {
			b.sweep(now)
		}
		p = &penalty{}
		b.hosts[host] = p
	}
	p.strikes++
	d := b.base << min(p.strikes-1, 30)
	if d > b.max || d <= 0 {
		d = b.max
	}
	p.last, p.until = now, now.Add(d)
	return d, p.strikes
}

// sweep forgets the hosts whose penalty is over; if none is, any one (Go
// picks at random), so that the map stays bounded under any attack.
func (b *penaltyBox) sweep(now time.Time) {
	for h, p := range b.hosts {
		if now.After(p.until) {
			delete(b.hosts, h)
		}
	}
	for h := range b.hosts {
		if len(b.hosts) < maxPenalized {
			break
		}
		delete(b.hosts, h)
	}
}

// hostOf is the host a penalty applies to: the IP address over TCP, the
// host of a "host:port" address on other networks, else the whole
// address; "" (an unnamed Unix socket's peer, say) for an address that
// tells no host, which is never penalized: that would shut out every
// local client for one's fault.
func hostOf(addr net.Addr) string {
	if addr == nil {
		return ""
	}
	if a, ok := addr.(*net.TCPAddr); ok {
		return a.IP.String()
	}
	s := addr.String()
	if h, _, err := net.SplitHostPort(s); err == nil {
		return h
	}
	if s == "@" { // Linux's name for an unnamed Unix socket
		return ""
	}
	return s
}

// Penalize strikes the host of a peer evicted for a protocol violation;
// it ignores every other event. Subscribe it to the registry.
func (s *Server) Penalize(ev peer.Event) {
	if s.penalties == nil || ev.Kind != peer.Disconnected || !errors.Is(ev.Cause, rpc.ErrProtocolViolation) || ev.Peer == nil {
		return
	}
	addr := ev.Peer.Conn().RemoteAddr()
	d, strikes := s.penalties.strike(addr, time.Now())
	if d > 0 {
		s.log.Info("host refused for a while: its connection broke the protocol",
			zap.String("host", hostOf(addr)), zap.Int("strikes", strikes), zap.Duration("for", d))
	}
}
