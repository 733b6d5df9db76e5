package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/peer"
	"github.com/tetherrpc/tether/rpc"
)

// client puts files on storage nodes as shares and gets them back. It is a
// tether node of its own, which dials the storage nodes.
type client struct {
	node        *tether.Node
	out         io.Writer    // the progress report
	refs        []*peer.Peer // the storage nodes, in the order given; nil where the dial failed
	streamAbove int64        // shares larger than this go over streams, not calls
}

// dialTimeout bounds each dial to a storage node.
const dialTimeout = 3 * time.Second

// startClient starts the client's node and dials every address at once;
// those that fail are reported to out and left out.
func startClient(ctx context.Context, cfg nodeConfig, addrs []string, streamAbove int64, out io.Writer) (*client, error) {
	n, err := tether.Listen("127.0.0.1:0", tether.WithLogger(cfg.logger), tether.WithHeartbeat(cfg.heartbeat))
	if err != nil {
		return nil, err
	}
	watchPeers(n, cfg.onEvent)
	c := &client{node: n, out: out, refs: make([]*peer.Peer, len(addrs)), streamAbove: streamAbove}
	errs := make([]error, len(addrs))
	var wg sync.WaitGroup
	for i, a := range addrs {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(ctx, dialTimeout)
			defer cancel()
			c.refs[i], errs[i] = n.Dial(ctx, a)
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			fmt.Fprintf(out, "%s: not connected: %v\n", addrs[i], err)
		}
	}
	return c, nil
}

func (c *client) close() error { return c.node.Close() }

// live returns the storage nodes still connected, in the order given.
func (c *client) live() []*peer.Peer {
	var out []*peer.Peer
	for _, p := range c.refs {
		if p != nil && p.Err() == nil {
			out = append(out, p)
		}
	}
	return out
}

// put stores data under key as n shares, share j on the j-th storage node
// connected, any k of which rebuild it. Every share must be stored.
func (c *client) put(ctx context.Context, key string, data []byte, k, n int) error {
	live := c.live()
	if len(live) < n {
		return fmt.Errorf("%d shares need %d storage nodes; %d are connected", n, n, len(live))
	}
	shares, err := split(data, k, n)
	if err != nil {
		return err
	}
	fmt.Fprintf(c.out, "put %q: %d bytes as %d shares, any %d of which rebuild it (each holds %d of the file's %d pieces)\n",
		key, len(data), n, k, n-k+1, n)
	t0 := time.Now()
	errs := make([]error, n)
	took := make([]time.Duration, n)
	var wg sync.WaitGroup
	for j := range n {
		wg.Go(func() {
			t := time.Now()
			errs[j] = c.putShare(ctx, live[j], key, j, shares[j])
			took[j] = time.Since(t)
		})
	}
	wg.Wait()
	for j := range n {
		status := "ok"
		if errs[j] != nil {
			status = errs[j].Error()
		}
		fmt.Fprintf(c.out, "  share %d  %9d B  -> %-30s %10v  %s  %s\n",
			j, len(shares[j]), name(live[j]), took[j].Round(time.Microsecond), c.how(len(shares[j])), status)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("put %q: %w", key, err)
	}
	fmt.Fprintf(c.out, "stored in %v\n", time.Since(t0).Round(time.Microsecond))
	return nil
}

// get reads key back from the first k storage nodes to answer: peer.FirstK
// starts k reads on the healthiest nodes, an alternate at once beside any
// that fails, and one beside any slower than the hedge delay it learns.
func (c *client) get(ctx context.Context, key string, k int) ([]byte, error) {
	refs := c.node.Peers().List()
	fmt.Fprintf(c.out, "get %q: %d of %d live storage nodes, hedge delay %v\n",
		key, k, len(refs), c.node.Peers().Hedge().Delay())
	t0 := time.Now()
	res, err := peer.FirstK(ctx, refs, k, func(ctx context.Context, p *peer.Peer) (*share, error) {
		return c.fetch(ctx, p, key)
	})
	if err != nil {
		return nil, fmt.Errorf("get %q: %w", key, err)
	}
	shares := make([]*share, len(res))
	for i, r := range res {
		shares[i] = r.Value
		fmt.Fprintf(c.out, "  share %d  %9d B  <- %-30s %10v  %s\n",
			r.Value.index, len(r.Value.body)+shareHeaderSize, name(r.Peer), r.Took.Round(time.Microsecond), c.how(len(r.Value.body)+shareHeaderSize))
	}
	data, err := join(shares)
	if err != nil {
		return nil, fmt.Errorf("get %q: %w", key, err)
	}
	fmt.Fprintf(c.out, "rebuilt %d bytes in %v, SHA-256 verified\n", len(data), time.Since(t0).Round(time.Microsecond))
	return data, nil
}

