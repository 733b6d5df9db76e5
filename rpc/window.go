package rpc

import (
	"encoding/binary"
	"sync"
	"sync/atomic"
)

// Receive windows that tune themselves to the path.
//
// yamux gives every stream a fixed receive window: 256 KiB by protocol, up
// to Config.MaxStreamWindowSize after the first read, the same for every
// stream of a session and never smaller again. One stream so carries at
// most a window per round trip (256 KiB over a 50 ms path is 5 MiB/s), and a
// window large enough for a continent costs that much memory for every
// stream whose reader falls behind, on every peer.
//
// windows takes the decision away from yamux without changing it or the
// protocol. yamux is configured with a window twice the largest a stream
// may get (yamuxWindow), so it always has credit to grant; the transport
// sees each window update yamux writes and passes on only the part the
// stream's tuned window allows, holding back the rest (withheld). As the
// stream's reader consumes data, the transport sends the held-back credit
// itself, in window update frames of its own, written between yamux's
// frames. The sender sees ordinary yamux window updates; yamux's own
// accounting stays consistent because the sender never has more credit
// than yamux believes it granted.
//
// Tuning, per stream: it starts at the protocol's 256 KiB. Each time its
// reader has consumed one window, the time that took is compared with the
// connection's round trip (the handshake's, then probes'). Under 1.3 round
// trips, the window limits the stream (a window per round trip is all it
// can carry) and it grows, up to Config.MaxStreamWindow and only while the
// connection's and the node's budgets have room: it doubles until it first
// outgrows the path, then grows by quarters, so that an overshoot queues a
// quarter of a window at most. Over 1.6 round trips, the window outgrew
// what the stream moves: the excess waits in a queue somewhere on the path
// (and every call behind it waits too) or in this side's buffers, so the
// window shrinks to what the stream consumes in 1.2 round trips, halving
// at most. A stream so settles a little above its bandwidth-delay product,
// and a slow or idle one gives its budget back.
//
// Even a stream that the window alone limits takes more than a round trip
// per window: credit held back until it is worth sending (releaseShare)
// is not the sender's yet, a rate-limited link spreads the window's data
// over its sending time, and jitter lengthens some round trips past the
// least one measured. Credit goes back in eighths of the window and the
// bound is 1.3, so such a stream grows; with quarters and 1.2, a stream on
// a 200 Mbit/s path of 300 ms stopped at 4 MiB and moved 9 MiB/s of the
// 25. Higher bounds fill more of a rate-limited path, but leave a standing
// queue in its router that calls wait in (1.4 and 1.7: calls' p99 on that
// path up to 440 ms longer); see BENCHMARKS.md, long paths.
type windows struct {
	// send writes one frame at a frame boundary (see wireConn.sendFrame).
	send func(hdr []byte) error

	maxWin  uint32
	node    *WindowBudget // shared by the node's connections; may be nil
	rtt     atomic.Int64  // round trip, ns (see noteRTT); 0 until measured
	grown   atomic.Uint64 // doublings, for Stats
	limited atomic.Uint64 // doublings the budgets refused

	mu        sync.Mutex
	ctrl      streamWindow             // the control stream's, kept inline: an idle connection has no other
	streams   map[uint32]*streamWindow // the others'; nil until there is one
	connLimit int64                    // bytes of windows this connection may hold
	connUsed  int64
}

// streamWindow is one stream's receive window, as the transport keeps it.
type streamWindow struct {
	win      uint32 // the window to keep granted
	granted  uint64 // credit passed to the sender, the initial window included
	consumed uint64 // bytes the reader took
	withheld uint64 // credit yamux granted and the transport has not passed on
	reserved int64  // counted against the budgets
	free     int64  // window not counted: the control stream's first (an idle connection takes no budget)

	epochAt   int64  // nanotime the current window's worth began
	epochFrom uint64 // consumed when it began
	steady    bool   // the window once stopped growing: it grows by quarters now
}

const (
	// initialWindow is every yamux stream's window at its start, by
	// protocol.
	initialWindow = 256 << 10
	// releaseShare: held-back credit is sent once it reaches this share of
	// the window, so updates are few (eight a window) and the sender
	// never waits on a sliver, while little of the window sits
	// unreleased. (yamux sends at half, which can leave half a
	// window unsent for a round trip: see BENCHMARKS.md, long paths.)
	releaseShare = 8
	// growBelow and shrinkAbove, in tenths of a round trip, bound the time
	// one window's worth of data may take to be consumed; a window too
	// large shrinks to what is consumed in targetRTT (see windows).
	growBelow   = 13 // tenths
	shrinkAbove = 16 // tenths
	targetRTT   = 12 // tenths
)

