package tether_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/rpc"
)

// A node that admits a list of IDs refuses a stranger in the handshake,
// every time, and counts it; the stranger's error says it was not
// admitted; members' calls go on. WithRPCConfig given after WithAdmission
// does not drop the policy.
func TestAdmitIDs(t *testing.T) {
	reg := prometheus.NewRegistry()
	a := node(t, tether.WithID("a"), tether.WithMetrics(reg),
		tether.WithAdmission(tether.AdmitIDs("member")),
		tether.WithRPCConfig(rpc.Config{HandshakeTimeout: 3 * time.Second}))
	a.Handle("echo", rpc.Func(echo))
	member := node(t, tether.WithID("member"))
	stranger := node(t, tether.WithID("stranger"))

	p := dial(t, member, a)
	for i := range 3 {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := stranger.Dial(ctx, a.Addr().String())
		cancel()
		if !errors.Is(err, rpc.ErrNotAdmitted) {
			t.Fatalf("stranger's dial %d: %v; want rpc.ErrNotAdmitted", i, err)
		}
		var out []byte
		if err := p.Call(context.Background(), "echo", []byte("x"), &out); err != nil {
			t.Fatalf("member's call after refusal %d: %v", i, err)
		}
	}
	if _, ok := a.Peers().Get("stranger"); ok {
		t.Fatal("the stranger is in the registry")
	}
	waitFor(t, func() bool { return refusedCount(t, reg) == 3 }, "3 refusals counted")
}

// A node with a policy refuses, as the dialer, a node it does not admit.
func TestAdmissionRefusesWhomItDials(t *testing.T) {
	a := node(t, tether.WithID("a"), tether.WithAdmission(tether.AdmitIDs("someone")))
	b := node(t, tether.WithID("b"))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := a.Dial(ctx, b.Addr().String()); !errors.Is(err, rpc.ErrNotAdmitted) {
		t.Fatalf("dialing a node not admitted: %v", err)
	}
	if got := len(b.Peers().List()); got != 0 {
		t.Fatalf("the refused node holds %d references", got)
	}
}

func refusedCount(t *testing.T, reg *prometheus.Registry) float64 {
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() != "tether_handshakes_refused_total" {
			continue
		}
		for _, m := range f.Metric {
			for _, l := range m.Label {
				if l.GetName() == "reason" && l.GetValue() == "not_admitted" {
					return m.Counter.GetValue()
				}
			}
		}
	}
	return -1
}
