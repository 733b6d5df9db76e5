package rpc

import (
	"encoding/binary"
	"io"
	"strconv"
	"time"
	"unicode/utf8"
)

// The frame layer: see spec.md. Every frame on the control stream is a
// 16-byte header followed by its payload.

const (
	headerSize = 16
	// requestFixed is the fixed part of a request or stream-open payload:
	// the timeout (8 bytes) and the method's length (1 byte).
	requestFixed = 9
	maxMethodLen = 255
)

type kind uint8

const (
	kindRequest  kind = 1 // a call: timeout, method, arguments
	kindResponse kind = 2 // a call's reply
	kindError    kind = 3 // a call's failure: code, message
	kindCancel   kind = 4 // the caller gave up on call id
	// 5 and 6 were ping and pong in version 1: probes are yamux pings now.
	kindGoAway     kind = 7 // the sender is leaving; payload is the reason
	kindStreamOpen kind = 8 // first frame of a bulk stream: timeout, method
	kindMax        kind = kindStreamOpen

	// kindProbe is no frame of the control stream: a probe queued for the
	// writer, which writes it as a yamux ping (see Conn.Probe).
	kindProbe kind = 0xff
)

var kindNames = [...]string{
	kindRequest: "request", kindResponse: "response", kindError: "error",
	kindCancel: "cancel",
	kindGoAway: "goaway", kindStreamOpen: "stream-open",
}

func (k kind) String() string {
	if k >= 1 && k <= kindMax && kindNames[k] != "" {
		return kindNames[k]
	}
	return "kind(" + strconv.Itoa(int(k)) + ")"
}

// header is a decoded frame header.
type header struct {
	kind   kind
	length uint32
	id     uint64
}

func putHeader(b []byte, k kind, length int, id uint64) {
	b[0] = byte(k)
	b[1] = 0 // flags: none defined in version 1
	b[2], b[3] = 0, 0
	binary.BigEndian.PutUint32(b[4:8], uint32(length))
	binary.BigEndian.PutUint64(b[8:16], id)
}

// appendHeader appends a header to b.
func appendHeader(b []byte, k kind, length int, id uint64) []byte {
	var h [headerSize]byte
	putHeader(h[:], k, length, id)
	return append(b, h[:]...)
}

// parseHeader decodes and checks a header. maxPayload bounds the payload of
// requests, responses and stream-open frames; control frames are tiny.
func parseHeader(b []byte, maxPayload int) (header, error) {
	h := header{
		kind:   kind(b[0]),
		length: binary.BigEndian.Uint32(b[4:8]),
		id:     binary.BigEndian.Uint64(b[8:16]),
	}
	if h.kind < 1 || h.kind > kindMax || kindNames[h.kind] == "" {
		return h, violation("unknown frame kind %d", b[0])
	}
	if b[1] != 0 || b[2] != 0 || b[3] != 0 {
		return h, violation("%v frame with reserved bits set (% x)", h.kind, b[1:4])
	}
	var limit int
	switch h.kind {
	case kindRequest, kindStreamOpen:
		limit = requestFixed + maxMethodLen + maxPayload
	case kindResponse:
		limit = maxPayload
	case kindError:
		limit = 2 + maxErrorMessage
	case kindGoAway:
		limit = maxErrorMessage
	default: // cancel carries nothing
		limit = 0
	}
	if int64(h.length) > int64(limit) {
		return h, violation("%v frame of %d bytes exceeds the limit of %d", h.kind, h.length, limit)
	}
	return h, nil
}

// maxErrorMessage bounds the text of an error or goaway frame; longer
// messages are cut by the sender.
const maxErrorMessage = 4096

// readFrame reads one frame header and its payload from r. The payload is
// freshly allocated (it is handed to a handler or a caller, who may keep it).
func readFrame(r io.Reader, hbuf []byte, maxPayload int) (header, []byte, error) {
	if _, err := io.ReadFull(r, hbuf[:headerSize]); err != nil {
		return header{}, nil, err
	}
	h, err := parseHeader(hbuf, maxPayload)
	if err != nil {
		return h, nil, err
	}
	if h.length == 0 {
		return h, nil, nil
	}
	p := make([]byte, h.length)
	if _, err := io.ReadFull(r, p); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return h, nil, err
	}
	return h, p, nil
}

// appendRequest appends a whole request (or stream-open) frame.
func appendRequest(b []byte, k kind, id uint64, timeout time.Duration, method string, args []byte) []byte {
	b = appendHeader(b, k, requestFixed+len(method)+len(args), id)
	b = binary.BigEndian.AppendUint64(b, uint64(timeout))
	b = append(b, byte(len(method)))
	b = append(b, method...)
	return append(b, args...)
}

// parseRequest splits a request or stream-open payload. The method aliases p.
func parseRequest(p []byte) (timeout time.Duration, method []byte, args []byte, err error) {
	if len(p) < requestFixed {
		return 0, nil, nil, violation("request payload of %d bytes is shorter than %d", len(p), requestFixed)
	}
	t := binary.BigEndian.Uint64(p)
	if t > 1<<62 {
		return 0, nil, nil, violation("request timeout %d out of range", t)
	}
	n := int(p[8])
	if n == 0 || requestFixed+n > len(p) {
		return 0, nil, nil, violation("method length %d does not fit a payload of %d bytes", n, len(p))
	}
	method = p[requestFixed : requestFixed+n]
	if !utf8.Valid(method) {
		return 0, nil, nil, violation("method name is not UTF-8")
	}
	return time.Duration(t), method, p[requestFixed+n:], nil
}

// appendError appends an error frame.
func appendError(b []byte, id uint64, code Code, msg string) []byte {
	p := errorPayload(code, msg)
	return append(appendHeader(b, kindError, len(p), id), p...)
}

// errorPayload is an error frame's payload: the code, then the message,
// cut to fit.
func errorPayload(code Code, msg string) []byte {
	if len(msg) > maxErrorMessage-2 {
		msg = msg[:maxErrorMessage-2]
	}
	b := binary.BigEndian.AppendUint16(make([]byte, 0, 2+len(msg)), uint16(code))
	return append(b, msg...)
}

// parseError decodes an error payload.
func parseError(p []byte) (*RemoteError, error) {
	if len(p) < 2 {
		return nil, violation("error payload of %d bytes", len(p))
	}
	return &RemoteError{Code: Code(binary.BigEndian.Uint16(p)), Message: string(p[2:])}, nil
}
