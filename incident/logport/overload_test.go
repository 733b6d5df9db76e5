package logport_test

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/tetherrpc/tether/incident/logport"
)

// fakeClock is a clock the test moves by hand.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// Overload notices go out when a subscriber loses entries, at most once an
// hour, each counting every entry lost since the one before.
func TestOverloadNoticeOncePerHour(t *testing.T) {
	clock := &fakeClock{now: time.Date(2026, 11, 25, 14, 0, 0, 0, time.UTC)}
	notices := make(chan logport.Notice, 10)
	e := newEnv(t, logport.WithBudget(logport.MinBudget), logport.WithClock(clock.Now),
		logport.WithOverloadNotice(func(n logport.Notice) { notices <- n }))
	c, _ := e.connect()
	x := subscribe(t, logport.StreamFunc(c.OpenStream), logport.Window(1))

	pad := strings.Repeat("p", 500)
	flood := func() { // about two budgets: drops for sure
		for i := range 2000 {
			e.log.Info("flood", zap.Int("i", i), zap.String("pad", pad))
		}
	}
	dropped := func() uint64 { return e.port.Stats().Dropped }

	flood()
	first := <-notices
	if first.Dropped == 0 || !first.Time.Equal(clock.Now()) || len(first.Peers) != 1 || first.Peers[0] != c.LocalID() {
		t.Fatalf("first notice %+v (subscriber %s)", first, c.LocalID())
	}
	t.Log(first)

	// More drops within the hour: no notice.
	flood()
	clock.Advance(59 * time.Minute)
	flood()
	if st := e.port.Stats(); st.OverloadNotices != 1 {
		t.Fatalf("%d notices within the hour", st.OverloadNotices)
	}
	before := dropped()

	// An hour after the first: the next drop sends one, counting every
	// entry lost since the first notice.
	clock.Advance(time.Minute)
	flood()
	second := <-notices
	if second.Dropped <= before-first.Dropped || !second.Time.Equal(clock.Now()) {
		t.Fatalf("second notice %+v; %d dropped before this flood, %d in the first notice", second, before, first.Dropped)
	}
	// Every drop so far was to overload: the notices account for each.
	if first.Dropped != first.Stats.Dropped || first.Dropped+second.Dropped != second.Stats.Dropped {
		t.Fatalf("notices counted %d and %d; the port had dropped %d, then %d",
			first.Dropped, second.Dropped, first.Stats.Dropped, second.Stats.Dropped)
	}
	if st := e.port.Stats(); st.OverloadNotices != 2 {
		t.Fatalf("%d notices", st.OverloadNotices)
	}
	e.port.Close()
	x.wait(t)
	select {
	case n := <-notices:
		t.Fatalf("a third notice: %+v", n)
	default:
	}
}

// A notice travels to an overload gatherer intact.
func TestSendNotice(t *testing.T) {
	e := newEnv(t)
	got := make(chan logport.Notice, 1)
	from := make(chan string, 1)
	logport.HandleNotices(e.mux, func(f string, n logport.Notice) {
		from <- f
		got <- n
	})
	c, _ := e.connect()
	n := logport.Notice{
		Time: time.Date(2026, 11, 25, 14, 0, 0, 0, time.UTC), Epoch: 42, Dropped: 1000, Peers: []string{"a", "b"},
		Stats: logport.Stats{Produced: 3000, Delivered: 2000, Dropped: 1000, Budget: 4 << 20},
	}
	if err := logport.SendNotice(context.Background(), c, n); err != nil {
		t.Fatal(err)
	}
	if f, m := <-from, <-got; f != c.LocalID() || !m.Time.Equal(n.Time) || m.Epoch != 42 || m.Dropped != 1000 ||
		len(m.Peers) != 2 || m.Stats != n.Stats {
		t.Fatalf("from %s: %+v", f, m)
	}
}
