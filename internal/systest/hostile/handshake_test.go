package hostile

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap/zapcore"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/internal/ttest"
	"github.com/tetherrpc/tether/internal/ttest/ttnode"
	"github.com/tetherrpc/tether/liveness"
	"github.com/tetherrpc/tether/peer"
	"github.com/tetherrpc/tether/rpc"
)

// ---- the tests ----

// A peer that connects and sends nothing is cut off at the handshake
// timeout, with a clear reason logged (at Info: strangers must not make
// incidents), and costs the other peers nothing. Beyond the limit of
// handshakes in progress (512), new connections are closed at once, and
// the node accepts peers again once the silent ones are cut off.
func TestHostileSilentDialer(t *testing.T) {
	const timeout = 300 * time.Millisecond
	const silent = 200
	what := fmt.Sprintf("%d silent dialers", silent)
	floorHolds(t, what, func() float64 {
		r := newRig(t, rpc.Config{HandshakeTimeout: timeout})
		addr := r.v.Addr().String()
		var cut []time.Duration
		var mu sync.Mutex
		rise := r.underLoad(t, what, func(stop <-chan struct{}, ready func()) {
			ready()
			var wg sync.WaitGroup
			for range silent {
				wg.Add(1)
				go func() {
					defer wg.Done()
					nc, err := net.Dial("tcp", addr)
					if err != nil {
						t.Error(err)
						return
					}
					defer nc.Close()
					t0 := time.Now()
					nc.SetReadDeadline(t0.Add(10 * time.Second))
					_, err = io.Copy(io.Discard, nc)
					mu.Lock()
					cut = append(cut, time.Since(t0))
					mu.Unlock()
					if err != nil && !isReset(err) {
						t.Errorf("a silent dialer was not cut off: %v", err)
					}
				}()
			}
			wg.Wait()
			<-stop
		})
		slices.Sort(cut)
		t.Logf("silent dialers cut off after %v (first) to %v (last); timeout %v", cut[0], cut[len(cut)-1], timeout)
		if cut[0] < timeout*8/10 || cut[len(cut)-1] > timeout+ttest.Scaled(time.Second) {
			t.Errorf("silent dialers cut off after %v to %v, want about %v", cut[0], cut[len(cut)-1], timeout)
		}
		r.v.Logger().Sync()
		ttest.WaitFor(t, 10*time.Second, func() bool {
			return countLogs(r.logs, zapcore.InfoLevel, "handshake refused", "no handshake within 300ms") >= silent
		}, "one Info line per silent dialer saying why")
		if n := r.logs.FilterLevelExact(zapcore.ErrorLevel).Len(); n != 0 {
			t.Errorf("strangers made %d Error lines (incidents)", n)
		}
		if n := len(r.v.Peers().List()); n != 1 {
			t.Errorf("V lists %d peers, want the good one only", n)
		}
		return rise
	})

	// Past the limit of handshakes in progress (512): 600 silent dialers
	// held open (under the default 5 s handshake timeout) must not keep a
	// good peer out, nor hurt the one already connected.
	r2 := newRig(t, rpc.Config{})
	for range 600 {
		nc, err := net.Dial("tcp", r2.v.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
	}
	time.Sleep(100 * time.Millisecond)
	h := ttnode.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	t0 := time.Now()
	if _, err := h.Dial(ctx, r2.v.Addr().String()); err != nil {
		t.Errorf("with 600 silent dialers holding handshakes open, a good peer could not connect: %v", err)
	} else {
		t.Logf("with 600 silent dialers holding handshakes open, a good peer connected in %v", time.Since(t0))
	}
	r2.gWorks(t)
}

// A peer that trickles its hello one byte a second is cut off at the
// handshake timeout: the bound is on the whole handshake, not per read.
func TestHostileTrickleHello(t *testing.T) {
	const timeout = 1500 * time.Millisecond
	r := newRig(t, rpc.Config{HandshakeTimeout: timeout})
	nc := dialRaw(t, r.v.Addr().String())
	hello := encodeHello(rpc.ProtocolVersion, 0, 1<<20, 16, "trickler")
	go func() {
		for _, b := range hello {
			if _, err := nc.Write([]byte{b}); err != nil {
				return
			}
			time.Sleep(time.Second)
		}
	}()
	took := readEOF(t, nc, 10*time.Second)
	t.Logf("trickling dialer cut off after %v (timeout %v)", took, timeout)
	if took > timeout+ttest.Scaled(time.Second) {
		t.Errorf("cut off after %v, want about %v", took, timeout)
	}
	ttest.WaitFor(t, 10*time.Second, func() bool {
		return countLogs(r.logs, zapcore.InfoLevel, "handshake refused", "no handshake within 1.5s") == 1
	}, "the reason logged")
	r.gWorks(t)
}

// A peer past the handshake that trickles a frame one byte a second gets a
// clear error on its connection, and the others go on. Trickled at the TCP
// level (the bytes of one yamux frame), it holds the victim's yamux reader
// mid-frame: no probe answer can arrive, and it is evicted for missed
// heartbeats within the hang bound (the drip is no evidence of life).
// Trickled at the yamux level (a tether frame in yamux frames of one byte
// each), its yamux answers probes, but the frame is not whole within the
// handshake timeout: a protocol violation.
func TestHostileTrickleAfterHandshake(t *testing.T) {
	for _, level := range []string{"tcp", "yamux"} {
		t.Run(level, func(t *testing.T) {
			lc := liveness.Local() // hang bound 1 s
			grace := ttest.Scaled(time.Second)
			r := newRig(t, rpc.Config{HandshakeTimeout: grace}, tether.WithLiveness(lc))
			nc := &mutedConn{Conn: dialRaw(t, r.v.Addr().String())}
			h := connectRaw(t, nc, "trickler")
			hv := r.vev.Next(t, peer.Connected, 5*time.Second).Peer
			frame := encodeRequest(kindRequest, 1, 0, "echo", bytes.Repeat([]byte("x"), 64))
			t0 := time.Now()
			quit := make(chan struct{})
			dripped := make(chan struct{})
			defer func() { close(quit); <-dripped }()
			var drip func([]byte) error
			bound := lc.HangAfter + 2*time.Second
			if level == "tcp" {
				// The control stream is yamux stream 1; write its data frame
				// by hand, under the session's nose, muted now so that it
				// answers no probe in the middle of the frame.
				nc.muted.Store(true)
				frame = append(yamuxHeader(0, 0, 1, uint32(len(frame))), frame...)
				drip = func(b []byte) error { _, err := nc.Conn.Write(b); return err }
			} else {
				go io.Copy(io.Discard, h.ctrl)
				drip = func(b []byte) error { _, err := h.ctrl.Write(b); return err }
				bound = grace + 2*time.Second
			}
			go func() {
				defer close(dripped)
				for _, b := range frame {
					if drip([]byte{b}) != nil {
						return
					}
					select {
					case <-time.After(time.Second):
					case <-quit:
						return
					}
				}
			}()
			select {
			case <-hv.Done():
				t.Logf("trickling peer evicted after %v: %v", time.Since(t0), hv.Err())
				want, why := liveness.ErrMissedHeartbeats, "missed heartbeats"
				if level == "yamux" {
					want, why = rpc.ErrProtocolViolation, "a protocol violation"
				}
				if !errors.Is(hv.Err(), rpc.ErrDeadReference) || !errors.Is(hv.Err(), want) {
					t.Errorf("evicted with %v, want %s", hv.Err(), why)
				}
				if level == "yamux" && !strings.Contains(hv.Err().Error(), "trickles") {
					t.Errorf("evicted with %v, want it to say the peer trickles", hv.Err())
				}
			case <-time.After(bound):
				st := hv.Conn().Stats()
				t.Errorf("a peer that drips one byte a second (%s level) is still connected after %v "+
					"(hang bound %v, handshake timeout %v; %d bytes received; monitor: %+v)",
					level, bound, lc.HangAfter, grace, st.BytesReceived, r.v.Peers().Monitor().Stats())
			}
			r.gWorks(t)
		})
	}
}

// mutedConn drops what is written to it once muted, as a process that has
// stopped writing: writes to its Conn go through.
type mutedConn struct {
	net.Conn
	muted atomic.Bool
}

func (m *mutedConn) Write(p []byte) (int, error) {
	if m.muted.Load() {
		return len(p), nil
	}
	return m.Conn.Write(p)
}

// A peer from another protocol version is refused with a hello that names
// both versions, on either side of the connection.
func TestHostileWrongProtocolVersion(t *testing.T) {
	r := newRig(t, rpc.Config{})
	nc := dialRaw(t, r.v.Addr().String())
	nc.Write(encodeHello(rpc.ProtocolVersion+1, 0, 1<<20, 16, "from-the-future"))
	nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	refusal, err := readHello(nc)
	if err != nil || refusal.status != 1 || !strings.Contains(refusal.id, fmt.Sprintf("version %d", rpc.ProtocolVersion+1)) || !strings.Contains(refusal.id, fmt.Sprintf("speaks %d", rpc.ProtocolVersion)) {
		t.Fatalf("refusal %+v, %v", refusal, err)
	}
	readEOF(t, nc, 5*time.Second)
	ttest.WaitFor(t, 10*time.Second, func() bool {
		return countLogs(r.logs, zapcore.InfoLevel, "handshake refused", "incompatible protocol version") == 1
	}, "the refusal logged at Info")

	// An acceptor from the future: V's dial fails with ErrIncompatible.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		readHello(c)
		c.Write(encodeHello(rpc.ProtocolVersion+1, 0, 1<<20, 16, "future-acceptor"))
		io.Copy(io.Discard, c)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err = r.v.Dial(ctx, ln.Addr().String())
	if !errors.Is(err, rpc.ErrIncompatible) || !errors.Is(err, rpc.ErrHandshake) {
		t.Fatalf("dialing a version-2 acceptor: %v", err)
	}
	r.gWorks(t)
}

// Under TLS, a peer claiming another's ID is refused, and the reference to
// the real owner of the ID is untouched: a spoofer cannot evict it.
func TestHostileSpoofedIDUnderTLS(t *testing.T) {
	certV, err := rpc.NewCertificate()
	if err != nil {
		t.Fatal(err)
	}
	certB, _ := rpc.NewCertificate()
	certH, _ := rpc.NewCertificate()
	zl, logs := ttnode.Observed()
	v := ttnode.Start(t, tether.WithTLS(rpc.TLSConfig(certV)), tether.WithLogger(zl))
	v.Handle("echo", rpc.Func(ttnode.Echo))
	b := ttnode.Start(t, tether.WithTLS(rpc.TLSConfig(certB)))
	bp := ttnode.Dial(t, b, v)
	ttest.WaitFor(t, 10*time.Second, func() bool { _, ok := v.Peers().Get(b.ID()); return ok }, "V to register B")
	vb, _ := v.Peers().Get(b.ID())

	// H has a certificate of its own, and claims B's ID.
	tc := &tls.Config{Certificates: []tls.Certificate{certH}, InsecureSkipVerify: true, MinVersion: tls.VersionTLS13}
	raw := dialRaw(t, v.Addr().String())
	hc := tls.Client(raw, tc)
	hc.SetDeadline(time.Now().Add(5 * time.Second))
	if err := hc.Handshake(); err != nil {
		t.Fatal(err)
	}
	hc.Write(encodeHello(rpc.ProtocolVersion, 0, 1<<20, 16, string(b.ID())))
	refusal, err := readHello(hc)
	if err != nil || refusal.status != 1 || !strings.Contains(refusal.id, "claims ID") || !strings.Contains(refusal.id, "certificate is that of") {
		t.Fatalf("spoofed ID: refusal %+v, %v", refusal, err)
	}
	ttest.WaitFor(t, 10*time.Second, func() bool {
		return countLogs(logs, zapcore.InfoLevel, "handshake refused", "claims ID") == 1
	}, "the refusal logged")
	if got, ok := v.Peers().Get(b.ID()); !ok || got != vb || vb.Err() != nil {
		t.Fatalf("the spoofer disturbed V's reference to B: %v %v", got, vb.Err())
	}
	if err := bp.Call(context.Background(), "echo", []byte("x"), nil); err != nil {
		t.Fatalf("B's calls after the spoof: %v", err)
	}

	// No certificate at all: TLS refuses it.
	raw2 := dialRaw(t, v.Addr().String())
	hc2 := tls.Client(raw2, &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13})
	hc2.SetDeadline(time.Now().Add(5 * time.Second))
	hc2.Handshake() // TLS 1.3: the server's refusal shows on the first read
	if _, err := hc2.Read(make([]byte, 1)); err == nil {
		t.Fatal("a peer without a certificate was served")
	}

	// V dialing "ID@addr" refuses an acceptor with another key.
	h := ttnode.Start(t, tether.WithTLS(rpc.TLSConfig(certH)))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := v.Dial(ctx, string(b.ID())+"@"+h.Addr().String()); !errors.Is(err, rpc.ErrHandshake) || !strings.Contains(err.Error(), "not") {
		t.Fatalf("dialing B's ID at H's address: %v", err)
	}
	if got, ok := v.Peers().Get(b.ID()); !ok || got != vb {
		t.Fatal("V's reference to B changed")
	}
}

