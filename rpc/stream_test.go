package rpc

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"math/rand/v2"
	"testing"
	"time"
)

// streamMux serves "sum" (reads to EOF, answers the SHA-256), "source"
// (writes n pseudo-random bytes) and "wait" (waits for its context).
func streamMux(cancelled chan<- error) *Mux {
	m := NewMux()
	m.HandleStream("sum", StreamFunc(func(ctx context.Context, s *Stream) error {
		h := sha256.New()
		if _, err := io.Copy(h, s); err != nil {
			return err
		}
		_, err := s.Write(h.Sum(nil))
		return err
	}))
	m.HandleStream("source", StreamFunc(func(ctx context.Context, s *Stream) error {
		r := rand.NewChaCha8([32]byte{1})
		_, err := io.CopyN(s, r, 8<<20)
		return err
	}))
	m.HandleStream("wait", StreamFunc(func(ctx context.Context, s *Stream) error {
		<-ctx.Done()
		cancelled <- ctx.Err()
		return ctx.Err()
	}))
	m.HandleStream("read", StreamFunc(func(ctx context.Context, s *Stream) error {
		_, err := s.Read(make([]byte, 1)) // blocked until the caller goes away
		cancelled <- err
		return err
	}))
	return m
}

func TestStreamUploadAndDownload(t *testing.T) {
	forEachTransport(t, func(t *testing.T, tr string) {
		c, _ := pair(t, tr, nil, &Config{Mux: streamMux(nil)})
		ctx := context.Background()

		// Upload 8 MiB, half-close, read the digest.
		s, err := c.OpenStream(ctx, "sum")
		if err != nil {
			t.Fatal(err)
		}
		data := make([]byte, 8<<20)
		rand.NewChaCha8([32]byte{2}).Read(data)
		if _, err := s.Write(data); err != nil {
			t.Fatal(err)
		}
		if err := s.CloseWrite(); err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(s)
		want := sha256.Sum256(data)
		if err != nil || !bytes.Equal(got, want[:]) {
			t.Fatalf("digest %x, %v", got, err)
		}
		s.Close()

		// Download 8 MiB.
		s, err = c.OpenStream(ctx, "source")
		if err != nil {
			t.Fatal(err)
		}
		h := sha256.New()
		n, err := io.Copy(h, s)
		s.Close()
		ref := sha256.New()
		io.CopyN(ref, rand.NewChaCha8([32]byte{1}), 8<<20)
		if err != nil || n != 8<<20 || !bytes.Equal(h.Sum(nil), ref.Sum(nil)) {
			t.Fatalf("download: %d bytes, %v", n, err)
		}
	})
}

func TestStreamUnknownMethod(t *testing.T) {
	c, _ := pair(t, "tcp", nil, &Config{Mux: streamMux(nil)})
	_, err := c.OpenStream(context.Background(), "nope")
	var re *RemoteError
	if !errors.Is(err, ErrUnknownMethod) || !errors.As(err, &re) || re.Method != "nope" {
		t.Fatalf("unknown stream: %v", err)
	}
	if c.Err() != nil {
		t.Fatal("connection died")
	}
}

// Cancelling a stream's context ends the handler's context on the other
// side (its blocked Read returns) and the caller's blocked Read at once.
func TestStreamCancelReachesHandler(t *testing.T) {
	forEachTransport(t, func(t *testing.T, tr string) {
		cancelled := make(chan error, 1)
		c, s := pair(t, tr, nil, &Config{Mux: streamMux(cancelled)})
		ctx, cancel := context.WithCancel(context.Background())
		st, err := c.OpenStream(ctx, "wait")
		if err != nil {
			t.Fatal(err)
		}
		readErr := make(chan error, 1)
		go func() {
			_, err := st.Read(make([]byte, 1))
			readErr <- err
		}()
		t0 := time.Now()
		cancel()
		if err := within(t, time.Second, readErr, "caller's Read"); !errors.Is(err, context.Canceled) {
			t.Fatalf("caller's Read: %v", err)
		}
		if err := within(t, time.Second, cancelled, "handler"); !errors.Is(err, context.Canceled) {
			t.Fatalf("handler's Read: %v", err)
		}
		t.Logf("%s: handler cancelled %v after the caller", tr, time.Since(t0))
		st.Close()
		waitFor(t, func() bool { return s.Stats().Serving == 0 }, "handler release")
	})
}

// A handler blocked in Read returns when its caller gives up: with the
// caller's FIN (io.EOF) or the cancel, whichever arrives first.
func TestStreamHandlerBlockedInReadReturns(t *testing.T) {
	cancelled := make(chan error, 1)
	c, _ := pair(t, "tcp", nil, &Config{Mux: streamMux(cancelled)})
	ctx, cancel := context.WithCancel(context.Background())
	st, err := c.OpenStream(ctx, "read")
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	st.Close()
	if err := within(t, time.Second, cancelled, "handler's Read"); err != io.EOF && !errors.Is(err, context.Canceled) {
		t.Fatalf("handler's Read: %v", err)
	}
}

