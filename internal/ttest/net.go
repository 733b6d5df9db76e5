package ttest

import (
	"net"
	"testing"
	"time"
)

// TCPPair returns the two ends of a new TCP connection on 127.0.0.1, both
// closed at the end of the test.
func TCPPair(t testing.TB) (client, server *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type accepted struct {
		c   net.Conn
		err error
	}
	ch := make(chan accepted, 1)
	go func() {
		c, err := ln.Accept()
		ch <- accepted{c, err}
	}()
	c, err := net.DialTimeout("tcp", ln.Addr().String(), Scaled(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	a := <-ch
	if a.err != nil {
		c.Close()
		t.Fatal(a.err)
	}
	t.Cleanup(func() { c.Close(); a.c.Close() })
	return c.(*net.TCPConn), a.c.(*net.TCPConn)
}

// Port returns the port of a TCP address (a listener's, a connection's or
// a node's Addr).
func Port(t testing.TB, addr net.Addr) int {
	t.Helper()
	a, err := net.ResolveTCPAddr("tcp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	return a.Port
}
