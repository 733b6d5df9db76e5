package logport

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/tetherrpc/tether/rpc"
)

// Streamer opens rpc streams: a *peer.Peer is one; for an *rpc.Conn use
// StreamFunc(conn.OpenStream).
type Streamer interface {
	Stream(ctx context.Context, method string) (*rpc.Stream, error)
}

// StreamFunc adapts a function, such as (*rpc.Conn).OpenStream, to a
// Streamer.
type StreamFunc func(ctx context.Context, method string) (*rpc.Stream, error)

// Stream calls f.
func (f StreamFunc) Stream(ctx context.Context, method string) (*rpc.Stream, error) {
	return f(ctx, method)
}

// Entry is what a subscriber is handed: a log entry, or a loss notice.
type Entry struct {
	// Seq is the entry's sequence number on the port (also in its JSON,
	// as "port_seq"); zero for a loss notice.
	Seq uint64
	// JSON is the entry: one JSON object and its "\n". It is valid only
	// during the call; copy it to keep it. Nil for a loss notice.
	JSON []byte
	// Lost, in a loss notice, is the range of entries lost; zero otherwise.
	Lost Loss
}

// IsLoss reports whether e is a loss notice.
func (e Entry) IsLoss() bool { return e.Lost.First != 0 }

// Loss is a range of sequence numbers the port never sent: every entry
// from First to Last, inclusive.
type Loss struct {
	First, Last uint64
}

// N is the number of entries lost.
func (l Loss) N() uint64 { return l.Last - l.First + 1 }

func (l Loss) String() string {
	return fmt.Sprintf("%d entries lost (seq %d..%d)", l.N(), l.First, l.Last)
}

// AppendJSON appends the notice as a JSON line, for a log file:
// {"msg":"N entries lost (seq a..b)","lost":N,"first_seq":a,"last_seq":b}.
func (l Loss) AppendJSON(b []byte) []byte {
	return fmt.Appendf(b, `{"msg":%q,"lost":%d,"first_seq":%d,"last_seq":%d}`+"\n", l.String(), l.N(), l.First, l.Last)
}

// Position is how far a subscription got: the port's epoch and the last
// sequence number it saw (delivered or reported lost).
type Position struct {
	Epoch uint64
	Seq   uint64
}

// DefaultWindow is the credit a subscriber keeps granted, in entries.
//
// Foolscap kept 10 entries in flight, each a remote call acknowledged on
// its own: at a 50 ms round trip that is 200 entries a second, well below
// what a busy node logs, so the gatherer fell behind by design. Here the
// window only bounds what the subscriber must be ready to take; credit is
// returned in batches, and 1024 entries of a typical 250 bytes fill yamux's
// 256 KiB stream window, so on any link the stream, not the credit, sets
// the pace. A subscriber's memory does not grow with it: entries are read
// from the stream one at a time.
const DefaultWindow = 1024

// SubscribeOption configures Subscribe.
type SubscribeOption func(*subscribeConfig)

type subscribeConfig struct {
	window   uint64
	req      subscribeReq
	maxFrame int
	hello    func(Position)
}

// Window sets the credit window in entries (default DefaultWindow). It is
// lowered to the port's limit if above it.
func Window(n int) SubscribeOption {
	return func(c *subscribeConfig) {
		if n > 0 {
			c.window = uint64(n)
		}
	}
}

// CatchUp starts the subscription with the oldest entry the port still
// holds (see WithHistory) rather than with the next one.
func CatchUp() SubscribeOption {
	return func(c *subscribeConfig) { c.req = subscribeReq{mode: modeRetained} }
}

// From resumes after pos, as Subscribe returned it: the subscription starts
// with entry pos.Seq+1. If the port no longer holds it, the subscription
// starts with a loss notice for what is gone. If the port is not the one
// pos came from (another epoch: the node restarted), it starts with the
// new port's first entry. A zero pos is CatchUp.
func From(pos Position) SubscribeOption {
	return func(c *subscribeConfig) {
		if pos == (Position{}) {
			c.req = subscribeReq{mode: modeRetained}
			return
		}
		c.req = subscribeReq{mode: modeFrom, epoch: pos.Epoch, from: pos.Seq + 1}
	}
}

// OnStart sets a function called once the port has accepted the
// subscription, with the position just before its first entry.
func OnStart(fn func(Position)) SubscribeOption {
	return func(c *subscribeConfig) { c.hello = fn }
}

// MaxFrame bounds a frame from the port (default DefaultMaxFrame).
func MaxFrame(n int) SubscribeOption {
	return func(c *subscribeConfig) {
		if n > 0 {
			c.maxFrame = n
		}
	}
}

