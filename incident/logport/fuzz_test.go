package logport

import (
	"bytes"
	"errors"
	"io"
	"testing"
)

type readWriter struct {
	io.Reader
	io.Writer
}

// FuzzSubscriber feeds arbitrary bytes to the subscriber's side as if the
// port sent them: it must never panic, must end with an error, and must
// hand its function only entries in rising order and losses that join up.
func FuzzSubscriber(f *testing.F) {
	var valid []byte
	valid = appendHello(valid, hello{epoch: 7, next: 1, maxCredit: 100})
	valid = appendHeader(valid, frameEntry, 8+3)
	valid = append(valid, 0, 0, 0, 0, 0, 0, 0, 1, '{', '}', '\n')
	valid = appendLoss(valid, Loss{First: 2, Last: 5})
	valid = appendHeader(valid, frameEntry, 8+3)
	valid = append(valid, 0, 0, 0, 0, 0, 0, 0, 9, '{', '}', '\n')
	f.Add(valid)
	f.Add(appendError(appendHello(nil, hello{epoch: 1, next: 3, maxCredit: 1}), CodeClosed, "bye"))
	f.Add([]byte{0x81, 0xff, 0xff, 0xff, 0xff})
	f.Add(appendHello(nil, hello{epoch: 1, next: 1, maxCredit: 1}))
	f.Fuzz(func(t *testing.T, in []byte) {
		cfg := subscribeConfig{window: 4, maxFrame: 1 << 16}
		var last uint64
		started := false
		cfg.hello = func(p Position) { last, started = p.Seq, true }
		_, err := subscribe(readWriter{bytes.NewReader(in), io.Discard}, &cfg, func(e Entry) {
			if !started {
				t.Fatal("an entry before the hello")
			}
			if e.IsLoss() {
				if e.Lost.First != last+1 || e.Lost.Last < e.Lost.First {
					t.Fatalf("loss %v after %d", e.Lost, last)
				}
				last = e.Lost.Last
				return
			}
			if e.Seq != last+1 {
				t.Fatalf("entry %d after %d", e.Seq, last)
			}
			last = e.Seq
		})
		if err == nil {
			t.Fatal("subscribe ended without an error")
		}
	})
}

// FuzzPortFrames feeds arbitrary bytes to the port's side as if a
// subscriber sent them: the first frame must be a valid subscribe, then
// only grants; the port must never panic nor let credit pass its limit.
func FuzzPortFrames(f *testing.F) {
	var valid []byte
	valid = appendSubscribe(valid, subscribeReq{mode: modeFrom, epoch: 3, from: 10})
	valid = appendGrant(valid, 10)
	valid = appendGrant(valid, 1<<63)
	f.Add(valid)
	f.Add(appendGrant(appendSubscribe(nil, subscribeReq{}), DefaultMaxCredit))
	f.Add([]byte("GET / HTTP/1.1\r\n\r\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		p := New(WithMaxCredit(1000))
		s := &sub{wake: make(chan struct{}, 1)}
		r := bytes.NewReader(in)
		var buf [maxClientFrame]byte
		typ, payload, err := readFrame(r, buf[:], maxClientFrame)
		if err != nil {
			return
		}
		if _, err := parseSubscribe(typ, payload); err != nil {
			if !errors.Is(err, ErrProtocol) {
				t.Fatalf("parseSubscribe: %v", err)
			}
			return
		}
		for {
			typ, payload, err := readFrame(r, buf[:], maxClientFrame)
			if err != nil {
				return
			}
			if err := p.grant(s, typ, payload); err != nil {
				if !errors.Is(err, ErrProtocol) {
					t.Fatalf("grant: %v", err)
				}
				return
			}
			if s.credit == 0 || s.credit > 1000 {
				t.Fatalf("credit %d", s.credit)
			}
		}
	})
}

// FuzzIncidentName checks that no name ValidIncidentName accepts can
// leave the directory.
func FuzzIncidentName(f *testing.F) {
	for _, s := range []string{"incident-x.json", "incident-../x.json", "../incident-x.json", "incident-a..b.json", "incident-/.json"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		if !ValidIncidentName(name) {
			return
		}
		if bytes.ContainsAny([]byte(name), "/\\\x00") || bytes.Contains([]byte(name), []byte("..")) {
			t.Fatalf("accepted %q", name)
		}
	})
}
