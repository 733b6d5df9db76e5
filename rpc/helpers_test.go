package rpc

import (
	"context"
	"crypto/tls"
	"net"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/tetherrpc/tether/internal/ttest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// transports are the kinds of connection every conformance test runs over.
var transports = []string{"pipe", "tcp", "tls"}

// forEachTransport runs f as a subtest over each transport.
func forEachTransport(t *testing.T, f func(t *testing.T, tr string)) {
	for _, tr := range transports {
		t.Run(tr, func(t *testing.T) { f(t, tr) })
	}
}

// netPair returns the two ends of a fresh connection of the given kind.
func netPair(t testing.TB, tr string) (client, server net.Conn) {
	t.Helper()
	if tr == "pipe" {
		return net.Pipe()
	}
	c, sv := ttest.TCPPair(t)
	return c, sv
}

var (
	certOnce   sync.Once
	certA      tls.Certificate
	certB      tls.Certificate
	certErr    error
	testCertsF = func() {
		if certA, certErr = NewCertificate(); certErr == nil {
			certB, certErr = NewCertificate()
		}
	}
)

func testCerts(t testing.TB) (tls.Certificate, tls.Certificate) {
	certOnce.Do(testCertsF)
	if certErr != nil {
		t.Fatal(certErr)
	}
	return certA, certB
}

// pair connects a client and a server Conn over tr, with the given configs
// (nil means defaults). With "tls" each side gets its own certificate.
func pair(t testing.TB, tr string, ccfg, scfg *Config) (client, server *Conn) {
	t.Helper()
	cn, sn := netPair(t, tr)
	return pairOver(t, tr, cn, sn, ccfg, scfg)
}

func pairOver(t testing.TB, tr string, cn, sn net.Conn, ccfg, scfg *Config) (client, server *Conn) {
	t.Helper()
	ccfg, scfg = cloneCfg(ccfg), cloneCfg(scfg)
	if tr == "tls" {
		a, b := testCerts(t)
		if ccfg.TLS == nil {
			ccfg.TLS = TLSConfig(a)
		}
		if scfg.TLS == nil {
			scfg.TLS = TLSConfig(b)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	type res struct {
		c   *Conn
		err error
	}
	ch := make(chan res, 1)
	go func() {
		c, err := Server(ctx, sn, scfg)
		ch <- res{c, err}
	}()
	client, err := Client(ctx, cn, ccfg)
	r := <-ch
	if err != nil || r.err != nil {
		if client != nil {
			client.Close()
		}
		if r.c != nil {
			r.c.Close()
		}
		t.Fatalf("pair over %s: client: %v, server: %v", tr, err, r.err)
	}
	t.Cleanup(func() {
		client.Close()
		r.c.Close()
	})
	return client, r.c
}

func cloneCfg(c *Config) *Config {
	if c == nil {
		return &Config{}
	}
	d := *c
	return &d
}

// echoMux serves "echo" (returns its request) and anything given.
func echoMux() *Mux {
	m := NewMux()
	m.Handle("echo", Func(func(ctx context.Context, req []byte) ([]byte, error) { return req, nil }))
	return m
}

// within fails the test unless ch delivers within d.
func within[T any](t testing.TB, d time.Duration, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(d):
		t.Fatalf("%s: nothing within %v", what, d)
	}
	var zero T
	return zero
}

type netConn = net.Conn
