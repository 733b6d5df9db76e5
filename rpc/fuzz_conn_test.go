package rpc

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/hashicorp/yamux"
)

// The codec path: what a peer's request bytes become in a typed handler.

// fuzzReq is a request type of the kind handlers take: strings, raw bytes,
// numbers, nested structs, slices, maps, pointers and an interface.
type fuzzReq struct {
	Key     string
	Data    []byte
	N       int64
	U       uint16
	F       float64
	OK      bool
	Tags    []string
	Meta    map[string]int
	Parts   []fuzzPart
	Next    *fuzzReq
	Any     any
	Arr     [4]byte
	Big     *big.Int
	private int // the decoder must leave it alone
}

type fuzzPart struct {
	I    int
	Name string
}

// The bound on what one request may make the decoder allocate, per byte of
// input, over a fixed allowance. The decoder's limits (depth 32, 131072
// elements per array or map) keep it linear: every element needs at least
// one byte, so a request of n bytes makes at most n elements; the largest
// element here is a fuzzPart or an interface value in a map (about 100
// bytes with the map's own overhead).
const (
	allocPerByte   = 512
	allocAllowance = 1 << 20
)

// FuzzCodec decodes arbitrary bytes as a typed request through rpc.Typed
// (and as a reply through the same codec): it must never panic, must turn
// what does not decode into CodeBadRequest (never another error, never a
// crash of the connection), and must allocate at most linearly in the
// size of the input. What decodes must encode again, and decode to the
// same encoding (CBOR's core deterministic form is canonical).
func FuzzCodec(f *testing.F) {
	enc := func(v any) []byte {
		b, err := CBOR.Marshal(v)
		if err != nil {
			f.Fatal(err)
		}
		return b
	}
	f.Add(enc(fuzzReq{Key: "k", Data: []byte("v"), N: -7, Tags: []string{"a"}, Meta: map[string]int{"x": 1},
		Parts: []fuzzPart{{1, "p"}}, Next: &fuzzReq{Key: "n"}, Any: map[string]any{"z": []any{1, "s"}}, Big: big.NewInt(1 << 62)}))
	f.Add(enc(map[string]any{"Key": 5}))                      // wrong type for a field
	f.Add(enc([]int{1, 2, 3}))                                // an array for a struct
	f.Add([]byte{0x9b, 0, 0, 0, 0, 0, 0x02, 0, 0})            // an array claiming 131072 elements, with none
	f.Add([]byte{0x5b, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0})   // a byte string claiming 4 GiB
	f.Add([]byte{0xbf, 0x63, 'K', 'e', 'y', 0x61, 'v', 0xff}) // an indefinite-length map
	f.Add([]byte{0xc2, 0x49, 1, 0, 0, 0, 0, 0, 0, 0, 0})      // a bignum tag
	f.Add(bytes.Repeat([]byte{0x81}, 40))                     // nesting beyond the limit
	f.Add([]byte{0xa2, 0x61, 'N', 0x01, 0x61, 'N', 0x02})     // a duplicate key
	f.Add([]byte{})

	h := Typed(func(ctx context.Context, req fuzzReq) (fuzzReq, error) { return req, nil })
	// A []byte reply passes raw, as Call's []byte arguments do; so an
	// echo of a decoded byte string is not CBOR, and is not decoded again.
	var rawReply bool
	hAny := Typed(func(ctx context.Context, req any) (any, error) {
		_, rawReply = req.([]byte)
		return req, nil
	})
	hParts := Typed(func(ctx context.Context, req []fuzzPart) (int, error) { return len(req), nil })
	ctx := context.Background()
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > 1<<16 {
			return
		}
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		before := ms.TotalAlloc

		for i, hh := range []Handler{h, hAny, hParts} {
			rawReply = false
			resp, err := hh.ServeRPC(ctx, data)
			if err != nil {
				var re *RemoteError
				if !errors.As(err, &re) || re.Code != CodeBadRequest {
					t.Fatalf("a request that does not decode gave %T %v, want a *RemoteError with CodeBadRequest", err, err)
				}
				continue
			}
			if i == 2 || rawReply {
				continue // its reply is a count, or raw bytes: not a request
			}
			// The handler echoed what it decoded: its encoding must be
			// canonical, so a second round gives the same bytes.
			again, err := hh.ServeRPC(ctx, resp)
			if err != nil {
				t.Fatalf("a reply the codec encoded does not decode: %v\n% x", err, resp)
			}
			if !bytes.Equal(again, resp) {
				t.Fatalf("encoding is not stable:\n% x\n% x", resp, again)
			}
		}
		var reply fuzzReq
		if err := decodeReply(CBOR, data, &reply); err != nil && !bytes.Contains([]byte(err.Error()), []byte("decoding reply")) {
			t.Fatalf("reply decode error not wrapped: %v", err)
		}

		runtime.ReadMemStats(&ms)
		if got, bound := ms.TotalAlloc-before, uint64(allocAllowance+allocPerByte*len(data)); got > bound {
			t.Fatalf("decoding %d bytes allocated %d bytes (bound %d)", len(data), got, bound)
		}
	})
}

