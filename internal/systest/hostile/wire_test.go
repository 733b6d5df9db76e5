package hostile

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/tetherrpc/tether/rpc"
)

// ---- the wire format, from rpc/spec.md ----

const (
	kindRequest    = 1
	kindResponse   = 2
	kindError      = 3
	kindCancel     = 4
	kindGoAway     = 7
	kindStreamOpen = 8
)

// encodeHello is a hello (status 0) or refusal (status 1), section 1.
func encodeHello(version uint16, status byte, maxMessage, maxCalls uint32, id string) []byte {
	b := []byte("TTHR")
	b = binary.BigEndian.AppendUint16(b, version)
	b = append(b, status, 0)
	b = binary.BigEndian.AppendUint32(b, maxMessage)
	b = binary.BigEndian.AppendUint32(b, maxCalls)
	b = binary.BigEndian.AppendUint16(b, uint16(len(id)))
	return append(b, id...)
}

type helloMsg struct {
	version  uint16
	status   byte
	maxMsg   uint32
	maxCalls uint32
	id       string
}

func readHello(r io.Reader) (helloMsg, error) {
	var b [18]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return helloMsg{}, err
	}
	if string(b[:4]) != "TTHR" {
		return helloMsg{}, fmt.Errorf("bad magic %q", b[:4])
	}
	id := make([]byte, binary.BigEndian.Uint16(b[16:18]))
	if _, err := io.ReadFull(r, id); err != nil {
		return helloMsg{}, err
	}
	return helloMsg{
		version:  binary.BigEndian.Uint16(b[4:6]),
		status:   b[6],
		maxMsg:   binary.BigEndian.Uint32(b[8:12]),
		maxCalls: binary.BigEndian.Uint32(b[12:16]),
		id:       string(id),
	}, nil
}

// encodeFrame is a control-stream frame, section 2.
func encodeFrame(kind byte, id uint64, payload []byte) []byte {
	b := []byte{kind, 0, 0, 0}
	b = binary.BigEndian.AppendUint32(b, uint32(len(payload)))
	b = binary.BigEndian.AppendUint64(b, id)
	return append(b, payload...)
}

// encodeRequest is a request (or, with kind 8, a stream-open) frame.
func encodeRequest(kind byte, id uint64, timeout time.Duration, method string, args []byte) []byte {
	p := binary.BigEndian.AppendUint64(nil, uint64(timeout))
	p = append(p, byte(len(method)))
	p = append(p, method...)
	return encodeFrame(kind, id, append(p, args...))
}

type frameMsg struct {
	kind    byte
	id      uint64
	payload []byte
}

func readFrame(r io.Reader) (frameMsg, error) {
	var h [16]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return frameMsg{}, err
	}
	p := make([]byte, binary.BigEndian.Uint32(h[4:8]))
	if _, err := io.ReadFull(r, p); err != nil {
		return frameMsg{}, err
	}
	return frameMsg{kind: h[0], id: binary.BigEndian.Uint64(h[8:16]), payload: p}, nil
}

// errCode is the code of an error frame's payload.
func (f frameMsg) errCode() rpc.Code { return rpc.Code(binary.BigEndian.Uint16(f.payload)) }

// yamuxHeader is a raw yamux frame header (yamux's spec.md).
func yamuxHeader(typ byte, flags uint16, stream, length uint32) []byte {
	b := []byte{0, typ}
	b = binary.BigEndian.AppendUint16(b, flags)
	b = binary.BigEndian.AppendUint32(b, stream)
	return binary.BigEndian.AppendUint32(b, length)
}

// ---- the hostile peer ----

// dialRaw opens a raw TCP connection to addr, closed at the end of the test.
func dialRaw(t testing.TB, addr string) net.Conn {
	t.Helper()
	nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	return nc
}

// rawPeer is a hostile peer past the handshake: a yamux session and the
// control stream, which it drives by hand.
type rawPeer struct {
	id   string
	nc   net.Conn
	sess *yamux.Session
	ctrl *yamux.Stream
}

// connectRaw does the dialer's handshake by hand over nc (a TCP or TLS
// connection), claiming id, and opens the control stream.
func connectRaw(t testing.TB, nc net.Conn, id string) *rawPeer {
	t.Helper()
	nc.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := nc.Write(encodeHello(rpc.ProtocolVersion, 0, 4<<20, 1024, id)); err != nil {
		t.Fatal(err)
	}
	h, err := readHello(nc)
	if err != nil || h.status != 0 {
		t.Fatalf("the victim's hello: %+v %v", h, err)
	}
	nc.SetDeadline(time.Time{})
	cfg := yamux.DefaultConfig()
	cfg.LogOutput = io.Discard
	cfg.EnableKeepAlive = false
	sess, err := yamux.Client(nc, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sess.Close() })
	ctrl, err := sess.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	return &rawPeer{id: id, nc: nc, sess: sess, ctrl: ctrl}
}

// readFrames reads the control stream until it ends, in a goroutine of
// its own, and hands every frame to other. (The victim's probes are yamux
// pings: the raw peer's yamux answers them, so liveness sees a live peer.)
func (h *rawPeer) readFrames(other func(frameMsg)) {
	go func() {
		br := bufio.NewReader(h.ctrl)
		for {
			f, err := readFrame(br)
			if err != nil {
				return
			}
			other(f)
		}
	}()
}
