package main

import (
	"fmt"
	"io"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/tetherrpc/tether/liveness"
)

// Mode says how the node is silenced.
type Mode string

const (
	// ModeKernel drops the node's packets with iptables (partition.DropPort)
	// in a private network namespace: a true silent partition. run must
	// already be in such a namespace (partition.Reexec or Isolated).
	ModeKernel Mode = "kernel"
	// ModeProxy puts a user-space TCP proxy in front of the node and
	// blackholes it (partition.Proxy). Its kernel still acknowledges, so the
	// node looks hung, not partitioned.
	ModeProxy Mode = "proxy"
)

// Config is one scenario. The zero value is not valid; start from
// DefaultConfig.
type Config struct {
	Peers       int           // storage nodes
	K           int           // answers each read needs
	Heartbeat   time.Duration // tether.WithHeartbeat
	Outstanding int           // calls held on the node that is silenced
	Readers     int           // concurrent k-of-n readers
	Duration    time.Duration // run time (stretched in proxy mode: see schedule)
	Seed        uint64        // storage delays, read order, which node is silenced
	Mode        Mode
	ProxyReason string // why ModeProxy, when it was not asked for
	Baseline    bool   // plain yamux side by side

	// Progress receives the opening lines and the live progress line; nil
	// means none. Live rewrites the line in place (a terminal); otherwise
	// one line a second.
	Progress io.Writer
	Live     bool

	// baselineYamux makes the plain yamux sessions' Config; nil means
	// yamux.DefaultConfig (keepalive 30 s, write timeout 10 s). Tests
	// shorten it.
	baselineYamux func() *yamux.Config
	// baselineCalls is how many calls plain yamux holds; 0 means
	// Outstanding. Tests hold fewer: when a yamux v0.1.2 session closes,
	// each stream blocked in Read spins until Close reaches it, which
	// takes seconds under the race detector.
	baselineCalls int
}

// DefaultConfig is the scenario of a run without flags.
func DefaultConfig() Config {
	return Config{
		Peers:       5,
		K:           3,
		Heartbeat:   250 * time.Millisecond,
		Outstanding: 100,
		Readers:     4,
		Duration:    10 * time.Second,
		Seed:        1,
		Mode:        ModeKernel,
	}
}

func (c Config) validate() error {
	switch {
	case c.Peers < 1 || c.Peers > 64:
		return fmt.Errorf("-peers %d: want 1 to 64", c.Peers)
	case c.K < 1 || c.K > c.Peers:
		return fmt.Errorf("-k %d: want 1 to -peers (%d)", c.K, c.Peers)
	case c.Outstanding < 0 || c.Outstanding > 100_000:
		return fmt.Errorf("-outstanding %d: want 0 to 100000", c.Outstanding)
	case c.Readers < 1 || c.Readers > 256:
		return fmt.Errorf("-readers %d: want 1 to 256", c.Readers)
	case c.Duration < 2*time.Second:
		return fmt.Errorf("-duration %v: want at least 2s", c.Duration)
	case c.Mode != ModeKernel && c.Mode != ModeProxy:
		return fmt.Errorf("mode %q: want %q or %q", c.Mode, ModeKernel, ModeProxy)
	}
	return c.liveness().Validate()
}

// liveness is the failure-detection bounds every node of the grid runs
// with: LAN, the default, scaled to the heartbeat (as tether.WithHeartbeat
// does).
func (c Config) liveness() liveness.Config {
	return liveness.LAN().WithInterval(c.Heartbeat)
}

// schedule is when each step of a run happens, from the instant the grid
// is up.
type schedule struct {
	holdAt      time.Duration // the outstanding calls start
	partitionAt time.Duration // the node is silenced
	healAt      time.Duration // and healed
	endAt       time.Duration // reads stop
	detectBound time.Duration // eviction later than this after the partition is a violation
	stretched   time.Duration // how much later than Duration the run ends, to wait for the bound
}

// schedule places the partition 30% into the run and the heal 2/3 into it,
// though never before the detection bound has passed: in proxy mode the
// node looks hung and is evicted only after HangAfter (5 s), so the heal,
// and the end, come later.
func (c Config) schedule() schedule {
	lc := c.liveness()
	s := schedule{
		partitionAt: c.Duration * 3 / 10,
		healAt:      c.Duration * 2 / 3,
		endAt:       c.Duration,
	}
	s.holdAt = s.partitionAt / 2
	switch c.Mode {
	case ModeKernel:
		// Measured: 0.3 to 0.5 s at the default 250 ms heartbeat; the
		// library's goal is 1 s. Slower heartbeats scale it.
		s.detectBound = max(1500*time.Millisecond, 6*c.Heartbeat)
	case ModeProxy:
		// A hung peer is evicted once it has sent nothing for HangAfter;
		// checks run every RetryInterval, and the last bytes came just
		// before the blackhole.
		s.detectBound = lc.HangAfter + max(time.Second, 4*c.Heartbeat)
	}
	if least := s.partitionAt + s.detectBound + 500*time.Millisecond; s.healAt < least {
		s.stretched = least - s.healAt
		s.healAt = least
		s.endAt += s.stretched
	}
	return s
}

// reconnectGrace is how long past the end a run waits for the silenced node
// to come back, if it has not yet: a reconnection attempt begun during the
// partition waits out its dial timeout (5 s, or HangAfter) before the next.
func (c Config) reconnectGrace() time.Duration {
	return max(5*time.Second, c.liveness().HangAfter) + time.Second
}
