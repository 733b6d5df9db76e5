package main

import (
	"encoding/binary"
	"fmt"
	"io"

	"github.com/tetherrpc/tether/rpc"
)

// The methods a storage node serves, and what they carry (CBOR, through
// rpc.Typed).
const (
	methodPut      = "share.put"      // putRequest -> struct{}
	methodGet      = "share.get"      // shareRef -> getReply
	methodList     = "share.list"     // listRequest -> []shareInfo
	methodUpload   = "share.upload"   // stream: uploadHeader, Size bytes; <- streamReply
	methodDownload = "share.download" // stream: shareRef; <- streamReply, Size bytes
)

type putRequest struct {
	Key   string
	Index int
	Data  []byte
}

type shareRef struct {
	Key   string
	Index int
}

// getReply wraps the data: a handler made with rpc.Typed CBOR-encodes a
// []byte reply, while a caller's *[]byte reply takes the answer raw, so a
// bare []byte would arrive with its CBOR header still on.
type getReply struct {
	Data []byte
}

type listRequest struct {
	Key string
}

type shareInfo struct {
	Index int
	Size  int64
}

type uploadHeader struct {
	Key   string
	Index int
	Size  int64
}

// streamReply is a stream handler's answer: Code and Message of an error
// (Code 0: none), and for a download the size of the data that follows.
type streamReply struct {
	Code    rpc.Code
	Message string
	Size    int64
}

// The bulk streams begin with a small message each way: a 4-byte length,
// then that many bytes of CBOR. The share's bytes follow raw.
const maxStreamMessage = 64 << 10

func writeMsg(w io.Writer, v any) error {
	b, err := rpc.CBOR.Marshal(v)
	if err != nil {
		return err
	}
	var n [4]byte
	binary.BigEndian.PutUint32(n[:], uint32(len(b)))
	if _, err := w.Write(append(n[:], b...)); err != nil {
		return err
	}
	return nil
}

func readMsg(r io.Reader, v any) error {
	var n [4]byte
	if _, err := io.ReadFull(r, n[:]); err != nil {
		return err
	}
	size := binary.BigEndian.Uint32(n[:])
	if size > maxStreamMessage {
		return fmt.Errorf("stream message of %d bytes, limit %d", size, maxStreamMessage)
	}
	b := make([]byte, size)
	if _, err := io.ReadFull(r, b); err != nil {
		return err
	}
	return rpc.CBOR.Unmarshal(b, v)
}