func TestStreamDeadline(t *testing.T) {
	cancelled := make(chan error, 1)
	c, _ := pair(t, "tcp", nil, &Config{Mux: streamMux(cancelled)})
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	st, err := c.OpenStream(ctx, "wait")
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	_, err = st.Read(make([]byte, 1))
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Read past the deadline: %v", err)
	}
	if err := within(t, time.Second, cancelled, "handler"); !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled) {
		t.Fatalf("handler: %v", err)
	}
}

// A connection's death ends its streams: the caller's Read and Write fail
// with ErrDeadReference and the running handler is cancelled. (The abort
// waits for the handler to run: a connection that dies as the stream opens
// may never start it, as the server's answer can fail once the peer reset.)
func TestStreamDiesWithConn(t *testing.T) {
	started, cancelled := make(chan struct{}, 1), make(chan error, 1)
	m := NewMux()
	m.HandleStream("wait", StreamFunc(func(ctx context.Context, s *Stream) error {
		started <- struct{}{}
		<-ctx.Done()
		cancelled <- ctx.Err()
		return ctx.Err()
	}))
	c, _ := pair(t, "tcp", nil, &Config{Mux: m})
	st, err := c.OpenStream(context.Background(), "wait")
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	within(t, 5*time.Second, started, "handler start")
	readErr := make(chan error, 1)
	go func() {
		_, err := st.Read(make([]byte, 1))
		readErr <- err
	}()
	c.Abort(errors.New("evicted"))
	if err := within(t, time.Second, readErr, "Read"); !errors.Is(err, ErrDeadReference) {
		t.Fatalf("Read on a dead connection: %v", err)
	}
	if _, err := st.Write([]byte("x")); !errors.Is(err, ErrDeadReference) {
		t.Fatalf("Write on a dead connection: %v", err)
	}
	if err := within(t, 5*time.Second, cancelled, "handler cancellation"); !errors.Is(err, context.Canceled) {
		t.Fatalf("handler's context ended with %v", err)
	}
}

func TestStreamAwaitingAnAnswerCountsAsOutstanding(t *testing.T) {
	answer := make(chan struct{})
	m := NewMux()
	m.HandleStream("ask", StreamFunc(func(ctx context.Context, s *Stream) error {
		var b [1]byte
		if _, err := io.ReadFull(s, b[:]); err != nil {
			return err
		}
		<-answer
		_, err := s.Write(b[:])
		return err
	}))
	c, srv := pair(t, "tcp", nil, &Config{Mux: m})
	s, err := c.OpenStream(context.Background(), "ask")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if n := c.Outstanding(); n != 0 {
		t.Fatalf("%d outstanding before anything was asked", n)
	}
	if _, err := s.Write([]byte{7}); err != nil {
		t.Fatal(err)
	}
	if n := c.Outstanding(); n != 1 {
		t.Fatalf("%d outstanding with a request written on a stream, want 1", n)
	}
	if n := srv.Outstanding(); n != 0 {
		t.Fatalf("the serving side counts %d outstanding: its streams answer, they do not ask", n)
	}
	close(answer)
	var b [1]byte
	if _, err := io.ReadFull(s, b[:]); err != nil {
		t.Fatal(err)
	}
	if n := c.Outstanding(); n != 0 {
		t.Fatalf("%d outstanding after the answer was read", n)
	}
	s.Write([]byte{8})
	s.Close()
	if n := c.Outstanding(); n != 0 {
		t.Fatalf("%d outstanding after the stream closed", n)
	}
}

func TestStreamHandlerRemoved(t *testing.T) {
	m := NewMux()
	m.HandleStream("svc", StreamFunc(func(ctx context.Context, s *Stream) error { return nil }))
	m.Handle("svc", Func(func(ctx context.Context, req []byte) ([]byte, error) { return req, nil }))
	c, _ := pair(t, "tcp", nil, &Config{Mux: m})
	m.HandleStream("svc", nil)
	if _, err := c.OpenStream(context.Background(), "svc"); !errors.Is(err, ErrUnknownMethod) {
		t.Fatalf("stream to a removed handler: %v, want ErrUnknownMethod", err)
	}
	var out []byte
	if err := c.Call(context.Background(), "svc", []byte("x"), &out); err != nil {
		t.Fatalf("the call handler went with the stream handler: %v", err)
	}
	m.Handle("svc", nil)
	if err := c.Call(context.Background(), "svc", []byte("x"), &out); !errors.Is(err, ErrUnknownMethod) {
		t.Fatalf("call to a removed handler: %v, want ErrUnknownMethod", err)
	}
}
