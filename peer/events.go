package peer

import (
	"sync"
	"time"
)

// EventKind says what happened to a peer.
type EventKind int

const (
	// Connected: a new reference (a first connection, or a reconnection).
	Connected EventKind = iota + 1
	// Disconnected: the reference was evicted or its connection closed.
	Disconnected
	// Suspected: the peer is suspect (it has not answered a probe within
	// its adaptive timeout) but not yet dead; new work should go
	// elsewhere. See Peer.Suspect.
	Suspected
	// Recovered: a suspect peer answered again.
	Recovered
)

func (k EventKind) String() string {
	switch k {
	case Connected:
		return "connected"
	case Disconnected:
		return "disconnected"
	case Suspected:
		return "suspected"
	case Recovered:
		return "recovered"
	}
	return "unknown"
}

// Event is one change in a peer's state, as told to subscribers.
//
// A Disconnected event's Cause is the reference's Err: the same
// *rpc.DeadError that its failed calls return, so errors.Is(ev.Cause,
// rpc.ErrDeadReference) holds, and errors.Is and errors.As reach the cause
// of death through it (rpc.ErrPeerLeft for a goodbye, a *liveness.Verdict
// for missed heartbeats, rpc.ErrProtocolViolation, ErrReplaced, or the
// cause given to Evict).
type Event struct {
	Kind      EventKind
	ID        ID
	Peer      *Peer     // the reference concerned
	Cause     error     // Disconnected: why; the reference's Err, see below
	Calls     int       // Disconnected: outstanding calls failed at once
	Reconnect bool      // Connected: a kept address came back
	Time      time.Time // when it happened
}

// Subscribe calls fn with every event from now on, in order, on one
// goroutine that the registry shares among its subscribers: fn should be
// quick, and must not call Subscribe's cancel. Each event is told once. The
// returned func unsubscribes.
func (r *Registry) Subscribe(fn func(Event)) (cancel func()) {
	return r.events.subscribe(fn)
}

// eventQueue delivers events to subscribers from one goroutine, so that the
// code that evicts never waits for a subscriber.
type eventQueue struct {
	mu     sync.Mutex
	cond   *sync.Cond
	q      []Event
	subs   map[int]func(Event)
	nextID int
	closed bool
	done   chan struct{}
}

func (e *eventQueue) start() {
	e.cond = sync.NewCond(&e.mu)
	e.subs = make(map[int]func(Event))
	e.done = make(chan struct{})
	go e.run()
}

func (e *eventQueue) subscribe(fn func(Event)) func() {
	e.mu.Lock()
	defer e.mu.Unlock()
	id := e.nextID
	e.nextID++
	e.subs[id] = fn
	return func() {
		e.mu.Lock()
		delete(e.subs, id)
		e.mu.Unlock()
	}
}

func (e *eventQueue) push(ev Event) {
	e.mu.Lock()
	if !e.closed {
		e.q = append(e.q, ev)
		e.cond.Signal()
	}
	e.mu.Unlock()
}

func (e *eventQueue) run() {
	defer close(e.done)
	var fns []func(Event)
	e.mu.Lock()
	for {
		for len(e.q) == 0 && !e.closed {
			e.cond.Wait()
		}
		if len(e.q) == 0 {
			e.mu.Unlock()
			return
		}
		ev := e.q[0]
		e.q[0] = Event{}
		e.q = e.q[1:]
		fns = fns[:0]
		for _, fn := range e.subs {
			fns = append(fns, fn)
		}
		e.mu.Unlock()
		for _, fn := range fns {
			fn(ev)
		}
		e.mu.Lock()
	}
}

// close delivers what is queued, then stops.
func (e *eventQueue) close() {
	e.mu.Lock()
	e.closed = true
	e.cond.Signal()
	e.mu.Unlock()
	<-e.done
}
