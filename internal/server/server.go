package server

import (
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/tetherrpc/tether/internal/tetheropts"
	"github.com/tetherrpc/tether/peer"
	"github.com/tetherrpc/tether/rpc"
)

// Config is what a Server needs.
type Config struct {
	// RPC is the node's connection configuration, defaults resolved; each
	// connection handshakes with a copy. It should make connections paused
	// (tetheropts.SetPaused): the registry resumes each once registered.
	RPC *rpc.Config
	// Registry takes every connection whose handshake succeeds.
	Registry *peer.Registry
	// Logger receives a line per refused handshake and per penalty (Info:
	// strangers must not be able to trigger incidents).
	Logger *zap.Logger
	// PenaltyBase and PenaltyMax bound the penalty box (see
	// tether.WithViolationPenalty); PenaltyBase 0 turns it off.
	PenaltyBase, PenaltyMax time.Duration
}

// Server accepts, handshakes and registers a node's incoming peers.
type Server struct {
	cfg       Config
	log       *zap.Logger
	ctx       context.Context // ends handshakes in progress at Close
	cancel    context.CancelFunc
	penalties *penaltyBox // nil when off
	refused   atomic.Uint64
	slots     slots

	mu     sync.Mutex
	lns    []net.Listener // served, to close at Close
	closed bool
	wg     sync.WaitGroup // Serve loops and connections handshaking
}

// New returns a Server serving nothing yet.
func New(cfg Config) *Server {
	s := &Server{cfg: cfg, log: cfg.Logger, penalties: newPenaltyBox(cfg.PenaltyBase, cfg.PenaltyMax)}
	if s.log == nil {
		s.log = zap.NewNop()
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.slots.init(cfg.RPC.HandshakeTimeout)
	return s
}

// Serve accepts connections on ln until the server closes, and returns
// nil then; it returns early with the listener's error if ln is closed
// by someone else. Other accept errors (out of file descriptors, say) are
// logged and retried. Close closes ln. Serve may be called on several
// listeners at once.
func (s *Server) Serve(ln net.Listener) error {
	if !s.track(ln) {
		ln.Close()
		return nil
	}
	defer s.wg.Done()
	return s.acceptLoop(ln)
}

// Go is Serve in a goroutine of the server's own: ln is served once Go
// returns, until Close.
func (s *Server) Go(ln net.Listener) {
	if !s.track(ln) {
		ln.Close()
		return
	}
	go func() {
		defer s.wg.Done()
		s.acceptLoop(ln)
	}()
}

// track counts ln in: the server closes it, and waits for its loop.
func (s *Server) track(ln net.Listener) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.lns = append(s.lns, ln)
	s.wg.Add(1)
	return true
}

// Addr is the address of the first listener served, or nil.
func (s *Server) Addr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.lns) == 0 {
		return nil
	}
	return s.lns[0].Addr()
}

// Penalized is how many connections the penalty box closed unheard.
func (s *Server) Penalized() uint64 { return s.refused.Load() }

// Close closes the listeners, ends the handshakes in progress, and waits
// for the server's goroutines. Connections already registered are the
// registry's.
func (s *Server) Close() {
	s.mu.Lock()
	s.closed = true
	lns := s.lns
	s.mu.Unlock()
	s.cancel()
	for _, ln := range lns {
		ln.Close()
	}
	s.wg.Wait()
}

func (s *Server) acceptLoop(ln net.Listener) error {
	for {
		nc, err := ln.Accept()
		if err != nil {
			if s.ctx.Err() != nil {
				return nil // closed by Close
			}
			if errors.Is(err, net.ErrClosed) {
				return err
			}
			s.log.Warn("accept failed", zap.Error(err))
			select {
			case <-time.After(10 * time.Millisecond): // e.g. out of file descriptors
			case <-s.ctx.Done():
				return nil
			}
			continue
		}
		if s.penalties.refused(nc.RemoteAddr(), time.Now()) {
			nc.Close()
			s.refused.Add(1)
			continue
		}
		h, victim := s.slots.admit(s.ctx, nc)
		if victim != nil {
			s.log.Info("handshake slots full: the oldest, stalled handshake cut off", zap.Stringer("addr", victim.RemoteAddr()))
			victim.Close()
		}
		if h == nil {
			nc.Close()
			return nil // closing
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.serveConn(nc, h)
		}()
	}
}

// serveConn handshakes with a peer that dialed in, frees its handshake
// slot, and registers it.
func (s *Server) serveConn(nc net.Conn, h *pending) {
	cfg := *s.cfg.RPC
	c, err := rpc.Server(s.ctx, nc, &cfg)
	if !s.slots.done(h, err == nil) {
		if c != nil {
			c.Abort(errHandshakeCut) // its transport is closed already
		}
		return
	}
	if err != nil {
		// Not yet a peer: a port scan, a stranger, an old version. Info, so
		// that strangers cannot trigger incidents.
		s.log.Info("handshake refused", zap.Stringer("addr", nc.RemoteAddr()), zap.Error(err))
		return
	}
	tetheropts.AddIncoming(s.cfg.Registry, c, nc.RemoteAddr().String()) // on error c is closed
}

// errHandshakeCut ends a connection whose handshake finished just as it
// was cut off for taking too long.
var errHandshakeCut = errors.New("handshake cut off: the node's handshake slots were full")
