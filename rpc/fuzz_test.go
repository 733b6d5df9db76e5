package rpc

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"testing"
	"time"
)

// FuzzFrames feeds arbitrary bytes to the control stream's decoder: it must
// never panic, must refuse what the limits forbid, and what it accepts must
// encode back to the same bytes.
func FuzzFrames(f *testing.F) {
	f.Add(appendRequest(nil, kindRequest, 1, time.Second, "storage.get", []byte("args")))
	f.Add(appendRequest(nil, kindStreamOpen, 2, 0, "share.upload", nil))
	f.Add(append(appendHeader(nil, kindResponse, 3, 1), "abc"...))
	f.Add(appendError(nil, 4, CodeUnknownMethod, "no handler"))
	f.Add(appendHeader(appendHeader(nil, kindCancel, 0, 9), kindCancel, 0, 1))
	f.Add(append(appendHeader(nil, kindGoAway, 6, 0), "closed"...))
	f.Add([]byte{42, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 1})
	const limit = 1 << 16
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bufio.NewReader(bytes.NewReader(data))
		var hb [headerSize]byte
		for {
			h, p, err := readFrame(r, hb[:], limit)
			if err != nil {
				if !errors.Is(err, ErrProtocolViolation) && err != io.EOF && err != io.ErrUnexpectedEOF {
					t.Fatalf("unexpected error class: %v", err)
				}
				return
			}
			if int(h.length) != len(p) {
				t.Fatalf("header says %d bytes, payload has %d", h.length, len(p))
			}
			switch h.kind {
			case kindRequest, kindStreamOpen:
				timeout, method, args, err := parseRequest(p)
				if err != nil {
					if !errors.Is(err, ErrProtocolViolation) {
						t.Fatal(err)
					}
					continue
				}
				if len(args) > limit {
					t.Fatalf("%d bytes of arguments passed a limit of %d", len(args), limit)
				}
				again := appendRequest(nil, h.kind, h.id, timeout, string(method), args)
				if !bytes.Equal(again[headerSize:], p) {
					t.Fatalf("request does not round-trip:\n% x\n% x", p, again[headerSize:])
				}
			case kindError:
				re, err := parseError(p)
				if err == nil && len(re.Message)+2 != len(p) {
					t.Fatalf("error message of %d bytes from %d", len(re.Message), len(p))
				}
			case kindResponse:
				if len(p) > limit {
					t.Fatalf("%d-byte response passed a limit of %d", len(p), limit)
				}
			}
		}
	})
}

// FuzzHandshake feeds arbitrary bytes to the hello parser: no panic, and
// what it accepts round-trips.
func FuzzHandshake(f *testing.F) {
	f.Add((&hello{version: ProtocolVersion, maxMessage: 1 << 22, maxCalls: 1024, id: "abcdefghijklmnopqrstuvwxyz"}).marshal())
	f.Add((&hello{version: ProtocolVersion, status: statusRefuse, id: "unsupported protocol version 2"}).marshal())
	f.Add((&hello{version: 99, maxMessage: 1, maxCalls: 1, id: "future"}).marshal())
	f.Add([]byte("GET / HTTP/1.1\r\n\r\n"))
	f.Add([]byte("TTHR\x00\x01\x00\x00\x00\x00\x00\x01\x00\x00\x00\x01\xff\xff"))
	f.Fuzz(func(t *testing.T, data []byte) {
		h, err := readHello(bytes.NewReader(data))
		if err != nil {
			if !errors.Is(err, ErrProtocolViolation) && !errors.Is(err, ErrIncompatible) &&
				err != io.EOF && err != io.ErrUnexpectedEOF {
				t.Fatalf("unexpected error class: %v", err)
			}
			return
		}
		again, err := readHello(bytes.NewReader(h.marshal()))
		if err != nil || *again != *h {
			t.Fatalf("hello does not round-trip: %+v -> %+v, %v", h, again, err)
		}
		if h.status == statusHello && (h.id == "" || h.maxCalls == 0 || h.maxMessage == 0) {
			t.Fatalf("accepted a hello without an ID or limits: %+v", h)
		}
	})
}
