package logport

import "time"

// Stats is a consistent snapshot of a port's counters, taken under its
// lock. Produced, Delivered, Dropped and Queued add up over every
// subscription the port has served, ended ones included, so that
//
//	Produced == Delivered + Dropped + Queued
//
// holds exactly in every snapshot, as it does for each subscriber.
type Stats struct {
	// Epoch is the port's epoch (see Port.Epoch).
	Epoch uint64
	// Entries is the last sequence number given: every entry written to
	// the port's core at an enabled level, whoever listened.
	Entries uint64
	// Subscribers is the number of subscriptions now.
	Subscribers int
	// Produced counts entries owed to subscribers: for each subscription,
	// the entries numbered after the point it started from.
	Produced uint64
	// Delivered counts entries written to a subscriber's stream.
	Delivered uint64
	// Dropped counts entries a subscriber will never get: it fell a
	// budget behind, asked to start from entries no longer held, or left
	// with entries still queued.
	Dropped uint64
	// Queued counts entries held for a subscriber, or being written to it.
	Queued uint64
	// Losses counts loss notices sent.
	Losses uint64
	// HeldBytes is the size of the entries the port holds (shared by all
	// subscribers: an entry is held once, however many wait for it).
	HeldBytes int
	// MemoryBytes is what the port's chunks take: held entries, a spare
	// chunk, and chunks senders write from. It never exceeds Budget.
	MemoryBytes int
	// Budget is the memory budget (WithBudget).
	Budget int
	// Oversize counts entries over MaxEntrySize, replaced by stubs.
	Oversize uint64
	// Refused counts subscriptions refused: the port closed, or at its
	// subscriber limit.
	Refused uint64
	// Misbehaved counts subscriptions ended for a protocol violation.
	Misbehaved uint64
	// OverloadNotices counts overload notices handed to the hook.
	OverloadNotices uint64
}

// SubscriberStats is a snapshot of one subscription, in which
//
//	Produced == Delivered + Dropped + Queued
//
// holds exactly.
type SubscriberStats struct {
	ID          uint64    // the port's number for the subscription
	Peer        string    // the subscriber's node ID
	Since       time.Time // when it subscribed
	Credit      uint64    // entries it may still be sent
	Produced    uint64
	Delivered   uint64
	Dropped     uint64
	Queued      uint64
	QueuedBytes int    // size of its queued entries, shared with others
	Losses      uint64 // loss notices sent to it
}

// Stats returns a snapshot of the port's counters.
func (p *Port) Stats() Stats {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.statsLocked()
}

func (p *Port) statsLocked() Stats {
	st := Stats{
		Epoch:           p.epoch,
		Entries:         p.seq,
		Subscribers:     len(p.subs),
		Produced:        p.ended.produced,
		Delivered:       p.ended.delivered,
		Dropped:         p.ended.dropped,
		Losses:          p.ended.losses,
		HeldBytes:       p.heldBytesLocked(),
		MemoryBytes:     p.allocatedLocked() * ChunkSize,
		Budget:          p.cfg.budget,
		Oversize:        p.oversize,
		Refused:         p.refused,
		Misbehaved:      p.misbehave,
		OverloadNotices: p.overload.notices,
	}
	for _, s := range p.subs {
		ss := p.subStatsLocked(s)
		st.Produced += ss.Produced
		st.Delivered += ss.Delivered
		st.Dropped += ss.Dropped
		st.Queued += ss.Queued
		st.Losses += ss.Losses
	}
	return st
}

// Subscribers returns a snapshot of each current subscription.
func (p *Port) Subscribers() []SubscriberStats {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]SubscriberStats, len(p.subs))
	for i, s := range p.subs {
		out[i] = p.subStatsLocked(s)
	}
	return out
}

func (p *Port) subStatsLocked(s *sub) SubscriberStats {
	st := SubscriberStats{
		ID:        s.id,
		Peer:      s.peer,
		Since:     s.since,
		Credit:    s.credit,
		Produced:  p.seq - s.start,
		Delivered: s.delivered,
		Dropped:   s.dropped,
		Queued:    p.seq + 1 - s.next + uint64(s.sending),
		Losses:    s.losses,
	}
	st.QueuedBytes = s.sendBytes
	for no := s.cur; ; no++ {
		c := p.chunkNo(no)
		if c == nil {
			break
		}
		if no == s.cur {
			st.QueuedBytes += len(c.buf) - s.off
		} else {
			st.QueuedBytes += len(c.buf)
		}
	}
	return st
}
