package rpc

import (
	"context"
	"sync"
	"sync/atomic"
)

// Handler serves calls. The request's bytes belong to the handler; so do the
// reply's bytes once returned. ctx ends when the caller gives up, when the
// request's deadline passes, or when the connection dies.
type Handler interface {
	ServeRPC(ctx context.Context, req []byte) ([]byte, error)
}

// Func adapts a function to a Handler.
type Func func(ctx context.Context, req []byte) ([]byte, error)

// ServeRPC calls f.
func (f Func) ServeRPC(ctx context.Context, req []byte) ([]byte, error) { return f(ctx, req) }

// StreamHandler serves streams opened with Conn.OpenStream. When it returns,
// the stream is closed. ctx ends when the caller cancels, when the stream's
// deadline passes, or when the connection dies; the stream is then closed too,
// so a handler blocked in Read or Write returns.
type StreamHandler interface {
	ServeStream(ctx context.Context, s *Stream) error
}

// StreamFunc adapts a function to a StreamHandler.
type StreamFunc func(ctx context.Context, s *Stream) error

// ServeStream calls f.
func (f StreamFunc) ServeStream(ctx context.Context, s *Stream) error { return f(ctx, s) }

// Typed adapts a function of typed values to a Handler. The request is
// decoded and the reply encoded with the default codec, CBOR; a request that
// does not decode is answered with CodeBadRequest. As with Call, a []byte
// request or reply passes raw, so Typed[[]byte, []byte] meets a caller's
// []byte arguments and *[]byte reply.
func Typed[Req, Resp any](fn func(ctx context.Context, req Req) (Resp, error)) Handler {
	return Func(func(ctx context.Context, b []byte) ([]byte, error) {
		var req Req
		if raw, ok := any(&req).(*[]byte); ok {
			*raw = b
		} else if err := CBOR.Unmarshal(b, &req); err != nil {
			return nil, Errorf(CodeBadRequest, "decoding request: %v", err)
		}
		resp, err := fn(ctx, req)
		if err != nil {
			return nil, err
		}
		if raw, ok := any(resp).([]byte); ok {
			return raw, nil
		}
		return CBOR.Marshal(resp)
	})
}

// Mux maps method names to handlers. It is safe for concurrent use, and
// handlers may be added while it serves: lookups take no lock.
type Mux struct {
	mu      sync.Mutex // serialises writers
	methods atomic.Pointer[map[string]entry]
}

type entry struct {
	call   Handler
	stream StreamHandler
}

// NewMux returns an empty Mux.
func NewMux() *Mux { return new(Mux) }

// Handle registers h for calls to method, replacing any handler before it.
// A nil h removes the method's call handler: calls to it are then answered
// with CodeUnknownMethod.
func (m *Mux) Handle(method string, h Handler) {
	m.set(method, func(e *entry) { e.call = h })
}

// HandleStream registers h for streams opened on method, replacing any
// before it. A nil h removes it: streams opened on the method are then
// refused with CodeUnknownMethod.
func (m *Mux) HandleStream(method string, h StreamHandler) {
	m.set(method, func(e *entry) { e.stream = h })
}

func (m *Mux) set(method string, change func(*entry)) {
	if method == "" || len(method) > maxMethodLen {
		panic("rpc: method name must be 1 to 255 bytes: " + method)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	old := m.methods.Load()
	next := make(map[string]entry, 1)
	if old != nil {
		for k, v := range *old {
			next[k] = v
		}
	}
	e := next[method]
	change(&e)
	if e.call == nil && e.stream == nil {
		delete(next, method)
	} else {
		next[method] = e
	}
	m.methods.Store(&next)
}

func (m *Mux) lookup(method []byte) entry {
	if m == nil {
		return entry{}
	}
	p := m.methods.Load()
	if p == nil {
		return entry{}
	}
	return (*p)[string(method)]
}