// yamuxWindow is the window yamux is told to keep: twice the largest a
// stream may get, so yamux's own updates (sent once half of its window is
// consumed) always leave enough held-back credit.
func yamuxWindow(maxWin uint32) uint32 { return 2 * maxWin }

func newWindows(cfg *Config, send func([]byte) error) *windows {
	return &windows{
		send:      send,
		maxWin:    cfg.MaxStreamWindow,
		node:      cfg.WindowBudget,
		connLimit: int64(cfg.MaxConnWindow),
	}
}

// noteRTT folds a round-trip sample into the estimate: a lower sample is
// taken at once, a higher one moves it by 1/32 only. Probes wait behind
// bulk data on their way, so while a stream runs they measure the queue
// the window makes as much as the path; an estimate that followed them
// would let the window feed its own growth. A path that really got longer
// is followed within a few dozen probes.
func (ws *windows) noteRTT(ns int64) {
	if ns <= 0 {
		return
	}
	old := ws.rtt.Load()
	if old == 0 || ns < old {
		ws.rtt.Store(ns)
		return
	}
	ws.rtt.Store(old + (ns-old)/32)
}

// outbound rewrites a window update that yamux is about to send: it
// returns the delta to send instead and whether to send the frame at all
// (a frame with flags is always sent; one without is dropped if it would
// grant nothing).
func (ws *windows) outbound(id uint32, flags uint16, delta uint32) (uint32, bool) {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	sw := ws.lookupLocked(id)
	if sw == nil {
		if flags&(yamuxFlagSYN|yamuxFlagACK) == 0 {
			// A stream no longer followed (closed here): grant nothing more.
			return 0, flags != 0
		}
		sw = ws.addLocked(id)
	}
	if flags&yamuxFlagRST != 0 {
		ws.forgetLocked(id, sw)
		return 0, true
	}
	sw.withheld += uint64(delta)
	r := ws.releasableLocked(sw, 1)
	return r, r > 0 || flags != 0
}

// read notes that the reader consumed n bytes of stream id, tunes its
// window, and sends the credit now due, if any.
func (ws *windows) read(id uint32, n int) error {
	if n <= 0 {
		return nil
	}
	ws.mu.Lock()
	sw := ws.lookupLocked(id)
	if sw == nil {
		ws.mu.Unlock()
		return nil
	}
	sw.consumed += uint64(n)
	if sw.consumed-sw.epochFrom >= uint64(sw.win) {
		ws.tuneLocked(sw)
	}
	r := ws.releasableLocked(sw, releaseShare)
	ws.mu.Unlock()
	if r == 0 {
		return nil
	}
	var hdr [yamuxHeaderSize]byte
	hdr[1] = yamuxTypeWindow
	binary.BigEndian.PutUint32(hdr[4:8], id)
	binary.BigEndian.PutUint32(hdr[8:12], r)
	return ws.send(hdr[:])
}

// releasableLocked takes the held-back credit that the window now allows
// from withheld into granted, if it is at least 1/share of the window, and
// returns it.
func (ws *windows) releasableLocked(sw *streamWindow, share uint32) uint32 {
	out := sw.granted - sw.consumed // the sender's credit plus what waits unread
	if out >= uint64(sw.win) || sw.withheld == 0 {
		return 0
	}
	r := min(uint64(sw.win)-out, sw.withheld)
	if r < uint64(sw.win/share) && r < sw.withheld {
		return 0
	}
	sw.withheld -= r
	sw.granted += r
	ws.settleLocked(sw)
	return uint32(r)
}

// tuneLocked ends a window's worth of reading: the window doubles if that
// took under growBelow, and shrinks if over shrinkAbove (see windows).
func (ws *windows) tuneLocked(sw *streamWindow) {
	now := nanotime()
	took := now - sw.epochAt
	sw.epochAt, sw.epochFrom = now, sw.consumed
	rtt := ws.rtt.Load()
	if rtt <= 0 {
		return
	}
	switch {
	case took*10 < growBelow*rtt && sw.win < ws.maxWin:
		grow := sw.win // doubling, until the window first outgrows the path
		if sw.steady {
			grow /= 4 // then in quarters: an overshoot queues a quarter at most
		}
		grow = min(grow, ws.maxWin-sw.win)
		if need := int64(sw.win+grow) - sw.free - sw.reserved; need > 0 && !ws.reserveLocked(sw, need, false) {
			ws.limited.Add(1)
			return
		}
		sw.win += grow
		ws.grown.Add(1)
	case took*10 > shrinkAbove*rtt && sw.win > initialWindow:
		// The window outgrew the path (data waits in a queue somewhere, and
		// calls behind it) or the reader: keep what it consumes in
		// targetRTT, halving at most.
		target := uint64(sw.win) * uint64(targetRTT) * uint64(rtt) / (10 * uint64(took))
		sw.win = uint32(max(target, uint64(sw.win/2), initialWindow))
		sw.steady = true
		ws.settleLocked(sw)
	default:
		sw.steady = true
	}
}

