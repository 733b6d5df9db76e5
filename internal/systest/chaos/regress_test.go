package chaos

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/tetherrpc/tether/internal/ttest"
	"github.com/tetherrpc/tether/internal/ttest/ttnode"
	"github.com/tetherrpc/tether/partition"
	"github.com/tetherrpc/tether/peer"
	"github.com/tetherrpc/tether/rpc"
)

// ---- a regression the soak found, with real nodes ----

// A node that keeps an address connected and also dials it (to get its
// reference at once) must settle on one connection. Each new connection
// replaced the last (ErrReplaced), and the replaced reference's loss made
// Keep redial: a reconnection every backoff interval, for ever.
func TestKeepAndDialSameAddressSettle(t *testing.T) {
	a, b := ttnode.Start(t), ttnode.Start(t)
	ev := ttnode.Subscribe(t, a.Peers())
	stop := a.Peers().Keep(b.Addr().String())
	defer stop()
	ev.Next(t, peer.Connected, 5*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := a.Dial(ctx, b.Addr().String()); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	if n := ev.Count(peer.Connected); n > 2 {
		st := a.Peers().Stats()
		t.Fatalf("Keep(addr), Dial(addr), then 1s of nothing: %d Connected events, %d disconnects, %d reconnects (each connection replaces the last, whose loss redials)",
			n, st.Disconnects, st.Reconnects)
	}
}

// One-way partitions, each direction, noticed as fast as two-way ones on
// both sides of the connection: the peers are idle, so within the idle floor
// of 2 s at the default configuration (the kernel's keepalive goes
// unacknowledged, then a round of probes).
// When only what goes to the server is dropped, the server's own segments
// still reach the client: its retransmissions look like acknowledgements
// to the client's kernel (tcpi_last_ack_recv stays fresh), which can hold
// the client's verdict back until they thin out.
func TestOneWayPartitionDetection(t *testing.T) {
	if !partition.Isolated(t) {
		return
	}
	trials := ttnode.EnvInt("TETHER_TRIALS", 3)
	if testing.Short() {
		trials = 1
	}
	for _, dir := range []partition.Direction{partition.ToPort, partition.FromPort} {
		name := map[partition.Direction]string{partition.ToPort: "to the server", partition.FromPort: "from the server"}[dir]
		var client, server []time.Duration
		for i := range trials {
			a := ttnode.Start(t)
			b := ttnode.Start(t)
			b.Handle("echo", rpc.Func(ttnode.Echo))
			eva, evb := ttnode.Subscribe(t, a.Peers()), ttnode.Subscribe(t, b.Peers())
			p := ttnode.Dial(t, a, b)
			ttest.WaitFor(t, 10*time.Second, func() bool { _, ok := b.Peers().Get(a.ID()); return ok }, "b to register a")
			for range 5 {
				p.Call(context.Background(), "echo", nil, nil)
			}
			time.Sleep(time.Duration(i) * 250 * time.Millisecond / time.Duration(trials))
			t0 := time.Now()
			heal, err := partition.DropPortOneWay(ttnode.Port(t, b), dir)
			if err != nil {
				t.Fatal(err)
			}
			da := eva.Next(t, peer.Disconnected, 10*time.Second)
			db := evb.Next(t, peer.Disconnected, 10*time.Second)
			ta, tb := da.Time.Sub(t0), db.Time.Sub(t0)
			heal()
			t.Logf("one-way (%s) #%d: client noticed after %v (%v), server after %v (%v)", name, i, ta.Round(time.Millisecond), da.Cause, tb.Round(time.Millisecond), db.Cause)
			client, server = append(client, ta), append(server, tb)
			a.Close()
			b.Close()
		}
		const floor = 2 * time.Second
		if m := slices.Max(client); m > floor {
			t.Errorf("one-way partition (%s): the client took up to %v to notice (all: %v), floor %v", name, m, client, floor)
		}
		if m := slices.Max(server); m > floor {
			t.Errorf("one-way partition (%s): the server took up to %v to notice (all: %v), floor %v", name, m, server, floor)
		}
	}
}