// Subscribe subscribes to a port's log stream and calls fn with each entry
// and each loss notice, in sequence order, on the calling goroutine. It
// keeps Window entries of credit granted, returning credit as fn returns:
// fn's pace is the subscription's pace, and if it is slower than the
// node's log, the port drops what does not fit its budget and fn gets a
// loss notice for exactly what was dropped. A gap in sequence numbers that
// the port did not announce (it never happens with this package's port)
// is reported as a loss notice too.
//
// Subscribe returns when ctx ends (ctx.Err()), when the port ends the
// subscription (an *Error: ErrClosed when the node shuts down), when the
// connection dies (an error matching rpc.ErrDeadReference), or when the
// port sends something malformed (ErrProtocol). It returns the position it
// got to, from which From resumes.
func Subscribe(ctx context.Context, s Streamer, fn func(Entry), opts ...SubscribeOption) (Position, error) {
	cfg := subscribeConfig{window: DefaultWindow, maxFrame: DefaultMaxFrame}
	for _, o := range opts {
		o(&cfg)
	}
	st, err := s.Stream(ctx, MethodSubscribe)
	if err != nil {
		return Position{}, err
	}
	defer st.Close()
	pos, err := subscribe(st, &cfg, fn)
	return pos, explain(ctx, st, err)
}

// deathWait bounds how long an unexplained stream error waits for the
// connection's death to explain it.
const deathWait = 250 * time.Millisecond

// explain replaces a stream error that the rpc layer had not yet put down
// to the connection's death (a reset seen by the stream before the
// connection's reader, an end of stream) by the connection's *DeadError,
// if the connection dies within deathWait; so that callers can rely on
// errors.Is(err, rpc.ErrDeadReference).
func explain(ctx context.Context, st *rpc.Stream, err error) error {
	var pe *Error
	if err == nil || ctx.Err() != nil || errors.As(err, &pe) || errors.Is(err, ErrProtocol) && !errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, rpc.ErrDeadReference) {
		return err
	}
	t := time.NewTimer(deathWait)
	defer t.Stop()
	select {
	case <-st.Conn().Done():
		return st.Conn().Err()
	case <-t.C:
		return err
	}
}

// subscribe runs the subscriber's side of the protocol over st.
func subscribe(st io.ReadWriter, cfg *subscribeConfig, fn func(Entry)) (Position, error) {
	var pos Position
	if _, err := st.Write(appendSubscribe(nil, cfg.req)); err != nil {
		return pos, err
	}
	r := bufio.NewReaderSize(st, 32<<10)
	buf := make([]byte, 0, 4<<10)
	t, payload, err := readFrame(r, buf, cfg.maxFrame)
	if err != nil {
		return pos, answerErr(err)
	}
	switch t {
	case frameHello:
	case frameError:
		return pos, parseError(payload)
	default:
		return pos, protocolf("unexpected %s frame in answer to subscribe", frameName(t))
	}
	h, err := parseHello(payload)
	if err != nil {
		return pos, err
	}
	pos = Position{Epoch: h.epoch, Seq: h.next - 1}
	if cfg.hello != nil {
		cfg.hello(pos)
	}
	window := min(cfg.window, h.maxCredit)
	// Credit goes back in batches of a quarter window: few grant frames,
	// and the port never runs dry while a grant is on its way.
	batch := max(1, window/4)
	var out []byte
	if _, err := st.Write(appendGrant(out[:0], window)); err != nil {
		return pos, err
	}
	var used uint64
	for {
		t, payload, err = readFrame(r, payload[:0], cfg.maxFrame)
		if err != nil {
			return pos, answerErr(err)
		}
		switch t {
		case frameEntry:
			if len(payload) < entryFixed {
				return pos, protocolf("an entry frame of %d bytes", len(payload))
			}
			seq := binary.BigEndian.Uint64(payload)
			switch {
			case seq <= pos.Seq:
				return pos, protocolf("entry %d after entry %d", seq, pos.Seq)
			case seq > pos.Seq+1: // a gap the port did not announce
				fn(Entry{Lost: Loss{First: pos.Seq + 1, Last: seq - 1}})
			}
			pos.Seq = seq
			fn(Entry{Seq: seq, JSON: payload[entryFixed:]})
			if used++; used >= batch {
				out = appendGrant(out[:0], used)
				if _, err := st.Write(out); err != nil {
					return pos, err
				}
				used = 0
			}
		case frameLoss:
			l, err := parseLoss(payload)
			if err != nil {
				return pos, err
			}
			if l.First != pos.Seq+1 {
				return pos, protocolf("a loss of %d..%d after entry %d", l.First, l.Last, pos.Seq)
			}
			pos.Seq = l.Last
			fn(Entry{Lost: l})
		case frameError:
			return pos, parseError(payload)
		default:
			return pos, protocolf("unexpected %s frame in a subscription", frameName(t))
		}
	}
}

// answerErr explains the end of the port's side.
func answerErr(err error) error {
	switch {
	case err == io.EOF:
		return fmt.Errorf("logport: the subscription's stream ended without a word from the port (did its connection die?): %w", io.ErrUnexpectedEOF)
	case err == io.ErrUnexpectedEOF:
		return fmt.Errorf("logport: the port's stream ended in the middle of a frame: %w", err)
	}
	return err
}