// settleLocked gives back the part of a stream's reservation that neither
// its window nor the credit already out needs.
func (ws *windows) settleLocked(sw *streamWindow) {
	need := max(int64(sw.win), int64(sw.granted-sw.consumed)) - sw.free
	if extra := sw.reserved - need; extra > 0 {
		ws.releaseLocked(sw, extra)
	}
}

// reserveLocked counts n more bytes of window for sw against the
// connection's and the node's budgets. Unless force, it fails if either
// has no room.
func (ws *windows) reserveLocked(sw *streamWindow, n int64, force bool) bool {
	if !force && ws.connLimit > 0 && ws.connUsed+n > ws.connLimit {
		return false
	}
	if ws.node != nil && !ws.node.take(n, force) {
		return false
	}
	ws.connUsed += n
	sw.reserved += n
	return true
}

func (ws *windows) releaseLocked(sw *streamWindow, n int64) {
	ws.connUsed -= n
	sw.reserved -= n
	if ws.node != nil {
		ws.node.give(n)
	}
}

// forget stops following stream id (closed here): its reservation goes
// back to the budgets, and later updates for it grant nothing.
func (ws *windows) forget(id uint32) {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	if sw := ws.lookupLocked(id); sw != nil {
		ws.forgetLocked(id, sw)
	}
}

func (ws *windows) forgetLocked(id uint32, sw *streamWindow) {
	ws.releaseLocked(sw, sw.reserved)
	if sw == &ws.ctrl {
		ws.ctrl = streamWindow{}
	} else {
		delete(ws.streams, id)
	}
}

func (ws *windows) lookupLocked(id uint32) *streamWindow {
	if id == yamuxCtrlStream {
		if ws.ctrl.win == 0 {
			return nil
		}
		return &ws.ctrl
	}
	return ws.streams[id]
}

// addLocked starts following stream id at the protocol's initial window.
func (ws *windows) addLocked(id uint32) *streamWindow {
	sw := &ws.ctrl
	if id != yamuxCtrlStream {
		if ws.streams == nil {
			ws.streams = make(map[uint32]*streamWindow)
		}
		sw = new(streamWindow)
		ws.streams[id] = sw
	}
	*sw = streamWindow{win: initialWindow, granted: initialWindow, epochAt: nanotime()}
	if id == yamuxCtrlStream {
		// Every connection has one, idle or not: counting it would let
		// idle peers fill the budget (1,000 of them the default's).
		sw.free = initialWindow
	} else {
		ws.reserveLocked(sw, initialWindow, true)
	}
	return sw
}

// close gives every stream's reservation back: the connection is gone.
func (ws *windows) close() {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	for id, sw := range ws.streams {
		ws.forgetLocked(id, sw)
	}
	if ws.ctrl.win != 0 {
		ws.forgetLocked(yamuxCtrlStream, &ws.ctrl)
	}
}

// usage reports the bytes of window held and the streams followed.
func (ws *windows) usage() (bytes int64, streams int) {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	n := len(ws.streams)
	if ws.ctrl.win != 0 {
		n++
	}
	return ws.connUsed, n
}

// WindowBudget bounds the receive windows of every connection that shares
// it (see Config.WindowBudget): the memory that peers may fill with data
// this node has not yet read. A Node shares one among all its connections.
// Its methods are safe for concurrent use.
type WindowBudget struct {
	limit int64
	used  atomic.Int64
}

// NewWindowBudget returns a budget of limit bytes.
func NewWindowBudget(limit int64) *WindowBudget { return &WindowBudget{limit: limit} }

// Limit returns the budget's size in bytes.
func (b *WindowBudget) Limit() int64 { return b.limit }

// Used returns the bytes of receive window held now. Every stream's first
// 256 KiB (the protocol's initial window) counts but is never refused, so
// Used may pass Limit when more streams are open than the budget has
// initial windows for; no stream then grows. A connection's control
// stream, which carries its calls, counts only what it grows: idle
// connections hold none of the budget.
func (b *WindowBudget) Used() int64 { return b.used.Load() }

func (b *WindowBudget) take(n int64, force bool) bool {
	for {
		u := b.used.Load()
		if !force && u+n > b.limit {
			return false
		}
		if b.used.CompareAndSwap(u, u+n) {
			return true
		}
	}
}

func (b *WindowBudget) give(n int64) { b.used.Add(-n) }
