package partition

import (
	"bytes"
	"math/rand/v2"
	"sync"
	"time"
)

// Link is how a Proxy carries data one way: a one-way Delay, random
// Jitter, a Rate and a Queue, as a long path between two hosts would, for
// tests of what depends on the round trip (flow-control windows, probes,
// timeouts) on a machine without netem. The zero Link forwards at once.
//
// The proxy stamps each chunk it reads from the sender with the time it is
// due at the receiver: when the link has finished sending it at Rate
// (after the chunks before it), plus Delay, plus a random share of Jitter.
// A delay thus adds latency, not a pause per read: a stream keeps flowing,
// Delay behind. A chunk never overtakes an earlier one: what TCP's
// receiver sees when segments are reordered on the way is the late one
// holding back those after it, and that is what the proxy delivers. So
// sparse messages each take Delay plus their own share of Jitter, while a
// busy stream, held back by its latest chunk, takes nearly Delay+Jitter.
//
// The queue holds every byte read and not yet written: waiting to be sent,
// on the way, or due and waiting for the receiver to take it. When it
// holds Queue bytes the proxy stops reading; its socket buffer fills and
// the sender's TCP window closes, as a full router buffer pushes back on
// TCP, except that nothing is dropped. Nothing is buffered without bound.
//
// The proxy's kernel acknowledges every segment as soon as it arrives, so
// the sender's TCP measures loopback's round trip, not the link's: TCP's
// own congestion window, retransmission timer and the RTT that TCP_INFO
// reports never feel the delay, and the Queue is what bounds the data in
// flight. Round trips the application
// makes do feel it in full: a request and its response, yamux's window
// updates, tether's probes. A stream whose receive window is W therefore
// moves at most W per round trip through the link, as on a real long path,
// which is what a test of window tuning measures. A test of TCP itself
// (congestion control, loss, retransmission) needs the kernel: Loss and
// LimitRate.
type Link struct {
	// Delay is the one-way latency every byte takes.
	Delay time.Duration
	// Jitter is the most random extra latency a chunk takes, drawn
	// uniformly from [0, Jitter) for each chunk read.
	Jitter time.Duration
	// Rate is the bandwidth in bytes per second; 0 is unlimited. The
	// proxy paces data in chunks of about 2 ms of Rate (4 to 64 KiB).
	Rate int64
	// Queue bounds the bytes the link holds, for each connection. 0
	// means a default large enough that the link never holds a sender
	// below its Rate: with a Rate, twice the bytes in flight,
	// 2 × Rate × (Delay+Jitter) (the bandwidth-delay product of a round
	// trip), at least 1 MiB and at most 1 GiB. With no Rate, 64 MiB when
	// delayed, which caps a stream at 64 MiB per Delay (2.5 GiB/s at
	// 25 ms, 640 MiB/s at 100 ms), and 1 MiB when not.
	Queue int
}

const (
	minQueue       = 1 << 20
	maxQueue       = 1 << 30
	unlimitedQueue = 64 << 20
	maxChunk       = 64 << 10 // the most the proxy reads at once
	minChunk       = 4 << 10  // the least it reads when it has room, on a slow link
)

// queue returns the link's bound on held bytes: Queue or its default.
func (l Link) queue() int {
	switch {
	case l.Queue > 0:
		return l.Queue
	case l.Rate > 0:
		inFlight := float64(l.Rate) * (l.Delay + l.Jitter).Seconds()
		return int(min(max(2*inFlight, minQueue), maxQueue))
	case l.Delay > 0 || l.Jitter > 0:
		return unlimitedQueue
	default:
		return minQueue
	}
}

// readSize returns how much to read at once: at most 2 ms of the link's
// Rate (so that pacing is smooth), never more than maxChunk.
func (l Link) readSize() int {
	if l.Rate <= 0 {
		return maxChunk
	}
	return int(min(max(l.Rate/500, minChunk), maxChunk))
}

// clean returns l with negative fields as zero.
func (l Link) clean() Link {
	l.Delay = max(l.Delay, 0)
	l.Jitter = max(l.Jitter, 0)
	l.Rate = max(l.Rate, 0)
	l.Queue = max(l.Queue, 0)
	return l
}

// bufs holds buffers of maxChunk bytes for reads.
var bufs = sync.Pool{New: func() any { b := make([]byte, maxChunk); return &b }}

// segment is data read from one side, due to be written to the other.
type segment struct {
	buf  *[]byte // from bufs, holding data; nil if data is a copy
	data []byte
	due  time.Time
	err  error // the read's error, after the data; io.EOF for a clean end
}

// linkQueue is one direction of a proxied connection: the segments read
// and not yet written, each with the time it is due. One goroutine pushes
// and waits for room, another takes and releases.
type linkQueue struct {
	room  chan struct{} // poked when held drops
	ready chan struct{} // poked when a segment is pushed

	mu   sync.Mutex
	segs []segment
	held int       // bytes read and not yet written, including those being written
	sent time.Time // when the link finishes sending the last segment at its Rate
	due  time.Time // when the last segment is due
}

func newLinkQueue() *linkQueue {
	return &linkQueue{room: make(chan struct{}, 1), ready: make(chan struct{}, 1)}
}

// waitRoom waits until the queue holds fewer than bound bytes and returns
// how many more it takes; false once done is closed.
func (q *linkQueue) waitRoom(bound int, done <-chan struct{}) (int, bool) {
	for {
		q.mu.Lock()
		free := bound - q.held
		q.mu.Unlock()
		if free > 0 {
			return free, true
		}
		select {
		case <-q.room:
		case <-done:
			return 0, false
		}
	}
}

// push queues the n bytes read into buf at time at, and the read's error,
// under link l. Small reads are copied and buf given back, so that the
// memory the queue holds stays near the bytes it counts.
func (q *linkQueue) push(buf *[]byte, n int, err error, l Link, at time.Time) {
	data := (*buf)[:n]
	if n < maxChunk/4 {
		data = bytes.Clone(data)
		bufs.Put(buf)
		buf = nil
	}
	q.mu.Lock()
	sent := at
	if l.Rate > 0 {
		if q.sent.After(sent) {
			sent = q.sent // the link is still sending earlier data
		}
		sent = sent.Add(time.Duration(float64(len(data)) * float64(time.Second) / float64(l.Rate)))
		q.sent = sent
	}
	due := sent.Add(l.Delay)
	if l.Jitter > 0 {
		due = due.Add(rand.N(l.Jitter))
	}
	if due.Before(q.due) {
		due = q.due // never overtake
	}
	q.due = due
	q.held += len(data)
	q.segs = append(q.segs, segment{buf: buf, data: data, due: due, err: err})
	q.mu.Unlock()
	poke(q.ready)
}

// next waits for the oldest segment and takes it off the queue; its bytes
// stay held until release. False once done is closed.
func (q *linkQueue) next(done <-chan struct{}) (segment, bool) {
	for {
		q.mu.Lock()
		if len(q.segs) > 0 {
			s := q.segs[0]
			q.segs[0] = segment{}
			q.segs = q.segs[1:]
			q.mu.Unlock()
			return s, true
		}
		q.mu.Unlock()
		select {
		case <-q.ready:
		case <-done:
			return segment{}, false
		}
	}
}

// release frees n bytes written to the receiver.
func (q *linkQueue) release(n int) {
	q.mu.Lock()
	q.held -= n
	q.mu.Unlock()
	poke(q.room)
}

// poke wakes the one goroutine that may wait on ch, or leaves it a wake-up.
func poke(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}
