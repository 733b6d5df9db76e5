package liveness

import "time"

// probeBudget spaces out the probes of idle peers that have no kernel
// evidence, so that a Monitor sends at most Config.IdleProbeBudget of them
// a second however many such peers it watches. It hands out slots one
// 1/budget apart, first come first served: a peer asks for one when it
// would be probed, and is probed when its slot comes, so that N such peers
// are each probed about every N/budget (or every Interval, if that is
// longer). It is used by the Monitor's goroutine only.
type probeBudget struct {
	gap  time.Duration // between two slots
	next time.Time     // the first slot not handed out
}

// newProbeBudget returns a budget of perSecond probes a second, or nil (no
// bound) if perSecond is not positive.
func newProbeBudget(perSecond int) *probeBudget {
	if perSecond <= 0 {
		return nil
	}
	return &probeBudget{gap: max(time.Second/time.Duration(perSecond), time.Nanosecond)}
}

// take hands out the next slot and returns when it is: now if it is due
// within batchWindow (checks that close share the Monitor's wake-up
// anyway), or later. A nil budget always returns now.
func (b *probeBudget) take(now time.Time) time.Time {
	if b == nil {
		return now
	}
	slot := b.next
	if slot.Before(now) {
		slot = now // slots unused in the past are not saved up: no bursts
	}
	b.next = slot.Add(b.gap)
	if slot.Sub(now) <= batchWindow {
		return now
	}
	return slot
}
