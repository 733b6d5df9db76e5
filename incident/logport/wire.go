package logport

import (
	"encoding/binary"
	"fmt"
	"io"
	"strconv"
	"unicode/utf8"
)

// The frame layer; spec.md describes it in prose. Every frame is a 5-byte
// header (type, then the payload's length as a big-endian uint32) and its
// payload. Types from the subscriber have the top bit clear, types from the
// port have it set, so a frame sent the wrong way is caught at once.

const (
	frameHeader = 5

	// Subscriber to port.
	frameSubscribe byte = 0x01 // version u8, mode u8, epoch u64, from u64
	frameGrant     byte = 0x02 // n u64: credit for n more entries
	frameFetch     byte = 0x03 // an incident file's name

	// Port to subscriber.
	frameHello byte = 0x81 // version u8, epoch u64, next u64, max credit u64
	frameEntry byte = 0x82 // seq u64, one JSON object and its "\n"
	frameLoss  byte = 0x83 // first u64, last u64
	frameFile  byte = 0x84 // size u64; then size raw bytes follow
	frameError byte = 0x85 // code u16, message (UTF-8)

	// wireVersion is the protocol version in SUBSCRIBE and HELLO.
	wireVersion = 1

	subscribeLen = 1 + 1 + 8 + 8
	grantLen     = 8
	helloLen     = 1 + 8 + 8 + 8
	lossLen      = 8 + 8
	fileLen      = 8
	entryFixed   = 8 // the seq before an entry's JSON

	// maxNameLen bounds an incident file's name, as most file systems do.
	maxNameLen = 255
	// maxErrorMessage bounds an error frame's message.
	maxErrorMessage = 1024
	// maxClientFrame bounds any frame a subscriber may send.
	maxClientFrame = subscribeLen + maxNameLen
	// DefaultMaxFrame bounds a frame a subscriber accepts from a port: well
	// above the port's largest entry (MaxEntrySize), so that a port built
	// with other limits still gets through.
	DefaultMaxFrame = 1 << 20
)

// Subscription modes: where a subscription starts.
const (
	modeTail     byte = 0 // entries produced from now on
	modeRetained byte = 1 // the oldest entry the port still holds
	modeFrom     byte = 2 // a given sequence number of a given epoch
)

var frameNames = map[byte]string{
	frameSubscribe: "subscribe", frameGrant: "grant", frameFetch: "fetch",
	frameHello: "hello", frameEntry: "entry", frameLoss: "loss",
	frameFile: "file", frameError: "error",
}

func frameName(t byte) string {
	if n, ok := frameNames[t]; ok {
		return n
	}
	return "type-0x" + strconv.FormatUint(uint64(t), 16)
}

func putHeader(b []byte, t byte, n int) {
	b[0] = t
	binary.BigEndian.PutUint32(b[1:5], uint32(n))
}

func appendHeader(b []byte, t byte, n int) []byte {
	return append(b, t, byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
}

// readFrame reads one frame into buf (grown as needed) and returns its type
// and payload. A payload over max is a protocol violation; a stream that
// ends inside a frame is io.ErrUnexpectedEOF; one that ends between frames
// is io.EOF.
func readFrame(r io.Reader, buf []byte, max int) (byte, []byte, error) {
	var h [frameHeader]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return 0, buf, err
	}
	n := binary.BigEndian.Uint32(h[1:5])
	if uint64(n) > uint64(max) {
		return h[0], buf, protocolf("%s frame of %d bytes exceeds the limit of %d", frameName(h[0]), n, max)
	}
	if cap(buf) < int(n) {
		buf = make([]byte, n)
	}
	buf = buf[:n]
	if _, err := io.ReadFull(r, buf); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return h[0], buf, err
	}
	return h[0], buf, nil
}

// subscribeReq is a SUBSCRIBE frame's payload.
type subscribeReq struct {
	mode  byte
	epoch uint64
	from  uint64
}

func appendSubscribe(b []byte, r subscribeReq) []byte {
	b = appendHeader(b, frameSubscribe, subscribeLen)
	b = append(b, wireVersion, r.mode)
	b = binary.BigEndian.AppendUint64(b, r.epoch)
	return binary.BigEndian.AppendUint64(b, r.from)
}

