package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
)

// The share scheme: replication arranged so that any k of n shares rebuild
// the file. (No erasure code: the standard library has none, and this
// example adds no dependency.)
//
// The file is cut into n pieces of near-equal size (they differ by at most
// one byte). Share j holds the n-k+1 consecutive pieces j, j+1, ..., j+n-k
// (mod n). Piece i is then held by the n-k+1 shares i-(n-k), ..., i (mod
// n); any k shares leave out only n-k, so at least one of them holds piece
// i, for every i: any k of the n shares rebuild the file, and some k-1 do
// not (for k > 1). The price is storage: each share is (n-k+1)/n of the
// file, n-k+1 copies in all, where an erasure code (Tahoe's zfec) stores
// n/k. For k = n it is plain striping, for k = 1 plain replication.
//
// Each share starts with a header that makes it self-describing, so a
// reader needs nothing but k shares:
//
//	magic "tsh1" | file size (8) | k (2) | n (2) | share index (2) | SHA-256 of the file (32)
const (
	shareMagic      = "tsh1"
	shareHeaderSize = 4 + 8 + 2 + 2 + 2 + sha256.Size
	maxShares       = 256
)

// share is one parsed share.
type share struct {
	index, k, n int
	size        int64 // of the whole file
	sum         [sha256.Size]byte
	body        []byte // pieces index, index+1, ..., index+n-k (mod n), back to back
}

// piece returns where piece i of a file of size bytes lies in the file.
func piece(size int64, n, i int) (off, length int64) {
	base, rem := size/int64(n), size%int64(n)
	off = int64(i)*base + min(int64(i), rem)
	length = base
	if int64(i) < rem {
		length++
	}
	return off, length
}

// split cuts data into n shares of which any k rebuild it.
func split(data []byte, k, n int) ([][]byte, error) {
	if n < 1 || n > maxShares || k < 1 || k > n {
		return nil, fmt.Errorf("need 1 <= k <= n <= %d, got k=%d n=%d", maxShares, k, n)
	}
	size := int64(len(data))
	sum := sha256.Sum256(data)
	shares := make([][]byte, n)
	for j := range n {
		var h [shareHeaderSize]byte
		copy(h[:], shareMagic)
		binary.BigEndian.PutUint64(h[4:], uint64(size))
		binary.BigEndian.PutUint16(h[12:], uint16(k))
		binary.BigEndian.PutUint16(h[14:], uint16(n))
		binary.BigEndian.PutUint16(h[16:], uint16(j))
		copy(h[18:], sum[:])
		b := append(make([]byte, 0, shareHeaderSize+int(size)*(n-k+1)/n+n), h[:]...)
		for d := range n - k + 1 {
			off, l := piece(size, n, (j+d)%n)
			b = append(b, data[off:off+l]...)
		}
		shares[j] = b
	}
	return shares, nil
}

// parseShare checks a share's header and the length of its body.
func parseShare(b []byte) (*share, error) {
	if len(b) < shareHeaderSize || string(b[:4]) != shareMagic {
		return nil, errors.New("not a share: bad header")
	}
	s := &share{
		size:  int64(binary.BigEndian.Uint64(b[4:])),
		k:     int(binary.BigEndian.Uint16(b[12:])),
		n:     int(binary.BigEndian.Uint16(b[14:])),
		index: int(binary.BigEndian.Uint16(b[16:])),
		body:  b[shareHeaderSize:],
	}
	copy(s.sum[:], b[18:])
	if s.n < 1 || s.n > maxShares || s.k < 1 || s.k > s.n || s.index >= s.n || s.size < 0 {
		return nil, fmt.Errorf("not a share: k=%d n=%d index=%d", s.k, s.n, s.index)
	}
	var want int64
	for d := range s.n - s.k + 1 {
		_, l := piece(s.size, s.n, (s.index+d)%s.n)
		want += l
	}
	if int64(len(s.body)) != want {
		return nil, fmt.Errorf("share %d: body of %d bytes, want %d", s.index, len(s.body), want)
	}
	return s, nil
}

// join rebuilds the file from shares (any k distinct ones suffice) and
// checks it against the SHA-256 the shares carry.
func join(shares []*share) ([]byte, error) {
	if len(shares) == 0 {
		return nil, errors.New("no shares")
	}
	f := shares[0]
	data := make([]byte, f.size)
	have := make([]bool, f.n)
	for _, s := range shares {
		if s.size != f.size || s.k != f.k || s.n != f.n || s.sum != f.sum {
			return nil, fmt.Errorf("share %d belongs to another file than share %d", s.index, f.index)
		}
		pos := int64(0)
		for d := range s.n - s.k + 1 {
			i := (s.index + d) % s.n
			off, l := piece(s.size, s.n, i)
			copy(data[off:off+l], s.body[pos:pos+l])
			pos += l
			have[i] = true
		}
	}
	for i, ok := range have {
		if !ok {
			return nil, fmt.Errorf("piece %d of %d is on none of the %d shares read", i, f.n, len(shares))
		}
	}
	if sum := sha256.Sum256(data); !bytes.Equal(sum[:], f.sum[:]) {
		return nil, errors.New("rebuilt file does not match its SHA-256")
	}
	return data, nil
}
