package rpc

import (
	"context"
	"errors"
	"fmt"
)

// Sentinel errors. Every error the package returns matches at most a few of
// these with errors.Is; the concrete types below carry the details.
var (
	// ErrDeadReference means the connection to the peer is gone: closed,
	// reset, evicted for missed heartbeats, or aborted after a protocol
	// violation. A call that returns it was not answered and will never be.
	// The concrete error is a *DeadError naming the peer and the cause.
	ErrDeadReference = errors.New("dead reference")

	// ErrProtocolViolation means the peer sent something malformed: a bad
	// frame, an oversize frame, a response to a call never made. It closes
	// that connection only. It is usually found wrapped in a *DeadError as
	// the cause.
	ErrProtocolViolation = errors.New("protocol violation")

	// ErrHandshake means the connection never became usable: the handshake
	// timed out, was refused, or the peer's identity was not the one asked for.
	ErrHandshake = errors.New("handshake failed")

	// ErrIncompatible means the peer speaks a protocol version we do not.
	ErrIncompatible = errors.New("incompatible protocol version")

	// ErrMessageTooLarge means a request or response exceeds the receiver's
	// message size limit. The caller gets it before anything is sent; a
	// handler's oversize reply reaches the caller as a *RemoteError that
	// matches it.
	ErrMessageTooLarge = errors.New("message too large")

	// ErrTooManyCalls means the peer's limit on concurrent calls (or
	// streams) from one connection is reached. The caller gets it before
	// anything is sent; a peer that enforces its limit answers with a
	// *RemoteError that matches it.
	ErrTooManyCalls = errors.New("too many concurrent calls")

	// ErrClosed is the cause of death of a connection closed on this side.
	ErrClosed = errors.New("connection closed")

	// ErrPeerLeft is the cause of death of a connection whose peer said
	// goodbye (it closed or is draining): no wait for missed heartbeats.
	ErrPeerLeft = errors.New("peer left")

	// ErrUnknownMethod matches the *RemoteError a peer returns for a method
	// it has no handler for.
	ErrUnknownMethod = errors.New("unknown method")

	// ErrNotFound matches a *RemoteError with CodeNotFound: a handler's way
	// to say that what the request names does not exist.
	ErrNotFound = errors.New("not found")

	// ErrSelf means a connection reached this very node (an address of its
	// own among its peers'): the handshake refuses it.
	ErrSelf = errors.New("the peer is this node itself")

	// ErrTLSMismatch means one side of a connection requires TLS and the
	// other does not use it: the handshake fails, saying which side.
	ErrTLSMismatch = errors.New("TLS on one side only")

	// ErrApplication matches a *RemoteError with CodeApplication: the
	// remote handler returned an ordinary error.
	ErrApplication = errors.New("application error")

	// ErrBadRequest matches a *RemoteError with CodeBadRequest: the peer
	// could not decode the request. A handler may return an error wrapping
	// it to answer with that code.
	ErrBadRequest = errors.New("bad request")

	// ErrInternal matches a *RemoteError with CodeInternal: the remote
	// handler panicked (the peer logged the panic and its stack).
	ErrInternal = errors.New("internal error: the handler panicked")

	// ErrUnavailable matches a *RemoteError with CodeUnavailable: the peer
	// takes no new calls (it is draining), so the call was not run and may
	// go to another peer. A handler may return an error wrapping it to
	// answer with that code.
	ErrUnavailable = errors.New("unavailable")

	// ErrUnknownCode matches a *RemoteError whose code this version does
	// not know: CodeUnknown, or a code below CodeApp given no meaning here.
	// Codes from CodeApp up belong to applications and match no sentinel.
	ErrUnknownCode = errors.New("unknown error code")
)

// DeadError is the error of every call on a dead connection. It matches
// ErrDeadReference with errors.Is, and unwraps to its cause (for instance an
// error matching ErrProtocolViolation, or io.EOF when the peer closed).
type DeadError struct {
	Peer  string // the peer's ID, or its address when the ID is unknown
	Cause error  // why the connection died; never nil
}

func (e *DeadError) Error() string {
	return fmt.Sprintf("dead reference to peer %s: %v", e.Peer, e.Cause)
}

// Is reports whether target is ErrDeadReference.
func (e *DeadError) Is(target error) bool { return target == ErrDeadReference }

// Unwrap returns the cause.
func (e *DeadError) Unwrap() error { return e.Cause }

// Code classifies a *RemoteError.
type Code uint16

// The codes a peer can answer with. Codes travel on the wire: never renumber.
const (
	CodeUnknown           Code = 0  // a code this version does not know
	CodeApplication       Code = 1  // the handler returned an ordinary error
	CodeUnknownMethod     Code = 2  // no handler for the method
	CodeResourceExhausted Code = 3  // a limit of the peer: concurrency or size
	CodeMessageTooLarge   Code = 4  // the request or the reply exceeds a size limit
	CodeBadRequest        Code = 5  // the request could not be decoded
	CodeInternal          Code = 6  // the handler panicked
	CodeCanceled          Code = 7  // the handler returned context.Canceled
	CodeDeadlineExceeded  Code = 8  // the handler returned context.DeadlineExceeded
	CodeUnavailable       Code = 9  // the peer is draining and takes no new calls
	CodeNotFound          Code = 10 // what the request names does not exist

	// CodeApp is the first code left to applications: CodeApp+n travel
	// unchanged, and this package never gives them a meaning.
	CodeApp Code = 1000
)

