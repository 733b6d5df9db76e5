package hostile

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap/zapcore"

	"github.com/tetherrpc/tether/internal/ttest"
	"github.com/tetherrpc/tether/peer"
	"github.com/tetherrpc/tether/rpc"
)

// Garbage, in each place a peer can send it: each gets a clear error on
// that connection only.
func TestHostileGarbage(t *testing.T) {
	t.Run("instead of a hello", func(t *testing.T) {
		r := newRig(t, rpc.Config{})
		nc := dialRaw(t, r.v.Addr().String())
		nc.Write([]byte("GET / HTTP/1.1\r\nHost: tether\r\n\r\n"))
		nc.SetReadDeadline(time.Now().Add(5 * time.Second))
		refusal, err := readHello(nc)
		if err != nil || refusal.status != 1 || !strings.Contains(refusal.id, "not a tether peer") {
			t.Fatalf("refusal %+v, %v", refusal, err)
		}
		readEOF(t, nc, 5*time.Second)
		ttest.WaitFor(t, 10*time.Second, func() bool {
			return countLogs(r.logs, zapcore.InfoLevel, "handshake refused", "not a tether peer") == 1
		}, "the reason logged at Info")
		r.gWorks(t)
	})
	t.Run("under yamux", func(t *testing.T) {
		r := newRig(t, rpc.Config{})
		nc := dialRaw(t, r.v.Addr().String())
		nc.Write(encodeHello(rpc.ProtocolVersion, 0, 1<<20, 16, "garbler"))
		if _, err := readHello(nc); err != nil {
			t.Fatal(err)
		}
		nc.Write([]byte("this is not yamux at all, not even close"))
		readEOF(t, nc, 5*time.Second)
		r.gWorks(t)
	})
	t.Run("on the control stream", func(t *testing.T) {
		r := newRig(t, rpc.Config{})
		h := connectRaw(t, dialRaw(t, r.v.Addr().String()), "garbler")
		hv := r.vev.Next(t, peer.Connected, 5*time.Second).Peer
		h.ctrl.Write([]byte{42, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1})
		d := r.vev.Next(t, peer.Disconnected, 5*time.Second)
		if d.Peer != hv || !errors.Is(d.Cause, rpc.ErrProtocolViolation) || !strings.Contains(d.Cause.Error(), "unknown frame kind 42") {
			t.Fatalf("eviction %+v, cause %v", d, d.Cause)
		}
		r.v.Logger().Sync()
		if n := countLogs(r.logs, zapcore.ErrorLevel, "protocol violation: connection closed", "unknown frame kind 42"); n != 1 {
			t.Errorf("%d Error lines for the violation, want 1", n)
		}
		r.gWorks(t)
	})
}

// Oversize frames: a frame over the victim's limit is a protocol violation
// (that connection only), and so is a yamux frame beyond its window.
func TestHostileOversizeFrames(t *testing.T) {
	cases := []struct {
		name  string
		bytes []byte
		want  string
	}{
		{"request over the message limit", encodeFrame(kindRequest, 1, nil)[:4], "exceeds the limit"},
		{"error message over 4 KiB", encodeFrame(kindError, 1, make([]byte, 8192)), "exceeds the limit"},
		{"goaway reason over 4 KiB", encodeFrame(kindGoAway, 0, make([]byte, 8192)), "exceeds the limit"},
		{"cancel with a payload", encodeFrame(kindCancel, 1, []byte("x")), "exceeds the limit of 0"},
		{"an unknown kind", encodeFrame(6, 1, nil), "unknown frame kind 6"},
	}
	// The first: a header announcing 1 GiB, and no payload.
	cases[0].bytes = binary.BigEndian.AppendUint32(cases[0].bytes, 1<<30)
	cases[0].bytes = binary.BigEndian.AppendUint64(cases[0].bytes, 1)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, rpc.Config{MaxMessageSize: 64 << 10})
			h := connectRaw(t, dialRaw(t, r.v.Addr().String()), "oversize")
			hv := r.vev.Next(t, peer.Connected, 5*time.Second).Peer
			go h.ctrl.Write(tc.bytes)
			d := r.vev.Next(t, peer.Disconnected, 5*time.Second)
			if d.Peer != hv || !errors.Is(d.Cause, rpc.ErrProtocolViolation) || !strings.Contains(d.Cause.Error(), tc.want) {
				t.Fatalf("eviction cause %v, want a protocol violation saying %q", d.Cause, tc.want)
			}
			r.gWorks(t)
		})
	}
	t.Run("yamux frame beyond the window", func(t *testing.T) {
		r := newRig(t, rpc.Config{})
		h := connectRaw(t, dialRaw(t, r.v.Addr().String()), "oversize")
		hv := r.vev.Next(t, peer.Connected, 5*time.Second).Peer
		// Stream 3, opened (SYN) with a data frame of 16 MiB: far over
		// the 256 KiB window.
		h.nc.Write(yamuxHeader(0, 1, 3, 16<<20))
		h.nc.Write(make([]byte, 64<<10))
		select {
		case <-hv.Done():
			t.Logf("evicted: %v", hv.Err())
			if !errors.Is(hv.Err(), rpc.ErrDeadReference) {
				t.Errorf("cause %v", hv.Err())
			}
		case <-time.After(5 * time.Second):
			t.Fatal("a yamux frame past the window did not kill the connection")
		}
		r.gWorks(t)
	})
}

