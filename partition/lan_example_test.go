package partition_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/tetherrpc/tether/partition"
)

// A server on host 2 of three is silenced: a client on host 0 cannot
// reach it, and nobody is told; after the heal it can. (Not run: a LAN
// needs Linux and root.)
func ExampleLAN() {
	ctx := context.Background()
	lan, err := partition.NewLAN(ctx, 3)
	if err != nil {
		log.Fatal(err) // matches partition.ErrNoKernelSupport where a LAN is impossible
	}
	defer lan.Close()
	server := lan.Host(2)
	ln, err := server.Listen("tcp", ":7000")
	if err != nil {
		log.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()

	heal, err := lan.Silence(2)
	if err != nil {
		log.Fatal(err)
	}
	dctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer cancel()
	_, err = lan.Host(0).Dial(dctx, "tcp", server.Addr().String()+":7000")
	fmt.Println("silenced:", err) // a timeout: no RST, no ICMP
	if err := heal(); err != nil {
		log.Fatal(err)
	}
	c, err := lan.Host(0).Dial(ctx, "tcp", server.Addr().String()+":7000")
	if err != nil {
		log.Fatal(err)
	}
	c.Close()
	fmt.Println("healed: connected to", server)
}
