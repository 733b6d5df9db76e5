package logport_test

import (
	"context"
	"fmt"
	"net"

	"go.uber.org/zap"

	"github.com/tetherrpc/tether/incident/logport"
	"github.com/tetherrpc/tether/rpc"
)

// A node serves its log to a subscriber over rpc. In a tether node the tap
// goes behind incident.Async (incident.Async(zapcore.NewTee(main,
// port.Core()))) and Register takes the *tether.Node; the subscriber's
// Streamer is a *peer.Peer.
func Example() {
	enc := logport.EncoderConfig()
	enc.TimeKey = "" // keep the output reproducible
	port := logport.New(logport.WithEncoderConfig(enc))
	defer port.Close()
	mux := rpc.NewMux()
	port.Register(mux)
	log := zap.New(port.Core())

	// The node's end and the subscriber's end of one connection.
	ctx := context.Background()
	cn, sn := net.Pipe()
	served := make(chan *rpc.Conn, 1)
	go func() {
		s, _ := rpc.Server(ctx, sn, &rpc.Config{Mux: mux})
		served <- s
	}()
	client, err := rpc.Client(ctx, cn, nil)
	if err != nil {
		fmt.Println(err)
		return
	}
	server := <-served
	defer server.Close()
	defer client.Close()

	ctx, cancel := context.WithCancel(ctx)
	pos, err := logport.Subscribe(ctx, logport.StreamFunc(client.OpenStream), func(e logport.Entry) {
		if e.IsLoss() {
			fmt.Println(e.Lost) // "N entries lost (seq a..b)"
			return
		}
		fmt.Print(string(e.JSON))
		if e.Seq == 3 {
			cancel()
		}
	}, logport.OnStart(func(logport.Position) {
		// Subscribed: what is logged from now on reaches us.
		log.Info("share uploaded", zap.Int("bytes", 1024))
		log.Warn("peer evicted", zap.String("peer", "p1"))
		log.Named("storage").Debug("lease renewed", zap.Bool("ok", true))
	}))
	fmt.Println("stopped after seq", pos.Seq, "with", err)
	// Output:
	// {"port_seq":1,"level":"info","msg":"share uploaded","bytes":1024}
	// {"port_seq":2,"level":"warn","msg":"peer evicted","peer":"p1"}
	// {"port_seq":3,"level":"debug","logger":"storage","msg":"lease renewed","ok":true}
	// stopped after seq 3 with context canceled
}