// fetch reads the share of key that p holds (the first, if several).
func (c *client) fetch(ctx context.Context, p *peer.Peer, key string) (*share, error) {
	var infos []shareInfo
	if err := p.Call(ctx, methodList, listRequest{Key: key}, &infos); err != nil {
		return nil, err
	}
	if len(infos) == 0 {
		return nil, notFound(key, -1)
	}
	info := infos[0]
	var b []byte
	if info.Size > c.streamAbove {
		var err error
		if b, err = download(ctx, p, shareRef{Key: key, Index: info.Index}); err != nil {
			return nil, err
		}
	} else {
		var r getReply
		if err := p.Call(ctx, methodGet, shareRef{Key: key, Index: info.Index}, &r); err != nil {
			return nil, err
		}
		b = r.Data
	}
	return parseShare(b)
}

func (c *client) putShare(ctx context.Context, p *peer.Peer, key string, index int, data []byte) error {
	if int64(len(data)) > c.streamAbove {
		return upload(ctx, p, uploadHeader{Key: key, Index: index, Size: int64(len(data))}, data)
	}
	return p.Call(ctx, methodPut, putRequest{Key: key, Index: index, Data: data}, nil)
}

func (c *client) how(size int) string {
	if int64(size) > c.streamAbove {
		return "stream"
	}
	return "call  "
}

// upload sends a share over a share.upload stream: the header, then the
// data once the node has agreed to take it.
func upload(ctx context.Context, p *peer.Peer, h uploadHeader, data []byte) error {
	s, err := p.Stream(ctx, methodUpload)
	if err != nil {
		return err
	}
	defer s.Close()
	if err := writeMsg(s, h); err != nil {
		return err
	}
	if err := readReply(s, methodUpload); err != nil {
		return err
	}
	if _, err := s.Write(data); err != nil {
		return err
	}
	if err := s.CloseWrite(); err != nil {
		return err
	}
	if err := readReply(s, methodUpload); err != nil {
		return err
	}
	return expectEOF(s)
}

// download reads a share over a share.download stream.
func download(ctx context.Context, p *peer.Peer, ref shareRef) ([]byte, error) {
	s, err := p.Stream(ctx, methodDownload)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	if err := writeMsg(s, ref); err != nil {
		return nil, err
	}
	if err := s.CloseWrite(); err != nil {
		return nil, err
	}
	var r streamReply
	if err := readMsg(s, &r); err != nil {
		return nil, err
	}
	if r.Code != 0 {
		return nil, &rpc.RemoteError{Code: r.Code, Method: methodDownload, Message: r.Message}
	}
	if r.Size < 0 || r.Size > maxDownload {
		return nil, fmt.Errorf("%s: share of %d bytes, more than this client takes", methodDownload, r.Size)
	}
	b := make([]byte, r.Size)
	if _, err := io.ReadFull(s, b); err != nil {
		return nil, err
	}
	return b, expectEOF(s)
}

// maxDownload bounds what a client allocates for one share.
const maxDownload = 1 << 30

// readReply reads a stream handler's answer, as an error if it is one.
func readReply(s *rpc.Stream, method string) error {
	var r streamReply
	if err := readMsg(s, &r); err != nil {
		return err
	}
	if r.Code != 0 {
		return &rpc.RemoteError{Code: r.Code, Method: method, Message: r.Message}
	}
	return nil
}

// expectEOF reads the end of the stream, so that closing it does not
// cancel a handler that has finished anyway.
func expectEOF(s *rpc.Stream) error {
	var b [1]byte
	if n, err := s.Read(b[:]); n > 0 || err != io.EOF {
		if err == nil {
			err = errors.New("unexpected data after the answer")
		}
		return err
	}
	return nil
}

// name is how the report names a peer: its address and the start of its ID.
func name(p *peer.Peer) string {
	id := string(p.ID())
	if len(id) > 8 {
		id = id[:8]
	}
	return p.Addr() + " (" + id + ")"
}