// A peer that, after the hello, starts a yamux frame and does not finish
// it holds the victim's handshake past its timeout: yamux's AcceptStream
// waits for the half-received frame with no deadline. The handshake bound
// must hold here too (found by FuzzConn), or a few hundred such peers fill
// the node's handshake slots for good, and Close waits for them.
func TestHostileHalfFrameDuringHandshake(t *testing.T) {
	const timeout = 300 * time.Millisecond
	r := newRig(t, rpc.Config{HandshakeTimeout: timeout})
	halfFrame := func() (net.Conn, error) {
		nc := dialRaw(t, r.v.Addr().String())
		nc.SetDeadline(time.Now().Add(5 * time.Second))
		nc.Write(encodeHello(rpc.ProtocolVersion, 0, 1<<20, 16, "half"))
		if _, err := readHello(nc); err != nil {
			return nil, err
		}
		nc.SetDeadline(time.Time{})
		// A data frame opening stream 1 (SYN), announcing 100 bytes: 2 sent.
		_, err := nc.Write(append(yamuxHeader(0, 1, 1, 100), 'h', 'i'))
		return nc, err
	}
	nc, err := halfFrame()
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	cut := make(chan struct{})
	go func() {
		defer close(cut)
		buf := make([]byte, 64)
		nc.SetReadDeadline(time.Now().Add(10 * time.Second))
		for {
			if _, err := nc.Read(buf); err != nil {
				return
			}
		}
	}()
	select {
	case <-cut:
		t.Logf("cut off after %v", time.Since(t0))
	case <-time.After(timeout + ttest.Scaled(2*time.Second)):
		t.Errorf("a peer that sent half a yamux frame after its hello is still connected after %v (handshake timeout %v)",
			time.Since(t0).Round(time.Millisecond), timeout)
	}

	// Enough of them fill the node's handshake slots (512): a good peer
	// must still get in once the handshake timeout has passed.
	refused := 0
	for range 520 {
		if _, err := halfFrame(); err != nil {
			refused++ // the node's handshake slots are full
		}
	}
	t.Logf("of 520 more such peers, %d were refused at once (handshake slots full)", refused)
	time.Sleep(timeout + 500*time.Millisecond)
	late := ttnode.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := late.Dial(ctx, r.v.Addr().String()); err != nil {
		t.Errorf("520 peers holding half a yamux frame, past the handshake timeout: a good peer cannot connect: %v", err)
	}

	// Close must not wait for such peers.
	closed := make(chan struct{})
	go func() { r.v.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Errorf("Node.Close did not return within 5s while peers held half-sent yamux frames in their handshakes")
		nc.Close() // the cleanups close the others, so that the test ends cleanly
	}
}
