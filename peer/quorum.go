package peer

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Result is one successful call of FirstK.
type Result[T any] struct {
	Peer  *Peer
	Value T
	Took  time.Duration
}

// Errors of FirstK's arguments.
var (
	// ErrQuorumSize means FirstK was asked for fewer than one answer.
	ErrQuorumSize = errors.New("peer: a quorum needs k of at least 1")
	// ErrTooFewPeers means FirstK was given fewer live peers than the k
	// answers it was asked for, so it made no call. The error is a
	// *QuorumError with Live < K.
	ErrTooFewPeers = errors.New("peer: fewer live peers than the quorum")
)

// QuorumError says why FirstK could not get k answers: too few live peers
// to ask (Live < K, no call made; it matches ErrTooFewPeers), or too many
// calls failed (each error in Errors).
type QuorumError struct {
	K, OK  int     // wanted, got
	Live   int     // the live peers among those given
	Errors []error // one per failed call, each naming its peer
}

func (e *QuorumError) Error() string {
	if e.Live < e.K && len(e.Errors) == 0 {
		return fmt.Sprintf("peer: %d live peers for a quorum of %d: no call made", e.Live, e.K)
	}
	return fmt.Sprintf("peer: %d of %d answers; %d failed: %v", e.OK, e.K, len(e.Errors), errors.Join(e.Errors...))
}

// Is reports whether target is ErrTooFewPeers and there were too few.
func (e *QuorumError) Is(target error) bool {
	return target == ErrTooFewPeers && e.Live < e.K && len(e.Errors) == 0
}

// Unwrap returns the calls' errors, for errors.Is and errors.As.
func (e *QuorumError) Unwrap() []error { return e.Errors }

// FirstK calls fn on peers from refs until k calls succeed, and returns
// their results in the order they came. It starts k calls on the peers most
// likely to answer (live and not suspect first); when a call fails it starts
// one on an alternate at once, and when a call is overdue (slower than the
// hedge delay learnt from how fast peers answer, see Hedge) it starts an
// alternate beside it, as Tahoe's downloader does: a slow peer is overdue,
// not dead. Once k have succeeded, the rest are cancelled and FirstK
// returns without waiting for them; their late answers are dropped.
//
// fn gets a context that ends when FirstK no longer needs its answer; it
// must not keep using what FirstK's caller owns after that.
//
// Errors: one matching ErrQuorumSize if k < 1; a *QuorumError matching
// ErrTooFewPeers, before any call, if fewer than k of refs are live; a
// *QuorumError with each call's error if too many calls failed; ctx's error
// if it ended first.
func FirstK[T any](ctx context.Context, refs []*Peer, k int, fn func(ctx context.Context, p *Peer) (T, error)) ([]Result[T], error) {
	if k < 1 {
		return nil, fmt.Errorf("%w: FirstK with k = %d", ErrQuorumSize, k)
	}
	cands := candidates(refs)
	if len(cands) < k {
		return nil, &QuorumError{K: k, Live: len(cands)}
	}
	hedge := hedgeOf(cands)
	delay := hedge.Delay()

	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // the rest are cancelled when we return

	type outcome struct {
		i   int
		v   T
		err error
		d   time.Duration
	}
	// Sized by the calls started, not by the candidates: a read over
	// thousands of references costs what a read over a few does.
	done := make(chan outcome, min(len(cands), 2*k))
	finished := make(chan struct{}) // late answers never block: dropped
	defer close(finished)
	started := make([]time.Time, 0, k)
	hedged := make([]bool, 0, k)
	active := make([]bool, 0, k)
	next, running := 0, 0
	launch := func() {
		i := next
		next++
		running++
		t0 := time.Now()
		active = append(active, true)
		started = append(started, t0)
		hedged = append(hedged, false)
		go func() {
			v, err := fn(ctx, cands[i])
			select {
			case done <- outcome{i, v, err, time.Since(t0)}:
			case <-finished:
			}
		}()
	}
	for next < k {
		launch()
	}

	results := make([]Result[T], 0, k)
	var errs []error
	timer := time.NewTimer(delay)
	defer timer.Stop()
	for {
		select {
		case o := <-done:
			running--
			active[o.i] = false
			if o.err == nil {
				hedge.Observe(o.d)
				results = append(results, Result[T]{Peer: cands[o.i], Value: o.v, Took: o.d})
				if len(results) == k {
					return results, nil
				}
				continue
			}
			errs = append(errs, fmt.Errorf("%v: %w", cands[o.i], o.err))
			if next < len(cands) {
				launch()
			}
			if len(results)+running < k {
				return results, &QuorumError{K: k, OK: len(results), Live: len(cands), Errors: errs}
			}
		case <-timer.C:
			// Every running call older than the delay gets one alternate.
			now := time.Now()
			for i := 0; i < next && next < len(cands); i++ {
				if active[i] && !hedged[i] && started[i].Add(delay).Before(now) {
					hedged[i] = true
					cands[i].markOverdue()
					launch()
				}
			}
		case <-ctx.Done():
			return results, ctx.Err()
		}
		// Re-arm for the oldest running call not yet hedged.
		if wait, ok := nextHedge(started, active, hedged, delay); ok && next < len(cands) {
			timer.Reset(wait)
		}
	}
}

// nextHedge is how long until the oldest active call not yet hedged is
// overdue.
func nextHedge(started []time.Time, active, hedged []bool, delay time.Duration) (time.Duration, bool) {
	var first time.Time
	for i, s := range started {
		if active[i] && !hedged[i] && (first.IsZero() || s.Before(first)) {
			first = s
		}
	}
	if first.IsZero() {
		return 0, false
	}
	return max(time.Until(first.Add(delay)), 0), true
}

// candidates orders the live references: the healthy first, then the
// overdue, then the suspect, each in the order given; the dead are left
// out. One pass, each reference looked at once.
func candidates(refs []*Peer) []*Peer {
	out := make([]*Peer, 0, len(refs))
	var overdue, suspect []*Peer
	for _, p := range refs {
		if p == nil || p.Err() != nil {
			continue
		}
		switch unwell(p) {
		case 0:
			out = append(out, p)
		case 1:
			overdue = append(overdue, p)
		default:
			suspect = append(suspect, p)
		}
	}
	return append(append(out, overdue...), suspect...)
}

var defaultHedge = NewHedge()

func hedgeOf(cands []*Peer) *Hedge {
	if cands[0].reg != nil {
		return cands[0].reg.hedge
	}
	return defaultHedge
}
