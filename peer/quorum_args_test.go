package peer

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// FirstK refuses a quorum of no answers, and a quorum larger than the live
// peers given, with errors that say so, and makes no call for either.
func TestFirstKArguments(t *testing.T) {
	r := registry(t, Config{})
	refs := grid(t, r, 3, func(int) time.Duration { return 0 }, func(int) bool { return false }, nil)
	var calls atomic.Int64
	fn := func(ctx context.Context, p *Peer) (byte, error) {
		calls.Add(1)
		return 0, nil
	}
	ctx := context.Background()

	for _, k := range []int{0, -1} {
		res, err := FirstK(ctx, refs, k, fn)
		if !errors.Is(err, ErrQuorumSize) || res != nil {
			t.Fatalf("k = %d: %v, %v; want ErrQuorumSize", k, res, err)
		}
	}

	res, err := FirstK(ctx, refs, 4, fn)
	var qe *QuorumError
	if !errors.Is(err, ErrTooFewPeers) || !errors.As(err, &qe) || qe.Live != 3 || qe.K != 4 || res != nil {
		t.Fatalf("k = 4 of 3: %v, %v; want a *QuorumError matching ErrTooFewPeers", res, err)
	}
	if msg := err.Error(); !strings.Contains(msg, "3 live peers for a quorum of 4") || strings.Contains(msg, "failed") {
		t.Fatalf("k = 4 of 3: message %q", msg)
	}
	if n := calls.Load(); n != 0 {
		t.Fatalf("%d calls made for an impossible quorum", n)
	}

	// A quorum that fails for its calls' errors is not "too few peers".
	fail := func(ctx context.Context, p *Peer) (byte, error) { return 0, errors.New("no share") }
	if _, err := FirstK(ctx, refs, 2, fail); errors.Is(err, ErrTooFewPeers) || !errors.As(err, &qe) || len(qe.Errors) == 0 {
		t.Fatalf("failed calls: %v", err)
	}
}
