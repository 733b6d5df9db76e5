package partition_test

import (
	"fmt"
	"io"
	"log"
	"net"
	"time"

	"github.com/tetherrpc/tether/partition"
)

// A long path: 40 ms each way, 10 MiB/s. A client dials the proxy's
// address instead of the server's, and every round trip takes 80 ms more.
// A tether Node does the same: it dials p.Addr() where it would dial the
// other Node.
func ExampleProxy_SetLink() {
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
	link := partition.Link{Delay: 40 * time.Millisecond, Rate: 10 << 20}
	p.SetLink(link, link)

	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	buf := make([]byte, 4)
	c.Write([]byte("ping"))
	io.ReadFull(c, buf)
	fmt.Printf("echo: %s\n", buf)
	fmt.Println("round trip of 80 ms or more:", time.Since(start) >= 80*time.Millisecond)
	// Output:
	// echo: ping
	// round trip of 80 ms or more: true
}
