package logport

import (
	"context"
	"encoding/binary"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/tetherrpc/tether/rpc"
)

// A subscriber that opens a stream and says nothing is cut off after the
// handshake timeout with an error frame, and holds no subscription.
func TestSilentSubscriberCutOff(t *testing.T) {
	defer func(d time.Duration) { handshakeTimeout = d }(handshakeTimeout)
	handshakeTimeout = 100 * time.Millisecond

	p := New()
	defer p.Close()
	mux := rpc.NewMux()
	p.Register(mux)
	ctx := context.Background()
	cn, sn := net.Pipe()
	served := make(chan *rpc.Conn, 1)
	go func() {
		s, _ := rpc.Server(ctx, sn, &rpc.Config{Mux: mux})
		served <- s
	}()
	c, err := rpc.Client(ctx, cn, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	defer (<-served).Close()

	for _, method := range []string{MethodSubscribe, MethodIncident} {
		st, err := c.OpenStream(ctx, method)
		if err != nil {
			t.Fatal(err)
		}
		st.SetReadDeadline(time.Now().Add(10 * time.Second))
		var h [frameHeader]byte
		if _, err := io.ReadFull(st, h[:]); err != nil || h[0] != frameError {
			t.Fatalf("%s: %v, frame type 0x%x", method, err, h[0])
		}
		b := make([]byte, binary.BigEndian.Uint32(h[1:]))
		io.ReadFull(st, b)
		if e := parseError(b); e.Code != CodeProtocol || !strings.Contains(e.Message, "within 100ms") {
			t.Fatalf("%s: %v", method, e)
		}
		st.Close()
	}
	if st := p.Stats(); st.Subscribers != 0 || st.Misbehaved != 2 {
		t.Fatalf("%+v", st)
	}
}
