package logport_test

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/tetherrpc/tether/incident/logport"
	"github.com/tetherrpc/tether/rpc"
)

// frame builds a raw frame.
func frame(t byte, payload ...byte) []byte {
	b := []byte{t, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(b[1:], uint32(len(payload)))
	return append(b, payload...)
}

func u64(n uint64) []byte { return binary.BigEndian.AppendUint64(nil, n) }

// subscribeFrame is a valid SUBSCRIBE for new entries.
var subscribeFrame = frame(0x01, append([]byte{1, 0}, make([]byte, 16)...)...)

func grantFrame(n uint64) []byte { return frame(0x02, u64(n)...) }

// readUntilError reads raw frames until an error frame, and returns its
// code and message; it fails if the stream ends without one, or if it does
// not end right after.
func readUntilError(t *testing.T, st *rpc.Stream) (logport.Code, string) {
	t.Helper()
	st.SetReadDeadline(time.Now().Add(10 * time.Second))
	var h [5]byte
	for {
		if _, err := io.ReadFull(st, h[:]); err != nil {
			t.Fatalf("the stream ended without an error frame: %v", err)
		}
		p := make([]byte, binary.BigEndian.Uint32(h[1:]))
		if _, err := io.ReadFull(st, p); err != nil {
			t.Fatalf("reading a frame: %v", err)
		}
		if h[0] == 0x85 {
			if _, err := st.Read(make([]byte, 1)); err != io.EOF {
				t.Fatalf("after the error frame: %v, want EOF", err)
			}
			return logport.Code(binary.BigEndian.Uint16(p)), string(p[2:])
		}
	}
}

// A subscriber that sends garbage, a credit overflow, or frames that have
// no place gets an error frame that says what it did, and its stream is
// closed; its connection, and the other subscribers, are not affected.
func TestMisbehavingSubscribers(t *testing.T) {
	e := newEnv(t)
	good, _ := e.connect()
	x := subscribe(t, logport.StreamFunc(good.OpenStream))
	bad, _ := e.connect()

	cases := []struct {
		name string
		send [][]byte
		want string
	}{
		{"garbage first", [][]byte{[]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n")}, "frame"},
		{"not subscribe first", [][]byte{grantFrame(10)}, "must start with a subscribe frame"},
		{"short subscribe", [][]byte{frame(0x01, 1, 0)}, "subscribe frame of 2 bytes"},
		{"bad version", [][]byte{frame(0x01, append([]byte{9, 0}, make([]byte, 16)...)...)}, "version 9"},
		{"bad mode", [][]byte{frame(0x01, append([]byte{1, 7}, make([]byte, 16)...)...)}, "mode 7"},
		{"huge frame", [][]byte{{0x01, 0xff, 0xff, 0xff, 0xff}}, "exceeds the limit"},
		{"grant 2^63", [][]byte{subscribeFrame, grantFrame(1 << 63)}, "exceeds the limit"},
		{"grant max uint64", [][]byte{subscribeFrame, grantFrame(^uint64(0))}, "exceeds the limit"},
		{"credit overflow", [][]byte{subscribeFrame, grantFrame(logport.DefaultMaxCredit), grantFrame(1)}, "exceeds the limit"},
		{"grant 0", [][]byte{subscribeFrame, grantFrame(0)}, "grant of 0"},
		{"short grant", [][]byte{subscribeFrame, frame(0x02, 1, 2, 3)}, "grant frame of 3 bytes"},
		{"garbage after subscribe", [][]byte{subscribeFrame, []byte("\x7fjunkjunkjunk")}, "type-0x7f frame of"},
		{"port's frame", [][]byte{subscribeFrame, frame(0x82, u64(1)...)}, "unexpected entry frame: only grants"},
		{"fetch on subscribe", [][]byte{subscribeFrame, frame(0x03, []byte("incident-x.json")...)}, "fetch frame"},
		{"truncated then closed", [][]byte{subscribeFrame, {0x02, 0, 0, 0, 8, 1, 2}, nil}, "middle of a frame"},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e.log.Info("between cases", zap.Int("case", i))
			st, err := bad.OpenStream(context.Background(), logport.MethodSubscribe)
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			for _, b := range tc.send {
				if b == nil {
					st.CloseWrite()
					continue
				}
				if _, err := st.Write(b); err != nil {
					t.Fatal(err)
				}
			}
			code, msg := readUntilError(t, st)
			if code != logport.CodeProtocol || !strings.Contains(msg, tc.want) {
				t.Fatalf("error frame (%v) %q, want a protocol error saying %q", code, msg, tc.want)
			}
			t.Logf("%s: %s", code, msg)
		})
	}
	if err := bad.Err(); err != nil {
		t.Fatalf("the misbehaving subscriber's connection died: %v", err)
	}
	// The good subscriber got every entry, without loss.
	for i := range cases {
		it := x.next(t)
		if it.loss.First != 0 || it.seq != uint64(i+1) {
			t.Fatalf("good subscriber: %+v", it)
		}
	}
	if st := e.port.Stats(); st.Misbehaved != uint64(len(cases)) || st.Subscribers != 1 {
		t.Fatalf("%+v", st)
	}
}

// Subscribe itself reports an error frame from the port as an *Error.
func TestSubscribeGetsError(t *testing.T) {
	e := newEnv(t, logport.WithMaxCredit(100))
	c, _ := e.connect()
	// A window above the port's limit is lowered to it, not refused.
	x := subscribe(t, logport.StreamFunc(c.OpenStream), logport.Window(1000))
	e.log.Info("ok")
	if it := x.next(t); it.seq != 1 {
		t.Fatalf("%+v", it)
	}
	e.port.Close()
	err := x.wait(t)
	var pe *logport.Error
	if !errors.As(err, &pe) || pe.Code != logport.CodeClosed || !errors.Is(err, logport.ErrClosed) {
		t.Fatalf("Subscribe returned %v", err)
	}
}

// A stream for a method the node does not serve (no port registered) is
// refused by the rpc layer, and Subscribe says so.
func TestUnknownMethod(t *testing.T) {
	e := newEnv(t)
	c, _ := e.connect()
	_, err := logport.Subscribe(context.Background(), logport.StreamFunc(func(ctx context.Context, _ string) (*rpc.Stream, error) {
		return c.OpenStream(ctx, "log.nothing")
	}), func(logport.Entry) {})
	if !errors.Is(err, rpc.ErrUnknownMethod) {
		t.Fatalf("%v", err)
	}
}
