package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tetherrpc/tether/rpc"
)

// store holds shares in memory, by key and share index, and serves them.
type store struct {
	maxShare int64

	mu     sync.Mutex
	shares map[string]map[int][]byte
	bytes  int64
}

func newStore(maxShare int64) *store {
	return &store{maxShare: maxShare, shares: make(map[string]map[int][]byte)}
}

const maxKey = 1024

// notFound is the answer for a share this node does not hold. rpc has no
// "not found" code, so it is CodeApplication with a message that says so.
func notFound(key string, index int) *rpc.RemoteError {
	if index < 0 {
		return rpc.Errorf(rpc.CodeApplication, "not found: no share of key %q here", key)
	}
	return rpc.Errorf(rpc.CodeApplication, "not found: no share %d of key %q here", index, key)
}

// check validates a share about to be stored.
func (st *store) check(key string, index int, size int64) error {
	switch {
	case key == "" || len(key) > maxKey:
		return rpc.Errorf(rpc.CodeBadRequest, "key of %d bytes: it must be 1 to %d", len(key), maxKey)
	case index < 0 || index >= maxShares:
		return rpc.Errorf(rpc.CodeBadRequest, "share index %d out of range 0..%d", index, maxShares-1)
	case size < 0 || size > st.maxShare:
		return rpc.Errorf(rpc.CodeMessageTooLarge, "share of %d bytes: this node takes at most %d", size, st.maxShare)
	}
	return nil
}

func (st *store) set(key string, index int, data []byte) {
	st.mu.Lock()
	defer st.mu.Unlock()
	m := st.shares[key]
	if m == nil {
		m = make(map[int][]byte)
		st.shares[key] = m
	}
	st.bytes += int64(len(data)) - int64(len(m[index]))
	m[index] = data
}

func (st *store) lookup(key string, index int) ([]byte, bool) {
	st.mu.Lock()
	defer st.mu.Unlock()
	b, ok := st.shares[key][index]
	return b, ok
}

// put serves share.put: small shares, in one call.
func (st *store) put(ctx context.Context, req putRequest) (struct{}, error) {
	if err := st.check(req.Key, req.Index, int64(len(req.Data))); err != nil {
		return struct{}{}, err
	}
	st.set(req.Key, req.Index, req.Data)
	return struct{}{}, nil
}

// get serves share.get.
func (st *store) get(ctx context.Context, req shareRef) (getReply, error) {
	b, ok := st.lookup(req.Key, req.Index)
	if !ok {
		return getReply{}, notFound(req.Key, req.Index)
	}
	return getReply{Data: b}, nil
}

// list serves share.list: which shares of a key this node holds, and
// their sizes (so that a reader knows whether to fetch them by call or
// by stream).
func (st *store) list(ctx context.Context, req listRequest) ([]shareInfo, error) {
	st.mu.Lock()
	defer st.mu.Unlock()
	m := st.shares[req.Key]
	if len(m) == 0 {
		return nil, notFound(req.Key, -1)
	}
	out := make([]shareInfo, 0, len(m))
	for i, b := range m {
		out = append(out, shareInfo{Index: i, Size: int64(len(b))})
	}
	slices.SortFunc(out, func(a, b shareInfo) int { return a.Index - b.Index })
	return out, nil
}

// upload serves share.upload: the header, a go-ahead (or a refusal, before
// any data is sent), the share's bytes, and the final answer.
func (st *store) upload(ctx context.Context, s *rpc.Stream) error {
	var h uploadHeader
	if err := readMsg(s, &h); err != nil {
		return err
	}
	if err := st.check(h.Key, h.Index, h.Size); err != nil {
		return writeMsg(s, replyOf(err))
	}
	if err := writeMsg(s, streamReply{}); err != nil {
		return err
	}
	data := make([]byte, h.Size)
	if _, err := io.ReadFull(s, data); err != nil {
		return fmt.Errorf("reading share %d of %q: %w", h.Index, h.Key, err)
	}
	st.set(h.Key, h.Index, data)
	return writeMsg(s, streamReply{Size: h.Size})
}

// download serves share.download: the request, then the answer and the
// share's bytes.
func (st *store) download(ctx context.Context, s *rpc.Stream) error {
	var ref shareRef
	if err := readMsg(s, &ref); err != nil {
		return err
	}
	b, ok := st.lookup(ref.Key, ref.Index)
	if !ok {
		return writeMsg(s, replyOf(notFound(ref.Key, ref.Index)))
	}
	if err := writeMsg(s, streamReply{Size: int64(len(b))}); err != nil {
		return err
	}
	_, err := s.Write(b) // blocks while the reader's window is full
	return err
}

func replyOf(err error) streamReply {
	var re *rpc.RemoteError
	if errors.As(err, &re) {
		return streamReply{Code: re.Code, Message: re.Message}
	}
	return streamReply{Code: rpc.CodeApplication, Message: err.Error()}
}

// collectors are the store's own metrics, read when scraped.
func (st *store) collectors() []prometheus.Collector {
	return []prometheus.Collector{
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "storagenode_shares", Help: "Shares held in memory.",
		}, func() float64 {
			st.mu.Lock()
			defer st.mu.Unlock()
			n := 0
			for _, m := range st.shares {
				n += len(m)
			}
			return float64(n)
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "storagenode_share_bytes", Help: "Bytes of shares held in memory.",
		}, func() float64 {
			st.mu.Lock()
			defer st.mu.Unlock()
			return float64(st.bytes)
		}),
	}
}