// Answers to calls never made (and pongs to pings never sent) are protocol
// violations: that connection is closed, with one Error line. An answer
// that arrives after its caller gave up is not: it is dropped and counted.
func TestHostileAnswersCallsNeverMade(t *testing.T) {
	cases := []struct {
		name  string
		frame []byte
		want  string
	}{
		{"response", encodeFrame(kindResponse, 99, []byte("surprise")), "never made"},
		{"error", append(encodeFrame(kindError, 5, nil)[:16], 0, 1, 'x'), "never made"},
		{"cancel", encodeFrame(kindCancel, 77, nil), ""}, // a cancel for nothing is harmless
	}
	// The error frame's length field: 3 bytes of payload.
	binary.BigEndian.PutUint32(cases[1].frame[4:8], 3)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, rpc.Config{})
			h := connectRaw(t, dialRaw(t, r.v.Addr().String()), "liar")
			hv := r.vev.Next(t, peer.Connected, 5*time.Second).Peer
			go io.Copy(io.Discard, h.ctrl)
			h.ctrl.Write(tc.frame)
			if tc.want == "" {
				time.Sleep(200 * time.Millisecond)
				if hv.Err() != nil {
					t.Fatalf("a cancel for no call evicted the peer: %v", hv.Err())
				}
				r.gWorks(t)
				return
			}
			d := r.vev.Next(t, peer.Disconnected, 5*time.Second)
			if d.Peer != hv || !errors.Is(d.Cause, rpc.ErrProtocolViolation) || !strings.Contains(d.Cause.Error(), tc.want) {
				t.Fatalf("eviction cause %v, want a violation saying %q", d.Cause, tc.want)
			}
			r.v.Logger().Sync()
			if n := countLogs(r.logs, zapcore.ErrorLevel, "protocol violation: connection closed", tc.want); n != 1 {
				t.Errorf("%d Error lines, want 1", n)
			}
			r.gWorks(t)
		})
	}
	t.Run("late answer", func(t *testing.T) {
		r := newRig(t, rpc.Config{})
		h := connectRaw(t, dialRaw(t, r.v.Addr().String()), "slow")
		hv := r.vev.Next(t, peer.Connected, 5*time.Second).Peer
		reqs := make(chan frameMsg, 16)
		h.readFrames(func(f frameMsg) {
			if f.kind == kindRequest {
				reqs <- f
			}
		})
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		if err := hv.Call(ctx, "anything", nil, nil); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("call to a peer that does not answer: %v", err)
		}
		f := <-reqs
		h.ctrl.Write(encodeFrame(kindResponse, f.id, []byte("too late")))
		ttest.WaitFor(t, 10*time.Second, func() bool { return hv.Conn().Stats().LateResponses == 1 }, "the late answer counted")
		if hv.Err() != nil {
			t.Fatalf("a late answer evicted the peer: %v", hv.Err())
		}
	})
}

