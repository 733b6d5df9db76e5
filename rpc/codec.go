package rpc

import (
	"fmt"

	"github.com/fxamacker/cbor/v2"
)

// Codec encodes call arguments and replies that are not raw bytes. A []byte
// argument and a *[]byte reply always pass through untouched.
type Codec interface {
	Marshal(v any) ([]byte, error)
	Unmarshal(data []byte, v any) error
}

// CBOR is the default Codec: RFC 8949 CBOR through github.com/fxamacker/cbor,
// a fuzz-hardened decoder, with limits on what one message may make the
// decoder allocate: nesting depth 32, 131072 array elements, 131072 map pairs.
// (Byte and text strings are bounded by the message size limit.)
var CBOR Codec = newCBOR()

type cborCodec struct {
	enc cbor.EncMode
	dec cbor.DecMode
}

func newCBOR() cborCodec {
	eo := cbor.CoreDetEncOptions()
	// A time keeps its tag, so what decodes as a time encodes as one again:
	// without it a map with keys 0 and 1(0) would re-encode with a
	// duplicate key (found by FuzzCodec).
	eo.TimeTag = cbor.EncTagRequired
	enc, err := eo.EncMode()
	if err != nil {
		panic(err)
	}
	dec, err := cbor.DecOptions{
		MaxNestedLevels:  32,
		MaxArrayElements: 131072,
		MaxMapPairs:      131072,
		DupMapKey:        cbor.DupMapKeyEnforcedAPF,
	}.DecMode()
	if err != nil {
		panic(err)
	}
	return cborCodec{enc: enc, dec: dec}
}

func (c cborCodec) Marshal(v any) ([]byte, error) { return c.enc.Marshal(v) }

func (c cborCodec) Unmarshal(data []byte, v any) error { return c.dec.Unmarshal(data, v) }

// encodeArgs returns the bytes of a call's arguments.
func encodeArgs(codec Codec, args any) ([]byte, error) {
	switch a := args.(type) {
	case []byte:
		return a, nil
	case nil:
		return nil, nil
	}
	b, err := codec.Marshal(args)
	if err != nil {
		return nil, fmt.Errorf("rpc: encoding arguments: %w", err)
	}
	return b, nil
}

// decodeReply stores a reply's bytes into reply.
func decodeReply(codec Codec, data []byte, reply any) error {
	switch r := reply.(type) {
	case *[]byte:
		*r = data
		return nil
	case nil:
		return nil
	}
	if err := codec.Unmarshal(data, reply); err != nil {
		return fmt.Errorf("rpc: decoding reply: %w", err)
	}
	return nil
}
