package incident_test

import (
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/tetherrpc/tether/incident"
)

// callTimes collects call durations from many goroutines.
type callTimes struct {
	mu        sync.Mutex
	triggers  []time.Duration
	ordinary  []time.Duration
	startedAt time.Time
}

func (c *callTimes) add(trig, ord []time.Duration) {
	c.mu.Lock()
	c.triggers = append(c.triggers, trig...)
	c.ordinary = append(c.ordinary, ord...)
	c.mu.Unlock()
}

// storm has 1,000 goroutines each log 10 Errors (triggers) and 10 Infos,
// each through a logger naming its own peer, timing every call.
func storm(t *testing.T, log *zap.Logger) *callTimes {
	const goroutines, perG = 1000, 10
	ct := &callTimes{}
	runAll(t, goroutines, time.Minute, func(g int) {
		l := log.With(zap.String(incident.PeerKey, fmt.Sprintf("peer-%03d", g)))
		trig := make([]time.Duration, 0, perG)
		ord := make([]time.Duration, 0, perG)
		for i := range perG {
			// Half the goroutines start with an ordinary call, so that the
			// rush at the start does not land on one kind only.
			if g%2 == 0 {
				ord = append(ord, timed(func() { l.Info("ordinary", zap.Int("i", i)) }))
			}
			trig = append(trig, timed(func() { l.Error("call failed", zap.Int("i", i)) }))
			if g%2 == 1 {
				ord = append(ord, timed(func() { l.Info("ordinary", zap.Int("i", i)) }))
			}
		}
		ct.add(trig, ord)
	})
	return ct
}

func timed(f func()) time.Duration {
	t0 := time.Now()
	f()
	return time.Since(t0)
}

func mean(ds []time.Duration) time.Duration {
	var sum time.Duration
	for _, d := range ds {
		sum += d
	}
	return sum / time.Duration(len(ds))
}

func (c *callTimes) check(t *testing.T, name string) {
	t.Helper()
	tmean, tp50, tp99, tmax := mean(c.triggers), percentile(c.triggers, 0.5), percentile(c.triggers, 0.99), slices.Max(c.triggers)
	omean, op50, op99, omax := mean(c.ordinary), percentile(c.ordinary, 0.5), percentile(c.ordinary, 0.99), slices.Max(c.ordinary)
	t.Logf("%s: trigger calls mean %v p50 %v p99 %v max %v; ordinary calls mean %v p50 %v p99 %v max %v",
		name, tmean, tp50, tp99, tmax, omean, op50, op99, omax)
	// A trigger only appends to memory, like an ordinary call: same order
	// of magnitude. With 1,000 goroutines on one lock, the time of a call
	// is mostly its wait in the lock's queue, which both kinds share; the
	// slack covers a loaded 2-core machine under -race.
	if tmean > 4*omean+200*time.Microsecond {
		t.Errorf("%s: trigger calls take %v on average, ordinary calls %v", name, tmean, omean)
	}
	// A call that waited for the disk would never return (the disk hangs
	// until the storm is over); this bound is for scheduling noise only.
	if tmax > time.Second {
		t.Errorf("%s: slowest trigger call %v", name, tmax)
	}
}

func TestRecorderStorm(t *testing.T) {
	gate := make(chan struct{})
	var once sync.Once
	release := func() { once.Do(func() { close(gate) }) }
	defer release()
	entered := make(chan struct{}, 1)
	rec, clk, fsys, log := newTestRecorder(t)
	fsys.onCreate = func(int, string) error {
		entered <- struct{}{}
		<-gate // the disk hangs until the test lets go
		return nil
	}
	for i := range 1000 {
		log.Info("history", zap.Int("i", i))
	}

	// The storm: 10,000 triggers inside one window fold into one incident.
	first := storm(t, log)
	first.check(t, "storm inside the window")
	st := rec.Stats()
	if st.Incidents != 1 || st.Triggers != 10000 || st.Folded != 9999 {
		t.Fatalf("stats %+v", st)
	}

	// The window ends; the writer goes to a disk that hangs.
	clk.Advance(incident.DefaultTrailingWindow)
	select {
	case <-entered:
	case <-time.After(10 * time.Second):
		t.Fatal("incident not handed to the writer")
	}

	// A second storm while the disk hangs: rate-limited, and no caller waits.
	second := storm(t, log)
	second.check(t, "storm while the disk hangs")
	st = rec.Stats()
	if st.Incidents != 1 || st.Suppressed != 10000 || st.Written != 0 {
		t.Fatalf("stats %+v", st)
	}

	release()
	path := fsys.written(t)
	if err := rec.Close(); err != nil {
		t.Fatal(err)
	}
	if files := rec.Files(); len(files) != 1 || files[0] != path {
		t.Fatalf("files %v, want exactly one", files)
	}
	h, lines, tr := readIncident(t, path)
	if tr.Triggers != 10000 || tr.Folded != 9999 {
		t.Errorf("trailer counts %d triggers (%d folded), want 10000", tr.Triggers, tr.Folded)
	}
	// 1,000 peers, 10 triggers each: the first 100 listed, the triggers of
	// the other 900 counted.
	if len(tr.Peers) != incident.DefaultMaxPeers || tr.PeersOmitted != 9000 {
		t.Errorf("%d peers listed, %d omitted; want %d, 9000", len(tr.Peers), tr.PeersOmitted, incident.DefaultMaxPeers)
	}
	// 21,000 entries were recorded before the window closed; those after
	// the opening trigger are trailing, and the first 100 of them are kept.
	if after := 21000 - h.TriggerSeq; tr.Trailing != incident.DefaultTrailingEntries || uint64(tr.Trailing)+tr.TrailingOmitted != after {
		t.Errorf("trailing %d kept, %d omitted; want %d in all", tr.Trailing, tr.TrailingOmitted, after)
	}
	if h.History != incident.DefaultInfoHistory || len(lines) != h.History+1+tr.Trailing {
		t.Errorf("history %d, %d lines", h.History, len(lines))
	}
}
