package rpc

import (
	"encoding/binary"
	"fmt"
	"io"
	"unicode/utf8"
)

// The handshake: see spec.md. Before yamux starts, the dialer sends a hello
// and the acceptor answers with its own hello or with a refusal.

// ProtocolVersion is the version of the wire format this package speaks.
const ProtocolVersion = 1

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