func parseSubscribe(t byte, p []byte) (subscribeReq, error) {
	if t != frameSubscribe {
		return subscribeReq{}, protocolf("a subscription must start with a subscribe frame, not %s", frameName(t))
	}
	if len(p) != subscribeLen {
		return subscribeReq{}, protocolf("a subscribe frame of %d bytes, not %d", len(p), subscribeLen)
	}
	if p[0] != wireVersion {
		return subscribeReq{}, protocolf("protocol version %d; this port speaks %d", p[0], wireVersion)
	}
	r := subscribeReq{mode: p[1], epoch: binary.BigEndian.Uint64(p[2:10]), from: binary.BigEndian.Uint64(p[10:18])}
	if r.mode > modeFrom {
		return r, protocolf("unknown subscription mode %d", r.mode)
	}
	return r, nil
}

func appendGrant(b []byte, n uint64) []byte {
	b = appendHeader(b, frameGrant, grantLen)
	return binary.BigEndian.AppendUint64(b, n)
}

// hello is a HELLO frame's payload.
type hello struct {
	epoch, next, maxCredit uint64
}

func appendHello(b []byte, h hello) []byte {
	b = appendHeader(b, frameHello, helloLen)
	b = append(b, wireVersion)
	b = binary.BigEndian.AppendUint64(b, h.epoch)
	b = binary.BigEndian.AppendUint64(b, h.next)
	return binary.BigEndian.AppendUint64(b, h.maxCredit)
}

func parseHello(p []byte) (hello, error) {
	if len(p) != helloLen {
		return hello{}, protocolf("a hello frame of %d bytes, not %d", len(p), helloLen)
	}
	if p[0] != wireVersion {
		return hello{}, protocolf("protocol version %d; this subscriber speaks %d", p[0], wireVersion)
	}
	h := hello{
		epoch:     binary.BigEndian.Uint64(p[1:9]),
		next:      binary.BigEndian.Uint64(p[9:17]),
		maxCredit: binary.BigEndian.Uint64(p[17:25]),
	}
	if h.next == 0 || h.maxCredit == 0 {
		return h, protocolf("a hello frame with next %d and max credit %d", h.next, h.maxCredit)
	}
	return h, nil
}

func appendLoss(b []byte, l Loss) []byte {
	b = appendHeader(b, frameLoss, lossLen)
	b = binary.BigEndian.AppendUint64(b, l.First)
	return binary.BigEndian.AppendUint64(b, l.Last)
}

func parseLoss(p []byte) (Loss, error) {
	if len(p) != lossLen {
		return Loss{}, protocolf("a loss frame of %d bytes, not %d", len(p), lossLen)
	}
	l := Loss{First: binary.BigEndian.Uint64(p[0:8]), Last: binary.BigEndian.Uint64(p[8:16])}
	if l.First == 0 || l.Last < l.First {
		return l, protocolf("a loss frame for seq %d..%d", l.First, l.Last)
	}
	return l, nil
}

func appendError(b []byte, code Code, msg string) []byte {
	if len(msg) > maxErrorMessage {
		msg = msg[:maxErrorMessage]
	}
	b = appendHeader(b, frameError, 2+len(msg))
	b = append(b, byte(code>>8), byte(code))
	return append(b, msg...)
}

func parseError(p []byte) *Error {
	if len(p) < 2 {
		return &Error{Code: CodeProtocol, Message: "a malformed error frame"}
	}
	msg := p[2:]
	if !utf8.Valid(msg) {
		msg = []byte(fmt.Sprintf("%q", msg))
	}
	return &Error{Code: Code(binary.BigEndian.Uint16(p[:2])), Message: string(msg)}
}

func appendFetch(b []byte, name string) []byte {
	b = appendHeader(b, frameFetch, len(name))
	return append(b, name...)
}

func appendFile(b []byte, size int64) []byte {
	b = appendHeader(b, frameFile, fileLen)
	return binary.BigEndian.AppendUint64(b, uint64(size))
}