// A peer that never reads: the victim's answers to it (1 MiB each) back
// up behind the peer's closed window. Its writes must not block anyone
// else, its callers must still get their deadlines, and what it costs the
// victim must stay bounded: a peer that sends a request every few
// milliseconds and reads nothing must not make the victim hold its
// answers without limit.
func TestHostileNeverReads(t *testing.T) {
	var (
		r      *rig
		h      *rawPeer
		hv     *peer.Peer
		ms     runtime.MemStats
		heap0  uint64
		sent   atomic.Int64
		nextID atomic.Uint64
	)
	ask := func() error {
		// A victim that stops reading a peer whose answers pile up is
		// right to: then this write times out.
		h.ctrl.SetWriteDeadline(time.Now().Add(time.Second))
		_, err := h.ctrl.Write(encodeRequest(kindRequest, nextID.Add(1), 0, "big", nil))
		if err == nil {
			sent.Add(1)
		}
		return err
	}
	floorHolds(t, "a peer that never reads, asking for 1 MiB answers", func() float64 {
		if h != nil {
			h.sess.Close() // the last attempt's
		}
		r = newRig(t, rpc.Config{})
		h = connectRaw(t, dialRaw(t, r.v.Addr().String()), "deaf") // its session reads TCP, but nothing reads the stream
		hv = r.vev.Next(t, peer.Connected, 5*time.Second).Peer
		runtime.GC()
		runtime.ReadMemStats(&ms)
		heap0 = ms.HeapAlloc
		sent.Store(0)
		return r.underLoad(t, "a peer that never reads, asking for 1 MiB answers", func(stop <-chan struct{}, ready func()) {
			ready()
			tick := time.NewTicker(5 * time.Millisecond)
			defer tick.Stop()
			for {
				select {
				case <-stop:
					return
				case <-tick.C:
				}
				if ask() != nil {
					return
				}
			}
		})
	})
	// Go on to 256 requests, a request every 5 ms: a peer that keeps
	// talking is never idle, so liveness sees it as alive.
	for sent.Load() < 256 && hv.Err() == nil {
		if ask() != nil {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	// Calls from V to the deaf peer still end at their deadlines.
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	t0 := time.Now()
	err := hv.Call(ctx, "anything", nil, nil)
	cancel()
	if over := time.Since(t0) - 200*time.Millisecond; !errors.Is(err, context.DeadlineExceeded) || over > 100*time.Millisecond {
		t.Errorf("a call from V to the deaf peer: %v, %v past its deadline", err, over)
	}
	runtime.GC()
	runtime.ReadMemStats(&ms)
	grew := int64(ms.HeapAlloc) - int64(heap0)
	t.Logf("the deaf peer asked for %d MiB of answers; V's heap grew by %d MiB; the peer is %v",
		sent.Load(), grew>>20, func() any {
			if hv.Err() != nil {
				return hv.Err()
			}
			return "still connected"
		}())
	const bound = 64 << 20
	if grew > bound && hv.Err() == nil {
		t.Errorf("a peer that reads nothing made V hold %d MiB of answers for it (bound %d MiB), and is still connected: "+
			"the answers queue without limit behind its closed window", grew>>20, bound>>20)
	}
	r.gWorks(t)
	h.sess.Close()
}

// A peer that opens a stream and sends nothing on it has that stream
// closed after the handshake timeout; the connection itself lives on.
func TestHostileSilentStream(t *testing.T) {
	const timeout = 300 * time.Millisecond
	r := newRig(t, rpc.Config{HandshakeTimeout: timeout})
	h := connectRaw(t, dialRaw(t, r.v.Addr().String()), "mute")
	hv := r.vev.Next(t, peer.Connected, 5*time.Second).Peer
	h.readFrames(func(frameMsg) {})
	s, err := h.sess.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	s.SetReadDeadline(t0.Add(5 * time.Second))
	_, err = io.Copy(io.Discard, s)
	took := time.Since(t0)
	if err != nil {
		t.Fatalf("the silent stream was not closed: %v", err)
	}
	t.Logf("silent stream closed after %v", took)
	if took > timeout+ttest.Scaled(time.Second) {
		t.Errorf("silent stream closed after %v, want about %v", took, timeout)
	}
	if hv.Err() != nil {
		t.Errorf("a silent stream evicted its peer: %v", hv.Err())
	}
	r.gWorks(t)
}
