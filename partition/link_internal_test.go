package partition

import (
	"errors"
	"net"
	"testing"
	"time"
)

// held returns the bytes the proxy holds in its links toward the target,
// over all connections: read from clients, not yet written to the target.
func (p *Proxy) held() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for pc := range p.conns {
		q := pc.links[toTarget]
		q.mu.Lock()
		n += q.held
		q.mu.Unlock()
	}
	return n
}

// A receiver that does not read: the link fills to its Queue and then the
// proxy stops reading, so the sender blocks; it never holds more.
func TestLinkQueueBound(t *testing.T) {
	const bound = 256 << 10
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			accepted <- c // and never read from
		}
	}()
	p, err := NewProxy(ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	p.SetLink(Link{Delay: 5 * time.Millisecond, Queue: bound}, Link{})
	client, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	var target net.Conn
	select {
	case target = <-accepted:
	case <-time.After(5 * time.Second):
		t.Fatal("the target accepted no connection")
	}
	defer target.Close()

	// Write until the client's kernel takes nothing more for a while with
	// the link full: the proxy has stopped reading and every buffer on the
	// way is full.
	buf := make([]byte, 16<<10)
	sent, most := 0, 0
	for deadline := time.Now().Add(30 * time.Second); ; {
		client.SetWriteDeadline(time.Now().Add(200 * time.Millisecond))
		n, err := client.Write(buf)
		sent += n
		held := p.held()
		most = max(most, held)
		if most > bound {
			t.Fatalf("the proxy held %d bytes, over its Queue of %d", most, bound)
		}
		if isTimeout(err) && held == bound {
			break
		}
		if err != nil && !isTimeout(err) {
			t.Fatal(err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 30 s the client has written %d KiB, the proxy holds %d KiB of a Queue of %d KiB", sent>>10, held>>10, bound>>10)
		}
	}
	t.Logf("the client wrote %d KiB and blocked; the proxy held at most %d KiB, bound %d KiB", sent>>10, most>>10, bound>>10)
	if sent <= bound {
		t.Fatalf("the client wrote only %d bytes, no more than the Queue of %d", sent, bound)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func TestLinkQueueDefaults(t *testing.T) {
	for _, c := range []struct {
		link Link
		want int
	}{
		{Link{}, 1 << 20},
		{Link{Queue: 5, Delay: time.Second, Rate: 1 << 30}, 5},
		{Link{Delay: 25 * time.Millisecond}, 64 << 20},
		{Link{Jitter: time.Millisecond}, 64 << 20},
		{Link{Delay: 20 * time.Millisecond, Jitter: 5 * time.Millisecond, Rate: 100 << 20}, 5 << 20},
		{Link{Delay: time.Millisecond, Rate: 8 << 20}, 1 << 20},
		{Link{Delay: time.Hour, Rate: 1 << 40}, 1 << 30},
	} {
		if got := c.link.queue(); got != c.want {
			t.Errorf("%+v: queue %d, want %d", c.link, got, c.want)
		}
	}
}
