package rpc

import (
	"context"
	"encoding/binary"
	"io"
	"testing"
	"time"
)

// yamuxFrame builds one yamux frame: a data frame carries body.
func yamuxFrame(typ byte, flags uint16, id uint32, body []byte) []byte {
	b := make([]byte, yamuxHeaderSize, yamuxHeaderSize+len(body))
	b[1] = typ
	binary.BigEndian.PutUint16(b[2:], flags)
	binary.BigEndian.PutUint32(b[4:], id)
	length := uint32(len(body))
	if typ == yamuxTypeWindow {
		length = 256 << 10 // a window delta, no body
	}
	binary.BigEndian.PutUint32(b[8:], length)
	return append(b, body...)
}

// The scanner finds every stream opening however the bytes are split, and
// is not fooled by SYN-like bytes inside a data frame's body.
func TestFrameScannerCountsSYNs(t *testing.T) {
	fake := yamuxFrame(yamuxTypeWindow, yamuxFlagSYN, 3, nil) // inside a body: not a frame
	var stream []byte
	stream = append(stream, yamuxFrame(yamuxTypeWindow, yamuxFlagSYN, yamuxCtrlStream, nil)...) // control stream: not counted
	stream = append(stream, yamuxFrame(yamuxTypeData, 0, 1, append(fake, 1, 2, 3))...)
	stream = append(stream, yamuxFrame(yamuxTypeWindow, yamuxFlagSYN, 3, nil)...)
	stream = append(stream, yamuxFrame(yamuxTypeData, yamuxFlagSYN, 5, []byte("hello"))...)
	stream = append(stream, yamuxFrame(2, 0, 0, nil)[:yamuxHeaderSize]...) // a ping
	stream = append(stream, yamuxFrame(yamuxTypeWindow, 0, 3, nil)...)
	for chunk := 1; chunk <= len(stream); chunk++ {
		var f frameScanner
		syns := 0
		for p := stream; len(p) > 0; {
			k := min(chunk, len(p))
			syns += f.scan(p[:k], func(uint32) {}).syns
			p = p[k:]
		}
		if syns != 2 || f.n != 0 || f.skip != 0 {
			t.Fatalf("reads of %d bytes: %d SYNs (want 2), %d header bytes held, %d to skip", chunk, syns, f.n, f.skip)
		}
	}
}

// An idle connection runs no goroutine in Accept; a stream the peer opens
// starts one, which leaves after acceptIdle, and the next stream still
// gets through.
func TestAcceptorRunsOnlyWhileStreamsCome(t *testing.T) {
	mux := NewMux()
	mux.HandleStream("copy", StreamFunc(func(ctx context.Context, s *Stream) error {
		_, err := io.Copy(s, s)
		return err
	}))
	client, server := pair(t, "tcp", nil, &Config{Mux: mux})
	running := func() bool {
		server.acc.mu.Lock()
		defer server.acc.mu.Unlock()
		return server.acc.running
	}
	if running() {
		t.Fatal("an accepting goroutine runs on a connection whose peer opened no stream")
	}
	roundTrip := func() {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s, err := client.OpenStream(ctx, "copy")
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		if _, err := s.Write([]byte("share")); err != nil {
			t.Fatal(err)
		}
		s.CloseWrite()
		got, err := io.ReadAll(s)
		if err != nil || string(got) != "share" {
			t.Fatalf("stream echoed %q, %v", got, err)
		}
	}
	roundTrip()
	if !running() {
		t.Fatal("no accepting goroutine right after a stream")
	}
	waitFor(t, func() bool { return !running() }, "the accepting goroutine to leave after the last stream")
	roundTrip() // a new goroutine accepts it
}
