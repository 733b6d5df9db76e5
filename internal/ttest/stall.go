package ttest

import (
	"sync"
	"time"
)

// Stalls records when this process was held off the CPU: a busy machine
// does not run it for a while, and then no timer fires, no goroutine runs
// and no call returns, whatever the code under test does. A test that
// holds calls to timing bounds judges a bound broken during a stall as the
// machine's doing, not the code's.
type Stalls struct {
	min  time.Duration
	mu   sync.Mutex
	at   [][2]time.Time
	done chan struct{}
	over chan struct{}
}

// WatchStalls records every stretch longer than min in which this process
// did not run a 10 ms ticker, until Stop.
func WatchStalls(min time.Duration) *Stalls {
	s := &Stalls{min: min, done: make(chan struct{}), over: make(chan struct{})}
	go s.watch()
	return s
}

func (s *Stalls) watch() {
	defer close(s.over)
	const tick = 10 * time.Millisecond
	tk := time.NewTicker(tick)
	defer tk.Stop()
	last := time.Now()
	for {
		select {
		case <-s.done:
			return
		case now := <-tk.C:
			if now.Sub(last) > tick+s.min {
				s.mu.Lock()
				s.at = append(s.at, [2]time.Time{last, now})
				s.mu.Unlock()
			}
			last = now
		}
	}
}

// Stop ends the watch.
func (s *Stalls) Stop() {
	select {
	case <-s.done:
	default:
		close(s.done)
	}
	<-s.over
}

// During reports whether a stall overlapped the stretch from from to to.
// A stall is known only once it is over: judge after the fact.
func (s *Stalls) During(from, to time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, st := range s.at {
		if !st[0].After(to) && !st[1].Before(from) {
			return true
		}
	}
	return false
}

// Overlap returns how long this process stalled between from and to: a
// timing bound broken by less than that is the machine's doing.
func (s *Stalls) Overlap(from, to time.Time) time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	var d time.Duration
	for _, st := range s.at {
		a, b := st[0], st[1]
		if a.Before(from) {
			a = from
		}
		if b.After(to) {
			b = to
		}
		if b.After(a) {
			d += b.Sub(a)
		}
	}
	return d
}

// Count returns how many stalls were seen.
func (s *Stalls) Count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.at)
}

// Longest returns the longest stall seen.
func (s *Stalls) Longest() time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	var m time.Duration
	for _, st := range s.at {
		m = max(m, st[1].Sub(st[0]))
	}
	return m
}