// The connection level: arbitrary bytes from a peer after a valid hello.

// connFuzzTimeout bounds each step of one execution; a step that takes
// longer is a hang.
const connFuzzTimeout = 3 * time.Second

// execBound bounds one whole execution of FuzzConn.
const execBound = 20 * time.Second

// FuzzConn feeds arbitrary bytes into a real Server connection over
// net.Pipe, after a valid hello, in one of three places chosen by the
// first byte: raw under yamux (mode 0), on the control stream (mode 1), or
// on a bulk stream the peer opens (mode 2). Whatever the bytes, the
// server must end with an error (a *DeadError, or a handshake error) or
// keep serving: a fresh stream opened after them is answered (accepted, or
// refused with an error frame). It must never panic or hang: once the peer
// goes away the connection dies, and Close returns, each within a bound.
func FuzzConn(f *testing.F) {
	ctrl := func(frames ...[]byte) []byte { return append([]byte{1}, bytes.Join(frames, nil)...) }
	bulk := func(frames ...[]byte) []byte { return append([]byte{2}, bytes.Join(frames, nil)...) }
	f.Add(ctrl(appendRequest(nil, kindRequest, 1, time.Second, "echo", []byte("hi"))))
	f.Add(ctrl(appendRequest(nil, kindRequest, 1, 0, "hold", nil), appendHeader(nil, kindCancel, 0, 1)))
	f.Add(ctrl(appendHeader(nil, 5, 0, 9), appendHeader(nil, 6, 0, 1))) // version 1's ping and pong
	f.Add(ctrl(appendHeader(nil, kindResponse, 0, 7)))
	f.Add(ctrl(append(appendHeader(nil, kindGoAway, 3, 0), "bye"...)))
	f.Add(ctrl(appendError(nil, 1, CodeApplication, "no")))
	f.Add(ctrl(appendRequest(nil, kindRequest, 1, 0, "hold", nil), appendRequest(nil, kindRequest, 1, 0, "hold", nil)))
	f.Add(ctrl(appendHeader(nil, kindRequest, 1<<30, 1)))
	f.Add(ctrl([]byte{1, 0, 0, 0, 0, 0, 0, 20, 0, 0, 0, 0, 0, 0, 0, 1}))
	f.Add(bulk(appendRequest(nil, kindStreamOpen, 1, 0, "sink", nil), []byte("payload")))
	f.Add(bulk(appendRequest(nil, kindStreamOpen, 1, 0, "nope", nil)))
	f.Add(bulk(appendRequest(nil, kindRequest, 1, 0, "sink", nil)))
	f.Add(bulk(appendRequest(nil, kindStreamOpen, 1, 0, "sink", []byte("args"))))
	f.Add([]byte{0, 0, 1, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0})             // a yamux SYN for stream 1, raw
	f.Add([]byte{0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff}) // a yamux data frame of 4 GiB
	f.Add([]byte{0, 9, 9, 9, 9})                                     // not yamux at all

	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) == 0 || len(data) > 1<<16 {
			return
		}
		mode, payload := data[0]%3, data[1:]
		// Every step below has its own bound; this catches what slips
		// through them, with the goroutines' stacks, as a crash the
		// fuzzer keeps.
		watchdog := time.AfterFunc(execBound, func() {
			buf := make([]byte, 1<<20)
			buf = buf[:runtime.Stack(buf, true)]
			panic(fmt.Sprintf("FuzzConn: one execution ran over %v (mode %d, %d bytes); goroutines:\n%s", execBound, mode, len(payload), buf))
		})
		defer watchdog.Stop()
		runConnFuzz(t, mode, payload)
	})
}

func connFuzzMux() *Mux {
	m := NewMux()
	m.Handle("echo", Func(func(ctx context.Context, req []byte) ([]byte, error) { return req, nil }))
	m.Handle("hold", Func(func(ctx context.Context, _ []byte) ([]byte, error) {
		<-ctx.Done()
		return nil, ctx.Err()
	}))
	m.Handle("panic", Func(func(ctx context.Context, _ []byte) ([]byte, error) { panic("handler panic") }))
	m.HandleStream("sink", StreamFunc(func(ctx context.Context, s *Stream) error {
		_, err := io.Copy(io.Discard, s)
		return err
	}))
	m.HandleStream("echo", StreamFunc(func(ctx context.Context, s *Stream) error {
		_, err := io.Copy(s, s)
		return err
	}))
	return m
}

