package rpc

import (
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"unicode/utf8"
)

// The handshake: see spec.md. Before yamux starts, the dialer sends a hello
// and the acceptor answers with its own hello or with a refusal.

// ProtocolVersion is the version of the wire format this package speaks.
const ProtocolVersion = 2

const (
	helloMagic   = "TTHR"
	helloFixed   = 18
	maxIDLen     = 1024
	statusHello  = 0
	statusRefuse = 1
)

// hello is what each side tells the other before the session starts.
type hello struct {
	version    uint16
	status     uint8
	maxMessage uint32 // the largest payload the sender accepts
	maxCalls   uint32 // how many concurrent calls the sender serves per connection
	id         string // the sender's node ID; for a refusal, the reason
}

func (h *hello) marshal() []byte {
	id := h.id
	if len(id) > maxIDLen {
		id = id[:maxIDLen]
	}
	b := make([]byte, 0, helloFixed+len(id))
	b = append(b, helloMagic...)
	b = binary.BigEndian.AppendUint16(b, h.version)
	b = append(b, h.status, 0)
	b = binary.BigEndian.AppendUint32(b, h.maxMessage)
	b = binary.BigEndian.AppendUint32(b, h.maxCalls)
	b = binary.BigEndian.AppendUint16(b, uint16(len(id)))
	return append(b, id...)
}

// readHello reads and checks one hello. It refuses anything it does not
// understand with an error matching ErrProtocolViolation, and an unknown
// version with ErrIncompatible (the hello is still returned, so a refusal
// can name the version).
func readHello(r io.Reader) (*hello, error) {
	var b [helloFixed]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return nil, err
	}
	return parseHello(b[:], r)
}

func parseHello(b []byte, r io.Reader) (*hello, error) {
	if string(b[:4]) != helloMagic {
		if b[0] == tlsHandshakeRecord && b[1] == 3 { // a TLS ClientHello
			return nil, violation("%w: the peer speaks TLS, and this node does not use it", ErrTLSMismatch)
		}
		return nil, violation("not a tether peer: handshake starts with %q", b[:4])
	}
	h := &hello{
		version:    binary.BigEndian.Uint16(b[4:6]),
		status:     b[6],
		maxMessage: binary.BigEndian.Uint32(b[8:12]),
		maxCalls:   binary.BigEndian.Uint32(b[12:16]),
	}
	n := int(binary.BigEndian.Uint16(b[16:18]))
	if n > maxIDLen {
		return nil, violation("handshake ID of %d bytes exceeds %d", n, maxIDLen)
	}
	id := make([]byte, n)
	if _, err := io.ReadFull(r, id); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	if !utf8.Valid(id) {
		return nil, violation("handshake ID is not UTF-8")
	}
	h.id = string(id)
	switch {
	case h.status == statusRefuse:
		return h, nil
	case h.status != statusHello:
		return nil, violation("handshake status %d", h.status)
	case h.version != ProtocolVersion:
		return h, fmt.Errorf("%w: peer speaks version %d, this node speaks %d", ErrIncompatible, h.version, ProtocolVersion)
	case b[7] != 0:
		return nil, violation("handshake reserved byte %d", b[7])
	case n == 0:
		return nil, violation("handshake without a node ID")
	case h.maxMessage == 0 || h.maxCalls == 0:
		return nil, violation("handshake with zero limits (message %d, calls %d)", h.maxMessage, h.maxCalls)
	}
	return h, nil
}

// tlsHandshakeRecord is the first byte of a TLS handshake record.
const tlsHandshakeRecord = 0x16

// tlsRequired is the reason a TLS node gives a dialer that speaks tether
// without TLS.
const tlsRequired = "this node requires TLS"

// refusal is the hello that refuses the other side, saying why.
func refusal(reason string) []byte {
	return (&hello{version: ProtocolVersion, status: statusRefuse, id: reason}).marshal()
}

// refused is the error of a handshake that the other side (by: "the peer",
// "the dialer") refused with reason.
func refused(by, reason string) error {
	switch {
	case strings.Contains(reason, ErrSelf.Error()):
		return fmt.Errorf("%w: refused by %s: %s", ErrSelf, by, reason)
	case strings.Contains(reason, tlsRequired):
		return fmt.Errorf("%w: refused by %s: %s", ErrTLSMismatch, by, reason)
	case strings.HasPrefix(reason, ErrNotAdmitted.Error()):
		return fmt.Errorf("%w: refused by %s: %s", ErrNotAdmitted, by, reason)
	}
	return fmt.Errorf("refused by %s: %s", by, reason)
}

// tlsFailure explains a failed TLS handshake. A peer that spoke tether in
// the clear is told, in the clear, that this node requires TLS (server),
// or is named as one without TLS (client); anything else is TLS's own
// error.
func tlsFailure(conn net.Conn, err error, server bool) error {
	var rh tls.RecordHeaderError
	if !errors.As(err, &rh) || string(rh.RecordHeader[:4]) != helloMagic {
		return fmt.Errorf("TLS: %w", err)
	}
	if server {
		conn.Write(refusal(tlsRequired))
		return fmt.Errorf("%w: the peer speaks tether without TLS, and %s", ErrTLSMismatch, tlsRequired)
	}
	return fmt.Errorf("%w: the peer answered without TLS: it does not use TLS, and this node requires it", ErrTLSMismatch)
}

// dialerAnswer reads the start of what the dialer sends after the
// acceptor's hello: yamux's first frame, or a refusal if that hello did not
// suit it (a peer other than the one it expected, say). It returns the
// transport for yamux, with the bytes it read put back in front.
func dialerAnswer(t net.Conn) (net.Conn, error) {
	var b [helloFixed]byte
	if _, err := io.ReadFull(t, b[:4]); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, fmt.Errorf("the dialer hung up after this node's hello (it refused this node, or gave up): %w", err)
		}
		return nil, err
	}
	if string(b[:4]) != helloMagic {
		return &replayConn{Conn: t, pre: append([]byte(nil), b[:4]...)}, nil
	}
	if _, err := io.ReadFull(t, b[4:]); err != nil {
		return nil, err
	}
	h, err := parseHello(b[:], t)
	if err != nil {
		return nil, err
	}
	if h.status != statusRefuse {
		return nil, violation("a second hello from the dialer")
	}
	return nil, refused("the dialer", h.id)
}

// replayConn is a net.Conn whose first reads return bytes already read
// from it.
type replayConn struct {
	net.Conn
	pre []byte
}

func (c *replayConn) Read(p []byte) (int, error) {
	if len(c.pre) > 0 {
		n := copy(p, c.pre)
		c.pre = c.pre[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

// NetConn returns the connection under c.
func (c *replayConn) NetConn() net.Conn { return c.Conn }
