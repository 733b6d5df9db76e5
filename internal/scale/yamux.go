package scale

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/yamux"
)

// Yamux is plain hashicorp/yamux as a System: the server accepts TCP
// connections and makes each a yamux server session with
// yamux.DefaultConfig (keepalive every 30 s, 10 s write timeout); the
// peers are yamux client sessions, idle after one ping. Nothing accepts
// streams: an idle session is its three goroutines (receive, send,
// keepalive). A lost session is noticed when its keepalive fails; yamux
// logs each such failure, and those lines are counted.
func Yamux() System { return yamuxSystem{} }

type yamuxSystem struct{}

func (yamuxSystem) Name() string { return "yamux" }

func (yamuxSystem) Serve() (Server, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s := &yamuxServer{ln: ln, sessions: map[int]*yamux.Session{}, done: make(chan struct{})}
	go s.accept()
	return s, nil
}

func (yamuxSystem) Dial(ctx context.Context, addr string) (io.Closer, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	cfg := yamux.DefaultConfig()
	cfg.LogOutput = io.Discard
	sess, err := yamux.Client(nc, cfg)
	if err != nil {
		nc.Close()
		return nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		nc.SetDeadline(dl)
	}
	if _, err := sess.Ping(); err != nil {
		sess.Close()
		return nil, err
	}
	nc.SetDeadline(time.Time{})
	return sess, nil
}

type yamuxServer struct {
	ln   net.Listener
	done chan struct{} // closed when accept has returned
	logs lineCounter

	mu       sync.Mutex
	sessions map[int]*yamux.Session
}

func (s *yamuxServer) accept() {
	defer close(s.done)
	for {
		nc, err := s.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			time.Sleep(10 * time.Millisecond) // e.g. out of file descriptors
			continue
		}
		cfg := yamux.DefaultConfig()
		cfg.LogOutput = &s.logs
		sess, err := yamux.Server(nc, cfg)
		if err != nil {
			nc.Close()
			continue
		}
		s.mu.Lock()
		s.sessions[addrPort(nc.RemoteAddr().String())] = sess
		s.mu.Unlock()
	}
}

func (s *yamuxServer) Addr() string { return s.ln.Addr().String() }

func (s *yamuxServer) Peers() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, sess := range s.sessions {
		if !sess.IsClosed() {
			n++
		}
	}
	return n
}

func (s *yamuxServer) Ports() []int {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]int, 0, len(s.sessions))
	for port, sess := range s.sessions {
		if !sess.IsClosed() {
			out = append(out, port)
		}
	}
	return out
}

func (s *yamuxServer) Lost(port int) (time.Time, bool) {
	s.mu.Lock()
	sess := s.sessions[port]
	s.mu.Unlock()
	if sess == nil || !sess.IsClosed() {
		return time.Time{}, false
	}
	return time.Now(), true // yamux does not say when; Run polls often
}

func (s *yamuxServer) WarnLines() int { return s.logs.lines() }
func (s *yamuxServer) Incidents() int { return 0 }

func (s *yamuxServer) Close() error {
	err := s.ln.Close()
	<-s.done
	s.mu.Lock()
	sessions := s.sessions
	s.sessions = map[int]*yamux.Session{}
	s.mu.Unlock()
	closeAll(sessions)
	return err
}

// closeAll closes sessions, 256 at a time.
func closeAll[K comparable, C io.Closer](cs map[K]C) {
	var wg sync.WaitGroup
	sem := make(chan struct{}, 256)
	for _, c := range cs {
		sem <- struct{}{}
		wg.Go(func() { defer func() { <-sem }(); c.Close() })
	}
	wg.Wait()
}

// lineCounter is an io.Writer that counts the lines written to it (yamux
// logs only errors and warnings).
type lineCounter struct{ n atomic.Int64 }

func (l *lineCounter) Write(b []byte) (int, error) {
	l.n.Add(int64(bytes.Count(b, []byte{'\n'})))
	return len(b), nil
}

func (l *lineCounter) lines() int { return int(l.n.Load()) }
