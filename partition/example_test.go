package partition_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"syscall"
	"time"

	"github.com/tetherrpc/tether/partition"
)

// A cut is silent: writes succeed, reads wait, and after Heal the held
// bytes arrive.
func ExampleNetwork() {
	n := partition.NewNetwork()
	defer n.Close()

	ln, err := n.Host("server").Listen(":7000")
	if err != nil {
		log.Fatal(err)
	}
	go func() { // an echo server
		c, err := ln.Accept()
		if err != nil {
			return
		}
		io.Copy(c, c)
	}()

	c, err := n.Host("client").Dial(context.Background(), "server:7000")
	if err != nil {
		log.Fatal(err)
	}
	buf := make([]byte, 4)
	c.Write([]byte("ping"))
	io.ReadFull(c, buf)
	fmt.Printf("echo: %s\n", buf)

	n.Cut("client", "server")
	_, err = c.Write([]byte("held"))
	fmt.Println("write while cut:", err)
	c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	_, err = c.Read(buf)
	fmt.Println("read while cut times out:", errors.Is(err, os.ErrDeadlineExceeded))

	n.Heal("client", "server")
	c.SetReadDeadline(time.Time{})
	io.ReadFull(c, buf)
	fmt.Printf("after heal: %s\n", buf)
	// Output:
	// echo: ping
	// write while cut: <nil>
	// read while cut times out: true
	// after heal: held
}

// A blackholed proxy holds connections open and silent; Reset aborts them.
func ExampleProxy() {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	defer ln.Close()
	go func() { // an echo server
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		io.Copy(c, c)
	}()

	p, err := partition.NewProxy(ln.Addr().String())
	if err != nil {
		log.Fatal(err)
	}
	defer p.Close()
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 4)
	c.Write([]byte("ping"))
	io.ReadFull(c, buf)
	fmt.Printf("echo: %s\n", buf)

	p.Blackhole()
	_, err = c.Write([]byte("held"))
	fmt.Println("write while blackholed:", err)
	c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	_, err = c.Read(buf)
	fmt.Println("read while blackholed times out:", errors.Is(err, os.ErrDeadlineExceeded))

	p.Heal()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	io.ReadFull(c, buf)
	fmt.Printf("after heal: %s\n", buf)

	p.Reset()
	_, err = c.Read(buf)
	fmt.Println("after reset:", errors.Is(err, syscall.ECONNRESET))
	// Output:
	// echo: ping
	// write while blackholed: <nil>
	// read while blackholed times out: true
	// after heal: held
	// after reset: true
}

// A demo program that re-executes itself in a private network namespace,
// where it may drop packets for real. (Not run: it needs root.)
func ExampleReexec() {
	inside, err := partition.Reexec(context.Background())
	if err != nil {
		log.Fatal(err)
	}
	if !inside {
		return // the copy in its own namespace has done the work
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	defer ln.Close()
	heal, err := partition.DropPort(ln.Addr().(*net.TCPAddr).Port)
	if err != nil {
		log.Fatal(err)
	}
	defer heal()
	// ... peers on ln now vanish silently ...
}