func runConnFuzz(t *testing.T, mode byte, payload []byte) {
	cn, sn := net.Pipe()
	defer cn.Close()
	cfg := &Config{
		ID:                 "server",
		Mux:                connFuzzMux(),
		HandshakeTimeout:   200 * time.Millisecond,
		MaxMessageSize:     1 << 16,
		MaxConcurrentCalls: 8,
	}
	res := serve(sn, cfg)
	cn.SetDeadline(time.Now().Add(connFuzzTimeout))
	if _, err := cn.Write((&hello{version: ProtocolVersion, maxMessage: 1 << 16, maxCalls: 8, id: "fuzzer"}).marshal()); err != nil {
		t.Fatalf("hello: %v", err)
	}
	if _, err := readHello(cn); err != nil {
		t.Fatalf("server's hello: %v", err)
	}
	cn.SetDeadline(time.Time{})

	var sess *yamux.Session
	if mode == 0 {
		go io.Copy(io.Discard, cn) // a pipe blocks the server's writes until read
		go func() {
			cn.SetWriteDeadline(time.Now().Add(connFuzzTimeout))
			cn.Write(payload)
		}()
	} else {
		ycfg := yamux.DefaultConfig()
		ycfg.LogOutput = io.Discard
		ycfg.EnableKeepAlive = false
		ycfg.StreamOpenTimeout = 0
		var err error
		if sess, err = yamux.Client(cn, ycfg); err != nil {
			t.Fatal(err)
		}
		defer sess.Close()
		ctl, err := sess.OpenStream()
		if err != nil {
			t.Fatal(err)
		}
		target := ctl
		if mode == 2 {
			if target, err = sess.OpenStream(); err != nil {
				t.Fatal(err)
			}
		}
		go io.Copy(io.Discard, ctl) // answers on the control stream: read and dropped
		target.SetWriteDeadline(time.Now().Add(connFuzzTimeout))
		if mode == 2 {
			go io.Copy(io.Discard, target)
		}
		go target.Write(payload)
	}

	var r serverResult
	select {
	case r = <-res:
	case <-time.After(connFuzzTimeout):
		t.Fatalf("mode %d: the server neither started nor refused the connection within %v", mode, connFuzzTimeout)
	}
	if r.err != nil {
		if !errors.Is(r.err, ErrHandshake) {
			t.Fatalf("mode %d: the server failed with an error that is not ErrHandshake: %v", mode, r.err)
		}
		return
	}
	srv := r.c
	defer func() {
		done := make(chan struct{})
		go func() { srv.Close(); close(done) }()
		select {
		case <-done:
		case <-time.After(connFuzzTimeout):
			t.Fatalf("mode %d: Close did not return within %v", mode, connFuzzTimeout)
		}
	}()

	if sess != nil {
		// Alive or dead, but never stuck: a fresh stream is answered, or
		// the connection is dead.
		if err := probeStream(sess, srv); err != nil {
			t.Fatalf("mode %d: %v", mode, err)
		}
	}
	// The peer goes away: the connection must die, with a *DeadError.
	if sess != nil {
		sess.Close()
	}
	cn.Close()
	select {
	case <-srv.Done():
	case <-time.After(connFuzzTimeout):
		t.Fatalf("mode %d: the connection did not die within %v of its peer going away", mode, connFuzzTimeout)
	}
	var de *DeadError
	if err := srv.Err(); !errors.As(err, &de) || !errors.Is(err, ErrDeadReference) {
		t.Fatalf("mode %d: dead with %T %v, want a *DeadError", mode, err, err)
	}
}

// probeStream opens a stream to the "echo" stream handler and waits for
// the server's answer to its stream-open. Any answer is fine (accepted,
// or refused because the fuzzer filled the call limit); so is a dead
// connection. A server that says nothing while alive is stuck.
func probeStream(sess *yamux.Session, srv *Conn) error {
	s, err := sess.OpenStream()
	if err != nil {
		return waitDead(srv, fmt.Errorf("opening a probe stream: %w", err))
	}
	defer s.Close()
	s.SetDeadline(time.Now().Add(connFuzzTimeout))
	if _, err := s.Write(appendRequest(nil, kindStreamOpen, 1<<40, time.Second, "echo", nil)); err != nil {
		return waitDead(srv, fmt.Errorf("writing a probe stream-open: %w", err))
	}
	var hb [headerSize]byte
	h, _, err := readFrame(s, hb[:], 0)
	if err != nil {
		return waitDead(srv, fmt.Errorf("no answer to a probe stream-open: %w", err))
	}
	if h.id != 1<<40 || (h.kind != kindResponse && h.kind != kindError) {
		return fmt.Errorf("answer to the probe stream-open: %v frame for %d", h.kind, h.id)
	}
	return nil
}

// waitDead excuses a failed probe if the connection is dead (or dies
// within the bound): only a live server that does not answer is stuck.
func waitDead(srv *Conn, err error) error {
	select {
	case <-srv.Done():
		return nil
	case <-time.After(connFuzzTimeout):
		return fmt.Errorf("the connection is alive but stuck: %w", err)
	}
}
