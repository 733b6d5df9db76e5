package server

import (
	"net"
	"testing"
	"time"
)

func TestPenaltyBox(t *testing.T) {
	b := newPenaltyBox(250*time.Millisecond, 2*time.Second)
	bad := &net.TCPAddr{IP: net.ParseIP("192.0.2.7"), Port: 40000}
	samehost := &net.TCPAddr{IP: net.ParseIP("192.0.2.7"), Port: 40001}
	other := &net.TCPAddr{IP: net.ParseIP("192.0.2.8"), Port: 40000}
	t0 := time.Unix(1000, 0)
	if b.refused(bad, t0) {
		t.Fatal("refused before any violation")
	}
	// 250 ms, 500 ms, 1 s, then capped at 2 s.
	now := t0
	for i, want := range []time.Duration{250, 500, 1000, 2000, 2000} {
		d, strikes := b.strike(bad, now)
		if d != want*time.Millisecond || strikes != i+1 {
			t.Fatalf("strike %d: %v (strike %d), want %v", i+1, d, strikes, want*time.Millisecond)
		}
		if !b.refused(samehost, now.Add(d-time.Millisecond)) || b.refused(other, now) {
			t.Fatalf("strike %d: the penalty is per host", i+1)
		}
		if b.refused(bad, now.Add(d)) {
			t.Fatalf("strike %d: still refused after %v", i+1, d)
		}
		now = now.Add(d)
	}
	// Forgotten after a quiet while: the next strike is a first again.
	if d, strikes := b.strike(bad, now.Add(forgetAfter+time.Second)); d != 250*time.Millisecond || strikes != 1 {
		t.Fatalf("after %v quiet: %v, strike %d", forgetAfter, d, strikes)
	}
	if newPenaltyBox(0, time.Minute).refused(bad, now) {
		t.Fatal("a box with base 0 is off")
	}
}

// The box holds at most maxPenalized hosts, whatever an attacker does.
func TestPenaltyBoxBounded(t *testing.T) {
	b := newPenaltyBox(time.Minute, time.Hour)
	now := time.Unix(1000, 0)
	for i := range 3 * maxPenalized {
		b.strike(&net.TCPAddr{IP: net.IPv4(10, byte(i>>16), byte(i>>8), byte(i))}, now)
	}
	if n := len(b.hosts); n > maxPenalized {
		t.Fatalf("%d hosts held, bound %d", n, maxPenalized)
	}
	// The newest offender is always held.
	last := 3*maxPenalized - 1
	if !b.refused(&net.TCPAddr{IP: net.IPv4(10, byte(last>>16), byte(last>>8), byte(last))}, now) {
		t.Fatal("the newest offender was forgotten")
	}
}
