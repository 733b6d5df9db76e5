package partition

import (
	"sync"
	"time"
)

// pair is one connection: two ends and the two pipes between them, under
// one mutex. Lock order: Network.mu before pair.mu.
type pair struct {
	net   *Network
	mu    sync.Mutex
	wake  chan struct{} // closed on every change; nil when nobody waits
	ends  [2]*conn      // ends[0] dialed, ends[1] accepted
	pipes [2]*pipe      // pipes[i] carries what ends[i] writes
	done  bool          // both ends closed
}

func newPair(n *Network, dialer, server Addr, fwd, back linkState) *pair {
	pr := &pair{net: n}
	pr.ends[0] = &conn{pr: pr, side: 0, local: dialer, remote: server}
	pr.ends[1] = &conn{pr: pr, side: 1, local: server, remote: dialer}
	pr.pipes[0] = &pipe{pr: pr, link: link{dialer.Host, server.Host}, cut: fwd.cut, delay: fwd.delay}
	pr.pipes[1] = &pipe{pr: pr, link: link{server.Host, dialer.Host}, cut: back.cut, delay: back.delay}
	return pr
}

// reverse returns the pipe running the other way from p.
func (pr *pair) reverse(p *pipe) *pipe {
	if pr.pipes[0] == p {
		return pr.pipes[1]
	}
	return pr.pipes[0]
}

// linkChanged applies a link's new state to the pipes that use it.
func (pr *pair) linkChanged(k link, s linkState, now time.Time) {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	if pr.done {
		return
	}
	for _, p := range pr.pipes {
		if p.link == k {
			p.setLink(s, now)
		}
	}
	pr.broadcast()
}

// wait releases pr.mu until the next broadcast.
func (pr *pair) wait() {
	if pr.wake == nil {
		pr.wake = make(chan struct{})
	}
	ch := pr.wake
	pr.mu.Unlock()
	<-ch
	pr.mu.Lock()
}

// broadcast wakes every waiter so it re-checks its condition.
func (pr *pair) broadcast() {
	if pr.wake != nil {
		close(pr.wake)
		pr.wake = nil
	}
}
