package main

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tetherrpc/tether/peer"
)

// readTimeout bounds one read. With k healthy nodes a read never comes
// near it; it ends reads that cannot succeed (k above the nodes left).
const readTimeout = 10 * time.Second

// readRec is one k-of-n read.
type readRec struct {
	start time.Duration // since the grid was up
	took  time.Duration
	err   error
	down  bool // the silenced node was unavailable (partitioned or not yet back) when the read began
}

// readers run k-of-n reads (peer.FirstK) over the client's current
// references to storage nodes, in a random order each time, until stopped.
type readers struct {
	ok, failed atomic.Int64
	wg         sync.WaitGroup
	recs       [][]readRec // one slice per reader
}

func startReaders(ctx context.Context, cfg Config, g *grid, t0 time.Time, down *atomic.Bool) *readers {
	r := &readers{recs: make([][]readRec, cfg.Readers)}
	for w := range cfg.Readers {
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			rng := rand.New(rand.NewPCG(cfg.Seed, 1000+uint64(w)))
			prefix := "object-" + strconv.Itoa(w) + "-"
			for n := 0; ctx.Err() == nil; n++ {
				// A new key each time: the calls FirstK no longer waits
				// for may still be encoding the last one.
				key := strconv.AppendInt([]byte(prefix), int64(n), 10)
				refs := g.refs()
				rng.Shuffle(len(refs), func(i, j int) { refs[i], refs[j] = refs[j], refs[i] })
				rec := readRec{start: time.Since(t0), down: down.Load()}
				start := time.Now()
				rctx, cancel := context.WithTimeout(ctx, readTimeout)
				res, err := peer.FirstK(rctx, refs, cfg.K, func(ctx context.Context, p *peer.Peer) ([]byte, error) {
					var s []byte
					err := p.Call(ctx, "share.get", key, &s)
					return s, err
				})
				cancel()
				rec.took = time.Since(start)
				if ctx.Err() != nil {
					return // the run is over: this read does not count
				}
				if err == nil {
					err = g.check(res, key)
				}
				rec.err = err
				if err == nil {
					r.ok.Add(1)
				} else {
					r.failed.Add(1)
				}
				r.recs[w] = append(r.recs[w], rec)
			}
		}()
	}
	return r
}

// check verifies that each answer is its node's share of key.
func (g *grid) check(res []peer.Result[[]byte], key []byte) error {
	for _, r := range res {
		i, ok := g.index[r.Peer.ID()]
		if !ok {
			return fmt.Errorf("answer from %s, not a storage node", r.Peer)
		}
		if !bytes.Equal(r.Value, share(i, key)) {
			return fmt.Errorf("%s answered the wrong share for %q", r.Peer, key)
		}
	}
	return nil
}

// wait waits for the readers and returns every read.
func (r *readers) wait() []readRec {
	r.wg.Wait()
	var all []readRec
	for _, rs := range r.recs {
		all = append(all, rs...)
	}
	return all
}

// holdEnd is how one outstanding call ended.
type holdEnd struct {
	at  time.Time
	err error
}

// holds are calls kept outstanding on one node: "hold" answers only when
// its context ends.
type holds struct {
	inflight atomic.Int64
	wg       sync.WaitGroup
	mu       sync.Mutex
	ends     []holdEnd
}

func startHolds(ctx context.Context, p *peer.Peer, n int) *holds {
	h := &holds{ends: make([]holdEnd, 0, n)}
	h.inflight.Add(int64(n))
	for range n {
		h.wg.Add(1)
		go func() {
			defer h.wg.Done()
			err := p.Call(ctx, "hold", nil, nil)
			at := time.Now()
			h.inflight.Add(-1)
			h.mu.Lock()
			h.ends = append(h.ends, holdEnd{at, err})
			h.mu.Unlock()
		}()
	}
	return h
}

// wait waits for every call and returns how each ended.
func (h *holds) wait() []holdEnd {
	h.wg.Wait()
	return h.ends
}
