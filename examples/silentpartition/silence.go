package main

import (
	"fmt"
	"net"
	"strconv"
	"sync"

	"github.com/tetherrpc/tether/partition"
)

// silencer silences one listening address and heals it.
type silencer interface {
	// dialAddr is the address clients dial to reach the target.
	dialAddr() string
	silence() error
	heal() error
	// how says, for the output, what silence does.
	how() string
	close()
}

func newSilencer(mode Mode, target string) (silencer, error) {
	switch mode {
	case ModeKernel:
		_, p, err := net.SplitHostPort(target)
		if err != nil {
			return nil, err
		}
		port, err := strconv.Atoi(p)
		if err != nil {
			return nil, err
		}
		if err := partition.CheckNamespace(); err != nil {
			return nil, fmt.Errorf("kernel mode needs a private network namespace (partition.Reexec or Isolated): %w", err)
		}
		// A trial rule, before anyone connects: the first iptables run in
		// a namespace loads its tables, which would otherwise delay the
		// partition itself.
		heal, err := partition.DropPort(port)
		if err != nil {
			return nil, err
		}
		if err := heal(); err != nil {
			return nil, err
		}
		return &dropSilencer{target: target, port: port}, nil
	case ModeProxy:
		p, err := partition.NewProxy(target)
		if err != nil {
			return nil, err
		}
		return &proxySilencer{p: p}, nil
	}
	return nil, fmt.Errorf("unknown mode %q", mode)
}

// dropSilencer drops every packet to and from a port (iptables, in a
// private network namespace): a true silent partition.
type dropSilencer struct {
	target string
	port   int

	mu     sync.Mutex
	healFn func() error
}

func (d *dropSilencer) dialAddr() string { return d.target }

func (d *dropSilencer) how() string {
	return fmt.Sprintf("iptables DROP of port %d in a private network namespace", d.port)
}

func (d *dropSilencer) silence() error {
	h, err := partition.DropPort(d.port)
	if err != nil {
		return err
	}
	d.mu.Lock()
	d.healFn = h
	d.mu.Unlock()
	return nil
}

func (d *dropSilencer) heal() error {
	d.mu.Lock()
	h := d.healFn
	d.healFn = nil
	d.mu.Unlock()
	if h == nil {
		return nil
	}
	return h()
}

func (d *dropSilencer) close() { d.heal() }

// proxySilencer stands a user-space TCP proxy in front of the target and
// stops it forwarding. Not a silent partition: the proxy's kernel still
// acknowledges every segment, so the target looks hung.
type proxySilencer struct{ p *partition.Proxy }

func (s *proxySilencer) dialAddr() string { return s.p.Addr() }
func (s *proxySilencer) how() string {
	return "a user-space TCP proxy that stops forwarding (partition.Proxy.Blackhole)"
}
func (s *proxySilencer) silence() error { s.p.Blackhole(); return nil }
func (s *proxySilencer) heal() error    { s.p.Heal(); return nil }
func (s *proxySilencer) close()         { s.p.Close() }
