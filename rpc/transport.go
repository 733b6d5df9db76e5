package rpc

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/hashicorp/yamux"
	"go.uber.org/zap"
)

// Client starts a connection as the dialing side over conn: TLS if
// configured, the handshake, then yamux. It returns once the connection can
// carry calls, or fails within the handshake timeout (or ctx), closing conn.
func Client(ctx context.Context, conn net.Conn, cfg *Config) (*Conn, error) {
	return start(ctx, conn, cfg, false)
}

// Server starts a connection as the accepting side over conn. A peer that
// says nothing, speaks another protocol or version, or fails TLS is cut off
// within the handshake timeout with an error saying why.
func Server(ctx context.Context, conn net.Conn, cfg *Config) (*Conn, error) {
	return start(ctx, conn, cfg, true)
}

func start(ctx context.Context, conn net.Conn, cfg *Config, server bool) (*Conn, error) {
	r, err := cfg.resolved()
	if err != nil {
		conn.Close()
		return nil, err
	}
	hctx, cancel := context.WithTimeout(ctx, r.HandshakeTimeout)
	defer cancel()
	c, err := handshake(hctx, conn, r, server)
	if err != nil {
		conn.Close()
		if cerr := ctx.Err(); cerr != nil {
			return nil, fmt.Errorf("%w with %s: %w", ErrHandshake, conn.RemoteAddr(), cerr)
		}
		if isTimeout(err) { // the only deadline on conn is the handshake's
			return nil, fmt.Errorf("%w with %s: no handshake within %v", ErrHandshake, conn.RemoteAddr(), r.HandshakeTimeout)
		}
		return nil, fmt.Errorf("%w with %s: %w", ErrHandshake, conn.RemoteAddr(), err)
	}
	return c, nil
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func handshake(ctx context.Context, conn net.Conn, cfg *Config, server bool) (*Conn, error) {
	dl, _ := ctx.Deadline()
	conn.SetDeadline(dl)
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	transport := conn
	var certID string
	var cert *x509.Certificate
	if cfg.TLS != nil {
		var tc *tls.Conn
		if server {
			tc = tls.Server(conn, sideTLS(cfg.TLS, true))
		} else {
			tc = tls.Client(conn, sideTLS(cfg.TLS, false))
		}
		if err := tc.HandshakeContext(ctx); err != nil {
			return nil, tlsFailure(conn, err, server)
		}
		cert = tc.ConnectionState().PeerCertificates[0]
		certID = IDFromCertificate(cert)
		transport = tc
	}

	mine := &hello{
		version:    ProtocolVersion,
		maxMessage: uint32(cfg.MaxMessageSize),
		maxCalls:   uint32(cfg.MaxConcurrentCalls),
		id:         cfg.ID,
	}
	refuse := func(reason string) { transport.Write(refusal(reason)) }
	var theirs *hello
	var err error
	var rtt int64 // the hello exchange's round trip: the first sample for windows
	if server {
		theirs, err = readHello(transport)
		if err != nil {
			if errors.Is(err, ErrIncompatible) || errors.Is(err, ErrProtocolViolation) {
				refuse(err.Error())
			}
			return nil, err
		}
		if theirs.status == statusRefuse {
			return nil, violation("a dialer sent a refusal")
		}
		if err := checkID(theirs.id, cfg.ID, certID, cfg.ExpectID); err != nil {
			refuse(err.Error())
			return nil, err
		}
		if err := admit(cfg, theirs.id, cert); err != nil {
			refuse(notAdmitted)
			return nil, err
		}
		sent := nanotime()
		if _, err := transport.Write(mine.marshal()); err != nil {
			return nil, err
		}
		if transport, err = dialerAnswer(transport); err != nil {
			return nil, err
		}
		rtt = nanotime() - sent
	} else {
		sent := nanotime()
		if _, err := transport.Write(mine.marshal()); err != nil {
			return nil, err
		}
		theirs, err = readHello(transport)
		rtt = nanotime() - sent
		if err != nil {
			if errors.Is(err, ErrIncompatible) || errors.Is(err, ErrProtocolViolation) {
				refuse(err.Error())
			}
			return nil, err
		}
		if theirs.status == statusRefuse {
			return nil, refused("the peer", theirs.id)
		}
		if err := checkID(theirs.id, cfg.ID, certID, cfg.ExpectID); err != nil {
			refuse(err.Error()) // so that the acceptor knows who refused, and why
			return nil, err
		}
		if err := admit(cfg, theirs.id, cert); err != nil {
			refuse(notAdmitted)
			return nil, err
		}
	}
	w := newWireConn(transport)
	w.win = newWindows(cfg, w.sendFrame)
	w.win.noteRTT(rtt)
	ycfg := &yamux.Config{
		AcceptBacklog:          acceptBacklog,
		EnableKeepAlive:        false, // package liveness does this, adaptively
		KeepAliveInterval:      time.Hour,
		ConnectionWriteTimeout: cfg.WriteTimeout,
		MaxStreamWindowSize:    yamuxWindow(cfg.MaxStreamWindow), // windows tunes below it
		StreamCloseTimeout:     time.Minute,
		StreamOpenTimeout:      0, // would close the whole session; liveness decides
		Logger:                 yamuxLogger{cfg.Logger},
	}
	var sess *yamux.Session
	var ctrl *yamux.Stream
	if server {
		sess, _ = yamux.Server(w, ycfg)
		ctrl, err = sess.AcceptStreamWithContext(ctx)
	} else {
		sess, _ = yamux.Client(w, ycfg)
		ctrl, err = sess.OpenStream()
	}
	if err != nil {
		sess.Close()
		return nil, fmt.Errorf("opening the control stream: %w", err)
	}
	// The deadline stays on the transport until here: a peer that opens its
	// control stream with half a frame holds yamux's stream lock, which
	// AcceptStream needs, and only the deadline cuts it off.
	if !stop() {
		sess.Close()
		return nil, ctx.Err()
	}
	conn.SetDeadline(time.Time{})
	return newConn(cfg, w, sess, ctrl, theirs, server), nil
}

// acceptBacklog bounds, per connection, the streams opened and not yet
// accepted (yamux's AcceptBacklog). Both ends use it: an opener waits for
// the acceptor's acknowledgement before it has more than this many
// unacknowledged, so a tether peer never overflows the acceptor's queue
// (yamux resets a stream that would). 64 streams a round trip is 1,280
// opens a second on a 50 ms path; yamux's default, 256, costs a 2 KiB
// queue on every connection, most of them idle.
const acceptBacklog = 64

// checkID checks the ID a peer claims against its certificate (with TLS)
// and against the ID the caller expects (if any).
func checkID(claimed, own, certID, expect string) error {
	if claimed == own {
		return fmt.Errorf("%w: it claims this node's own ID %q", ErrSelf, claimed)
	}
	if certID != "" && claimed != certID {
		return fmt.Errorf("the peer claims ID %q but its certificate is that of %q", claimed, certID)
	}
	if expect != "" && claimed != expect {
		return fmt.Errorf("the peer is %q, not %q as expected", claimed, expect)
	}
	return nil
}

// yamuxLogger sends yamux's log lines to zap at Debug: the death of a
// connection is reported once, by whoever evicts it, not by every layer.
type yamuxLogger struct{ l *zap.Logger }

func (y yamuxLogger) Print(v ...any) {
	if y.on() {
		y.log(fmt.Sprint(v...))
	}
}

func (y yamuxLogger) Printf(format string, v ...any) {
	if y.on() {
		y.log(fmt.Sprintf(format, v...))
	}
}

func (y yamuxLogger) Println(v ...any) {
	if y.on() {
		y.log(fmt.Sprintln(v...))
	}
}

// on tells whether a line would be written, before it is formatted: a
// flood of streams makes yamux log one line per refused stream.
func (y yamuxLogger) on() bool { return y.l.Core().Enabled(zap.DebugLevel) }

func (y yamuxLogger) log(s string) {
	if ce := y.l.Check(zap.DebugLevel, "yamux"); ce != nil {
		ce.Write(zap.String("msg", strings.TrimSpace(s)))
	}
}

// tcpConn finds the *net.TCPConn under c (through TLS, or any wrapper with
// a NetConn method), or nil.
func tcpConn(c net.Conn) *net.TCPConn {
	for {
		switch x := c.(type) {
		case *net.TCPConn:
			return x
		case interface{ NetConn() net.Conn }:
			c = x.NetConn()
		default:
			return nil
		}
	}
}