var codeNames = [...]string{
	CodeUnknown:           "unknown",
	CodeApplication:       "application",
	CodeUnknownMethod:     "unknown method",
	CodeResourceExhausted: "resource exhausted",
	CodeMessageTooLarge:   "message too large",
	CodeBadRequest:        "bad request",
	CodeInternal:          "internal",
	CodeCanceled:          "canceled",
	CodeDeadlineExceeded:  "deadline exceeded",
	CodeUnavailable:       "unavailable",
	CodeNotFound:          "not found",
}

func (c Code) String() string {
	if int(c) < len(codeNames) {
		return codeNames[c]
	}
	if c >= CodeApp {
		return fmt.Sprintf("app(%d)", uint16(c-CodeApp))
	}
	return fmt.Sprintf("code(%d)", uint16(c))
}

// RemoteError is the error a remote handler returned, or the peer's refusal
// to run one. It never means the connection is in trouble, so it never evicts
// a peer. A handler may return a *RemoteError to choose the code its caller
// sees.
//
// errors.Is matches it against the sentinel of its code (see Is), and
// against a *RemoteError used as a sentinel: one of the same code, and of
// the same message unless the target's is empty. So a package may export
// &RemoteError{Code: CodeUnavailable, Message: "node is draining"} as the
// sentinel of one refusal (tether.ErrDraining is one).
type RemoteError struct {
	Code    Code
	Method  string // filled in on the caller's side
	Message string
}

// Errorf returns a *RemoteError with the given code, for handlers.
func Errorf(code Code, format string, args ...any) *RemoteError {
	return &RemoteError{Code: code, Message: fmt.Sprintf(format, args...)}
}

func (e *RemoteError) Error() string {
	if e.Method == "" {
		return fmt.Sprintf("remote error (%v): %s", e.Code, e.Message)
	}
	return fmt.Sprintf("remote error from %s (%v): %s", e.Method, e.Code, e.Message)
}

// Is lets errors.Is match a RemoteError against the sentinel of its code:
//
//	CodeUnknown (and codes below CodeApp this version does not know)  ErrUnknownCode
//	CodeApplication        ErrApplication
//	CodeUnknownMethod      ErrUnknownMethod
//	CodeResourceExhausted  ErrTooManyCalls
//	CodeMessageTooLarge    ErrMessageTooLarge
//	CodeBadRequest         ErrBadRequest
//	CodeInternal           ErrInternal
//	CodeCanceled           context.Canceled
//	CodeDeadlineExceeded   context.DeadlineExceeded
//	CodeUnavailable        ErrUnavailable
//	CodeNotFound           ErrNotFound
//
// and against a *RemoteError target of the same code (and message, if the
// target has one).
func (e *RemoteError) Is(target error) bool {
	if t, ok := target.(*RemoteError); ok {
		return t.Code == e.Code && (t.Message == "" || t.Message == e.Message)
	}
	switch target {
	case ErrUnknownCode:
		return e.Code == CodeUnknown || (int(e.Code) >= len(codeNames) && e.Code < CodeApp)
	case ErrApplication:
		return e.Code == CodeApplication
	case ErrBadRequest:
		return e.Code == CodeBadRequest
	case ErrInternal:
		return e.Code == CodeInternal
	case ErrUnavailable:
		return e.Code == CodeUnavailable
	case ErrUnknownMethod:
		return e.Code == CodeUnknownMethod
	case ErrTooManyCalls:
		return e.Code == CodeResourceExhausted
	case ErrMessageTooLarge:
		return e.Code == CodeMessageTooLarge
	case ErrNotFound:
		return e.Code == CodeNotFound
	case context.Canceled:
		return e.Code == CodeCanceled
	case context.DeadlineExceeded:
		return e.Code == CodeDeadlineExceeded
	}
	return false
}

// remoteErrorOf turns a handler's error into what goes on the wire.
func remoteErrorOf(err error) (Code, string) {
	var re *RemoteError
	switch {
	case errors.As(err, &re):
		return re.Code, re.Message
	case errors.Is(err, context.Canceled):
		return CodeCanceled, err.Error()
	case errors.Is(err, context.DeadlineExceeded):
		return CodeDeadlineExceeded, err.Error()
	case errors.Is(err, ErrNotFound):
		return CodeNotFound, err.Error()
	case errors.Is(err, ErrUnavailable):
		return CodeUnavailable, err.Error()
	case errors.Is(err, ErrBadRequest):
		return CodeBadRequest, err.Error()
	}
	return CodeApplication, err.Error()
}

func violation(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrProtocolViolation}, args...)...)
}
