package rpc

import (
	"context"
	"errors"
	"fmt"
	"testing"
)

// Every code this package documents has a sentinel that errors.Is matches,
// and no other sentinel matches it.
func TestEveryCodeHasASentinel(t *testing.T) {
	sentinels := map[Code]error{
		CodeUnknown:           ErrUnknownCode,
		CodeApplication:       ErrApplication,
		CodeUnknownMethod:     ErrUnknownMethod,
		CodeResourceExhausted: ErrTooManyCalls,
		CodeMessageTooLarge:   ErrMessageTooLarge,
		CodeBadRequest:        ErrBadRequest,
		CodeInternal:          ErrInternal,
		CodeCanceled:          context.Canceled,
		CodeDeadlineExceeded:  context.DeadlineExceeded,
		CodeUnavailable:       ErrUnavailable,
		CodeNotFound:          ErrNotFound,
	}
	for code := range Code(len(codeNames)) {
		want, ok := sentinels[code]
		if !ok {
			t.Fatalf("code %v has no sentinel in this test", code)
		}
		err := fmt.Errorf("calling: %w", &RemoteError{Code: code, Message: "x"})
		for other, s := range sentinels {
			if got := errors.Is(err, s); got != (other == code) {
				t.Errorf("errors.Is(%v error, %v) = %v", code, s, got)
			}
		}
		if !errors.Is(err, want) {
			t.Errorf("code %v does not match %v", code, want)
		}
	}
	if !errors.Is(&RemoteError{Code: 999}, ErrUnknownCode) || errors.Is(&RemoteError{Code: CodeApp + 1}, ErrUnknownCode) {
		t.Error("ErrUnknownCode: codes below CodeApp unknown here match, application codes do not")
	}
}

// A *RemoteError serves as a sentinel of its code, and of its message when
// it has one.
func TestRemoteErrorAsSentinel(t *testing.T) {
	draining := &RemoteError{Code: CodeUnavailable, Message: "node is draining"}
	got := &RemoteError{Code: CodeUnavailable, Method: "m", Message: "node is draining"}
	if !errors.Is(got, draining) || !errors.Is(got, &RemoteError{Code: CodeUnavailable}) || !errors.Is(got, ErrUnavailable) {
		t.Fatal("a refusal does not match its sentinels")
	}
	if errors.Is(&RemoteError{Code: CodeUnavailable, Message: "other"}, draining) || errors.Is(&RemoteError{Code: CodeInternal, Message: "node is draining"}, draining) {
		t.Fatal("a sentinel *RemoteError matches another message or code")
	}
}

// The sentinels of the remote codes reach the caller over a connection:
// a panic is ErrInternal, an undecodable request ErrBadRequest, and a
// handler that wraps ErrUnavailable or ErrBadRequest answers with their
// codes.
func TestRemoteSentinelsOverTheWire(t *testing.T) {
	m := NewMux()
	m.Handle("panic", Func(func(context.Context, []byte) ([]byte, error) { panic("boom") }))
	m.Handle("typed", Typed(func(ctx context.Context, n int) (int, error) { return n, nil }))
	m.Handle("busy", Func(func(context.Context, []byte) ([]byte, error) {
		return nil, fmt.Errorf("shedding load: %w", ErrUnavailable)
	}))
	m.Handle("bad", Func(func(context.Context, []byte) ([]byte, error) {
		return nil, fmt.Errorf("key too long: %w", ErrBadRequest)
	}))
	m.Handle("fail", Func(func(context.Context, []byte) ([]byte, error) { return nil, errors.New("disk on fire") }))
	c, _ := pair(t, "pipe", nil, &Config{Mux: m})
	ctx := context.Background()
	for _, tc := range []struct {
		method string
		args   any
		want   error
		code   Code
	}{
		{"panic", nil, ErrInternal, CodeInternal},
		{"typed", []byte{0xff}, ErrBadRequest, CodeBadRequest},
		{"busy", nil, ErrUnavailable, CodeUnavailable},
		{"bad", nil, ErrBadRequest, CodeBadRequest},
		{"fail", nil, ErrApplication, CodeApplication},
	} {
		err := c.Call(ctx, tc.method, tc.args, nil)
		var re *RemoteError
		if !errors.Is(err, tc.want) || !errors.As(err, &re) || re.Code != tc.code {
			t.Errorf("%s: %v, want %v (code %v)", tc.method, err, tc.want, tc.code)
		}
	}
}
