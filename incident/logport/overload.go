package logport

import (
	"context"
	"fmt"
	"slices"
	"time"

	"go.uber.org/zap"

	"github.com/tetherrpc/tether/rpc"
)

// Notice tells an overload gatherer that subscribers fell a budget behind
// and lost entries. A port sends at most one per OverloadInterval.
type Notice struct {
	Time    time.Time `cbor:"1,keyasint"`
	Epoch   uint64    `cbor:"2,keyasint"`
	Dropped uint64    `cbor:"3,keyasint"` // entries lost to overload since the previous notice, all subscribers together
	Peers   []string  `cbor:"4,keyasint"` // the subscribers that lost entries since the previous notice (at most 16)
	Stats   Stats     `cbor:"5,keyasint"` // the port's counters then
}

func (n Notice) String() string {
	return fmt.Sprintf("log port overloaded: %d entries lost by slow subscribers %v since the last notice (port: %d subscribers, %d of %d bytes held)",
		n.Dropped, n.Peers, n.Stats.Subscribers, n.Stats.HeldBytes, n.Stats.Budget)
}

// maxNoticePeers bounds Notice.Peers.
const maxNoticePeers = 16

// overloadState rate-limits notices. Guarded by Port.mu.
type overloadState struct {
	dropped uint64    // since the last notice
	peers   []string  // subscribers that lost entries since the last notice
	last    time.Time // when the last notice went
	sent    bool      // whether one ever went
	notices uint64
}

// overloadLocked counts entries lost to eviction and, if an hour has
// passed since the last notice, sends one, off the producer's path.
func (p *Port) overloadLocked(lost uint64, peers []string) {
	o := &p.overload
	o.dropped += lost
	for _, peer := range peers {
		if len(o.peers) < maxNoticePeers && !slices.Contains(o.peers, peer) {
			o.peers = append(o.peers, peer)
		}
	}
	now := p.cfg.now()
	if o.sent && now.Sub(o.last) < OverloadInterval {
		return
	}
	o.sent, o.last = true, now
	o.notices++
	n := Notice{Time: now, Epoch: p.epoch, Dropped: o.dropped, Peers: o.peers, Stats: p.statsLocked()}
	o.dropped, o.peers = 0, nil
	if p.closed {
		return
	}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		p.cfg.logger.Warn(n.String(), zap.Uint64("lost", n.Dropped), zap.Strings("peers", n.Peers))
		if p.cfg.onOverload != nil {
			p.cfg.onOverload(n)
		}
	}()
}

// MethodOverload is the call an overload gatherer serves: see
// HandleNotices and SendNotice.
const MethodOverload = "log.overload"

// SendNotice sends an overload notice to an overload gatherer (a node that
// called HandleNotices), for instance from the WithOverloadNotice hook:
//
//	logport.WithOverloadNotice(func(n logport.Notice) {
//		if g, ok := node.Peers().Get(gathererID); ok {
//			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
//			defer cancel()
//			logport.SendNotice(ctx, g, n)
//		}
//	})
func SendNotice(ctx context.Context, c Caller, n Notice) error {
	b, err := rpc.CBOR.Marshal(n)
	if err != nil {
		return err
	}
	return c.Call(ctx, MethodOverload, b, nil)
}

// HandleNotices registers fn to receive the overload notices other nodes
// send with SendNotice; from is the sender's node ID. fn runs on an rpc
// handler goroutine.
func HandleNotices(r Registrar, fn func(from string, n Notice)) {
	r.Handle(MethodOverload, rpc.Func(func(ctx context.Context, req []byte) ([]byte, error) {
		var n Notice
		if err := rpc.CBOR.Unmarshal(req, &n); err != nil {
			return nil, rpc.Errorf(rpc.CodeBadRequest, "decoding an overload notice: %v", err)
		}
		fn(peerOf(ctx), n)
		return nil, nil
	}))
}
