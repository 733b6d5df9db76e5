package logport

import (
	"errors"
	"fmt"
)

// Sentinel errors. The errors the package returns match them with
// errors.Is; an *Error carries what the port said.
var (
	// ErrProtocol means the other side sent something malformed: garbage, a
	// frame out of place, a sequence number going backwards, a credit grant
	// beyond the port's limit. The port ends that subscription (or fetch)
	// only; the connection and the other subscriptions go on.
	ErrProtocol = errors.New("logport: protocol violation")
	// ErrClosed means the port was closed: the node is shutting down.
	ErrClosed = errors.New("logport: port closed")
	// ErrTooManySubscribers means the port already serves its limit of
	// subscribers (WithMaxSubscribers).
	ErrTooManySubscribers = errors.New("logport: too many subscribers")
	// ErrBadName means an incident name was refused: it is not of the form
	// incident-*.json, or it holds a path separator or "..".
	ErrBadName = errors.New("logport: bad incident name")
	// ErrNotFound means there is no such incident file (or no incident
	// source on the port).
	ErrNotFound = errors.New("logport: no such incident")
)

// Code classifies an *Error. Codes travel on the wire: never renumber.
type Code uint16

// The codes of error frames.
const (
	CodeProtocol Code = 1 // the subscriber sent something malformed
	CodeClosed   Code = 2 // the port is closed
	CodeTooMany  Code = 3 // the port's subscriber limit is reached
	CodeBadName  Code = 4 // an incident name was refused
	CodeNotFound Code = 5 // no such incident file
	CodeInternal Code = 6 // the port failed (an I/O error reading a file)
)

func (c Code) String() string {
	switch c {
	case CodeProtocol:
		return "protocol violation"
	case CodeClosed:
		return "closed"
	case CodeTooMany:
		return "too many subscribers"
	case CodeBadName:
		return "bad name"
	case CodeNotFound:
		return "not found"
	case CodeInternal:
		return "internal"
	}
	return fmt.Sprintf("code(%d)", uint16(c))
}

// Error is what a port said when it ended a subscription or refused a
// fetch: an error frame. It matches the sentinel of its code with errors.Is.
type Error struct {
	Code    Code
	Message string
}

func (e *Error) Error() string {
	return fmt.Sprintf("logport: the port said (%v): %s", e.Code, e.Message)
}

// Is matches ErrProtocol, ErrClosed, ErrTooManySubscribers, ErrBadName and
// ErrNotFound by code.
func (e *Error) Is(target error) bool {
	switch target {
	case ErrProtocol:
		return e.Code == CodeProtocol
	case ErrClosed:
		return e.Code == CodeClosed
	case ErrTooManySubscribers:
		return e.Code == CodeTooMany
	case ErrBadName:
		return e.Code == CodeBadName
	case ErrNotFound:
		return e.Code == CodeNotFound
	}
	return false
}

// protocolf returns an error matching ErrProtocol.
func protocolf(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrProtocol}, args...)...)
}
