package rpc

import (
	"context"
	"errors"
	"testing"
	"time"
)

// readerRunning reports whether c's control-stream reader runs.
func readerRunning(c *Conn) bool {
	c.rd.mu.Lock()
	defer c.rd.mu.Unlock()
	return c.rd.running
}

// waitParked waits until c's reader parks, failing the test past a bound.
func waitParked(t *testing.T, c *Conn) {
	t.Helper()
	waitFor(t, func() bool { return !readerRunning(c) }, "the reader to park after the last frame")
}

// An idle connection parks its reader; a call, a probe, a goodbye and a
// reset each reach the parked side as if its reader had run all along.
func TestParkedReaderWakes(t *testing.T) {
	forEachTransport(t, func(t *testing.T, tr string) {
		client, server := pair(t, tr, nil, &Config{Mux: echoMux()})
		waitParked(t, server)
		var reply []byte
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := client.Call(ctx, "echo", []byte("after parking"), &reply); err != nil || string(reply) != "after parking" {
			t.Fatalf("call to a parked peer: %q, %v", reply, err)
		}
		waitParked(t, server)
		waitParked(t, client)
		if _, err := server.Ping(ctx); err != nil {
			t.Fatalf("ping from a parked connection to a parked peer: %v", err)
		}
		waitParked(t, server)
		waitParked(t, client)
		client.Close()
		select {
		case <-server.Done():
		case <-time.After(5 * time.Second):
			t.Fatal("a parked peer did not hear the goodbye")
		}
		if err := server.Err(); !errors.Is(err, ErrPeerLeft) {
			t.Fatalf("the parked side ended with %v, want ErrPeerLeft", err)
		}
	})
}

func TestParkedReaderSeesReset(t *testing.T) {
	client, server := pair(t, "tcp", nil, nil)
	waitParked(t, server)
	client.Abort(errors.New("crash"))
	select {
	case <-server.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("a parked peer did not see the reset")
	}
	if err := server.Err(); err == nil || errors.Is(err, ErrPeerLeft) {
		t.Fatalf("the parked side ended with %v, want a transport error", err)
	}
	t.Logf("parked side: %v", server.Err())
}

// Probes do not hold a reader: it parks parkAfter after the last frame on
// the control stream, however often the connection is probed meanwhile.
func TestProbesDoNotHoldTheReader(t *testing.T) {
	client, server := pair(t, "tcp", nil, &Config{Mux: echoMux()})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var reply []byte
	if err := client.Call(ctx, "echo", []byte("wake"), &reply); err != nil {
		t.Fatal(err)
	}
	stop, probing := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(probing)
		tick := time.NewTicker(parkAfter / 10)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				client.Ping(ctx)
				server.Ping(ctx)
			}
		}
	}()
	waitParked(t, server)
	waitParked(t, client)
	close(stop)
	<-probing
}

// Close during a death another goroutine began waits for that death to
// finish: frames arriving meanwhile may start the parked reader, and no
// goroutine of the connection's may start, or still run, once Close
// returns (under -race a start racing Close's wait is reported).
func TestCloseDuringAnotherDeath(t *testing.T) {
	c, s := pair(t, "tcp", nil, nil)
	waitParked(t, s)
	dying, release := make(chan struct{}), make(chan struct{})
	connCtx{s}.AfterFunc(func() { close(dying); <-release }) // on the dying goroutine
	go s.Abort(errors.New("missed heartbeats"))
	<-dying
	before := s.wire.ctrlIn.Load()
	closed := make(chan error, 1)
	go func() { closed <- s.Close() }()
	called := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		called <- c.Call(ctx, "echo", nil, nil)
	}()
	waitFor(t, func() bool { return s.wire.ctrlIn.Load() > before }, "the call's frame to reach the dying end")
	select {
	case <-closed:
		t.Fatal("Close returned while the connection was still dying")
	case <-time.After(50 * time.Millisecond):
	}
	close(release)
	within(t, 5*time.Second, closed, "Close")
	within(t, 5*time.Second, called, "the call")
}
