package rpc

import (
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base32"
	"fmt"
	"time"

	"go.uber.org/zap"

	"github.com/tetherrpc/tether/internal/tetheropts"
)

// Defaults of Config. Each is a limit that, when hit, gives a clear error to
// the caller rather than a hang or a crash.
const (
	// DefaultMaxMessageSize bounds one request or reply payload: 4 MiB, as
	// grpc-go's receive limit. Bulk data belongs on streams, which have no
	// size limit (yamux flow control bounds their memory instead).
	DefaultMaxMessageSize = 4 << 20
	// DefaultMaxConcurrentCalls bounds the calls and streams one peer may
	// have running on this node at once. Each costs a goroutine; 1024 per
	// peer keeps a hostile or buggy peer from taking the node's memory.
	DefaultMaxConcurrentCalls = 1024
	// DefaultHandshakeTimeout bounds the time from accepting (or dialing) a
	// connection to its first usable call: TLS and the hello exchange. A peer
	// that connects and says nothing is cut off after it.
	DefaultHandshakeTimeout = 5 * time.Second
	// DefaultMaxStreamWindow bounds the receive window one stream may grow
	// to: 16 MiB carries 130 MiB/s over a 100 ms round trip (a stream
	// settles a little above its bandwidth-delay product). Every stream
	// starts at yamux's 256 KiB.
	DefaultMaxStreamWindow = 16 << 20
	// DefaultMaxConnWindow bounds the receive windows of all the streams of
	// one connection together: two streams at the full window.
	DefaultMaxConnWindow = 32 << 20
	// DefaultWindowBudgetSize is the size of DefaultWindowBudget.
	DefaultWindowBudgetSize = 256 << 20
)

// Config configures a connection. The zero value is valid: every field has a
// documented default. A Config may be shared by many connections and must
// not be changed once in use.
type Config struct {
	// ID is this node's ID, told to the peer in the handshake. With TLS it is
	// derived from the certificate (see IDFromCertificate) and must be empty
	// or equal to that. Default: a random ID (see NewID).
	ID string

	// Mux serves the peer's calls and streams. Nil means none: every call
	// is answered with CodeUnknownMethod.
	Mux *Mux

	// Codec encodes arguments and replies that are not []byte and *[]byte.
	// Default: CBOR, with decode limits (see CBOR).
	Codec Codec

	// TLS, when set, runs mutual TLS over the connection before the
	// handshake. The peer's ID is then derived from its certificate's public
	// key, so no one can claim another's ID; see TLSConfig.
	TLS *tls.Config

	// Admit, when set, decides in the handshake whether to talk to the
	// peer, by its ID and (with TLS) its certificate, nil without TLS; an
	// error refuses it, and both sides' errors match ErrNotAdmitted. Both
	// the acceptor and the dialer ask it, so a dialer refuses a server it
	// did not expect. It runs once per handshake and must be quick.
	Admit func(id string, cert *x509.Certificate) error

	// ExpectID, for Client: refuse the peer unless its ID is this one. With
	// TLS the check is authenticated; without, it guards against dialing the
	// wrong node, not against an impostor.
	ExpectID string

	// MaxMessageSize bounds one request or reply payload, in bytes.
	// Default DefaultMaxMessageSize. The peer learns it in the handshake, so
	// its oversize calls fail on its side before they are sent.
	MaxMessageSize int

	// MaxConcurrentCalls bounds the calls and streams the peer may have
	// running here at once. Default DefaultMaxConcurrentCalls. The peer learns
	// it in the handshake and fails its excess calls with ErrTooManyCalls
	// before they are sent.
	MaxConcurrentCalls int

	// HandshakeTimeout bounds TLS plus the hello exchange. Default
	// DefaultHandshakeTimeout.
	HandshakeTimeout time.Duration

	// MaxStreamWindow bounds the receive window of one stream, in bytes:
	// the data a peer may send that this side has not read yet. Windows
	// start at yamux's 256 KiB and tune themselves to the path: one grows
	// while a window's worth is read within 1.2 round trips (the window is
	// what limits the stream), and shrinks to what the stream reads in 1.2
	// round trips when that takes over 1.5 (the reader, the sender or the
	// path is the limit, and a larger window only queues data). See
	// BENCHMARKS.md, long paths. Default DefaultMaxStreamWindow; values
	// below 256 KiB are raised to it, which turns tuning off.
	MaxStreamWindow uint32

	// MaxConnWindow bounds the receive windows of all of one connection's
	// streams together; a window grows only while there is room. Default
	// DefaultMaxConnWindow.
	MaxConnWindow int64

	// WindowBudget bounds the receive windows of every connection that
	// shares it: with 1,000 peers uploading at once, the node's memory for
	// unread data stays within it. A stream's first 256 KiB is the
	// protocol's and counts but is never refused; growth past it is. The
	// first 256 KiB of the stream that carries calls is not counted, so
	// idle connections take none of it. Nil means DefaultWindowBudget,
	// shared by the whole process.
	WindowBudget *WindowBudget

	// MaxWriteQueue bounds the bytes queued for the peer and not yet
	// written. Past it, this side stops reading the peer's requests until
	// half has drained, so a peer that asks for answers and never reads
	// them cannot make us hold them without bound. Default: 8 MiB, or twice
	// MaxMessageSize if more.
	MaxWriteQueue int

	// WriteTimeout is how long a write may sit in yamux's queue before yamux
	// gives up on the connection. It is a last resort: liveness (package
	// liveness, wired by package peer) decides when a peer is dead, and a
	// write blocked in the kernel is not a verdict by itself (yamux issue
	// 142). Default 2 minutes.
	WriteTimeout time.Duration

	// Logger receives the connection's logs, yamux's own included (at Debug:
	// a connection's death is reported once, by whoever evicts it). Default:
	// none.
	Logger *zap.Logger

	// Internal holds options for tether's own packages; nothing outside
	// this module can set them.
	Internal tetheropts.RPC
}

