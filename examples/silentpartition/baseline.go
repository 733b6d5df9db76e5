package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/yamux"
)

// baseline is the same scenario over plain hashicorp/yamux, with none of
// tether: a yamux client session to a yamux server on a port silenced at
// the same instant as the tether node, with the same number of calls held
// outstanding as yamux streams (a request written, the answer never
// coming). yamux notices only through its keepalive: a ping every
// KeepAliveInterval (30 s by default, from the session's start), and the
// session closed when no answer comes within ConnectionWriteTimeout (10 s).
type baseline struct {
	cfg     *yamux.Config
	calls   int // held
	ln      net.Listener
	sil     silencer
	cli     *yamux.Session
	clog    *lineLog // the client session's own log lines
	held    atomic.Int64
	wg      sync.WaitGroup
	srvMu   sync.Mutex
	srv     *yamux.Session
	stop    chan struct{}
	noticed chan struct{} // closed when the client session closed itself

	inflight   atomic.Int64
	mu         sync.Mutex
	ends       []holdEnd
	noticedAt  time.Time
	silencedAt time.Time
	closingAt  time.Time // when the run closed the sessions itself
	startedAt  time.Time // the client session
}

// startBaseline starts a plain yamux server and client and holds n calls
// outstanding.
func startBaseline(cfg Config, n int) (b *baseline, err error) {
	mk := cfg.baselineYamux
	if mk == nil {
		mk = yamux.DefaultConfig
	}
	b = &baseline{cfg: mk(), calls: n, clog: &lineLog{}, stop: make(chan struct{}), noticed: make(chan struct{})}
	defer func() {
		if err != nil {
			b.close()
		}
	}()
	if b.ln, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
		return b, err
	}
	if b.sil, err = newSilencer(cfg.Mode, b.ln.Addr().String()); err != nil {
		return b, err
	}
	scfg := *b.cfg
	scfg.LogOutput = io.Discard
	b.wg.Add(1)
	go b.serve(&scfg)

	ccfg := *b.cfg
	ccfg.LogOutput = b.clog
	conn, err := net.DialTimeout("tcp", b.sil.dialAddr(), 5*time.Second)
	if err != nil {
		return b, err
	}
	if b.cli, err = yamux.Client(conn, &ccfg); err != nil {
		conn.Close()
		return b, err
	}
	b.startedAt = time.Now() // its keepalive timer starts now
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		select {
		case <-b.cli.CloseChan():
			b.mu.Lock()
			b.noticedAt = time.Now()
			b.mu.Unlock()
			close(b.noticed)
		case <-b.stop:
		}
	}()
	for range n {
		st, err := b.cli.OpenStream()
		if err != nil {
			return b, fmt.Errorf("plain yamux: %w", err)
		}
		if _, err := st.Write([]byte("hold")); err != nil {
			st.Close()
			return b, fmt.Errorf("plain yamux: %w", err)
		}
		b.inflight.Add(1)
		b.wg.Add(1)
		go func() {
			defer b.wg.Done()
			defer st.Close()
			var buf [64]byte
			_, err := st.Read(buf[:]) // the answer never comes
			at := time.Now()
			b.inflight.Add(-1)
			b.mu.Lock()
			b.ends = append(b.ends, holdEnd{at, err})
			b.mu.Unlock()
		}()
	}
	deadline := time.Now().Add(5 * time.Second)
	for b.held.Load() < int64(n) {
		if time.Now().After(deadline) {
			return b, fmt.Errorf("plain yamux: %d of %d calls reached the server", b.held.Load(), n)
		}
		time.Sleep(time.Millisecond)
	}
	return b, nil
}

// serve accepts the one client's session and holds each stream's call.
func (b *baseline) serve(cfg *yamux.Config) {
	defer b.wg.Done()
	conn, err := b.ln.Accept()
	if err != nil {
		return
	}
	srv, err := yamux.Server(conn, cfg)
	if err != nil {
		conn.Close()
		return
	}
	b.srvMu.Lock()
	b.srv = srv
	b.srvMu.Unlock()
	select {
	case <-b.stop: // close ran before srv was set: it did not close it
		srv.Close()
	default:
	}
	for {
		st, err := srv.AcceptStream()
		if err != nil {
			return
		}
		b.wg.Add(1)
		go func() {
			defer b.wg.Done()
			defer st.Close()
			var req [4]byte
			if _, err := io.ReadFull(st, req[:]); err != nil {
				return
			}
			b.held.Add(1)
			io.Copy(io.Discard, st) // hold: until the stream or session closes
		}()
	}
}

func (b *baseline) hasNoticed() bool {
	select {
	case <-b.noticed:
		return true
	default:
		return false
	}
}

// silence silences the plain yamux server's port; detection is timed
// from at.
func (b *baseline) silence(at time.Time) error {
	b.mu.Lock()
	b.silencedAt = at
	b.mu.Unlock()
	return b.sil.silence()
}

// result says when yamux noticed, how the held calls ended, and when the
// run closed the sessions itself (zero if not yet).
func (b *baseline) result() (noticed time.Duration, ok bool, cause string, ends []holdEnd, closing time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.noticedAt.IsZero() && !b.silencedAt.IsZero() {
		noticed, ok = b.noticedAt.Sub(b.silencedAt), true
	}
	cause = b.clog.first()
	closing = b.closingAt
	if closing.IsZero() {
		closing = time.Now()
	}
	return noticed, ok, cause, append([]holdEnd(nil), b.ends...), closing
}

// close heals and closes everything and waits for the goroutines.
func (b *baseline) close() {
	select {
	case <-b.stop:
		return
	default:
		close(b.stop)
	}
	b.mu.Lock()
	b.closingAt = time.Now()
	b.mu.Unlock()
	if b.sil != nil {
		b.sil.heal()
	}
	if b.cli != nil {
		b.cli.Close()
	}
	if b.ln != nil {
		b.ln.Close()
	}
	b.srvMu.Lock()
	srv := b.srv
	b.srvMu.Unlock()
	if srv != nil {
		srv.Close()
	}
	if b.sil != nil {
		b.sil.close()
	}
	b.wg.Wait()
}

// lineLog keeps the lines yamux logs (its "[ERR] yamux: keepalive failed"
// is the only account of why a session closed).
type lineLog struct {
	mu    sync.Mutex
	buf   bytes.Buffer
	lines []string
}

func (l *lineLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf.Write(p)
	for {
		line, err := l.buf.ReadString('\n')
		if err != nil {
			l.buf.WriteString(line) // incomplete: keep it for later
			return len(p), nil
		}
		if len(l.lines) < 16 {
			l.lines = append(l.lines, strings.TrimSpace(line))
		}
	}
}

func (l *lineLog) first() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, s := range l.lines {
		// yamux's log lines start with a date and time: keep the message.
		if i := strings.Index(s, "[ERR]"); i >= 0 {
			return s[i:]
		}
	}
	if len(l.lines) > 0 {
		return l.lines[0]
	}
	return ""
}

// isEOF reports a yamux stream read ended by its session closing: yamux
// gives io.EOF, the same as a clean close by the peer.
func isEOF(err error) bool { return errors.Is(err, io.EOF) }