// resolved returns a copy with every default filled in.
func (c *Config) resolved() (*Config, error) {
	var r Config
	if c != nil {
		r = *c
	}
	if r.Codec == nil {
		r.Codec = CBOR
	}
	if r.MaxMessageSize <= 0 {
		r.MaxMessageSize = DefaultMaxMessageSize
	}
	if r.MaxMessageSize > 1<<31-1 {
		return nil, fmt.Errorf("rpc: MaxMessageSize %d exceeds 2 GiB", r.MaxMessageSize)
	}
	if r.MaxConcurrentCalls <= 0 {
		r.MaxConcurrentCalls = DefaultMaxConcurrentCalls
	}
	if r.MaxWriteQueue <= 0 {
		r.MaxWriteQueue = max(8<<20, 2*r.MaxMessageSize)
	}
	if r.HandshakeTimeout <= 0 {
		r.HandshakeTimeout = DefaultHandshakeTimeout
	}
	switch {
	case r.MaxStreamWindow == 0:
		r.MaxStreamWindow = DefaultMaxStreamWindow
	case r.MaxStreamWindow < initialWindow:
		r.MaxStreamWindow = initialWindow
	case r.MaxStreamWindow > 1<<30:
		return nil, fmt.Errorf("rpc: MaxStreamWindow %d exceeds 1 GiB", r.MaxStreamWindow)
	}
	if r.MaxConnWindow <= 0 {
		r.MaxConnWindow = DefaultMaxConnWindow
	}
	if r.WindowBudget == nil {
		r.WindowBudget = DefaultWindowBudget
	}
	if r.WriteTimeout <= 0 {
		r.WriteTimeout = 2 * time.Minute
	}
	if r.Logger == nil {
		r.Logger = zap.NewNop()
	}
	if r.TLS != nil {
		id, err := TLSID(r.TLS)
		if err != nil {
			return nil, err
		}
		if r.ID != "" && r.ID != id {
			return nil, fmt.Errorf("rpc: Config.ID %q differs from the ID of the TLS certificate %q", r.ID, id)
		}
		r.ID = id
	}
	if r.ID == "" {
		r.ID = NewID()
	}
	if len(r.ID) > maxIDLen {
		return nil, fmt.Errorf("rpc: Config.ID is %d bytes, more than %d", len(r.ID), maxIDLen)
	}
	return &r, nil
}

var idEncoding = base32.StdEncoding.WithPadding(base32.NoPadding)

// NewID returns a random node ID: 26 lower-case base32 characters (128 bits).
func NewID() string {
	var b [16]byte
	rand.Read(b[:])
	return lower(idEncoding.EncodeToString(b[:]))
}

func lower(s string) string {
	b := []byte(s)
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}

// DefaultWindowBudget is the budget of the connections whose Config names
// none: DefaultWindowBudgetSize bytes for the whole process.
var DefaultWindowBudget = NewWindowBudget(DefaultWindowBudgetSize)
