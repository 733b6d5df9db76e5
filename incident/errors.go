package incident

import (
	"errors"
	"fmt"
	"time"
)

// ErrTimeout is matched (errors.Is) by every *TimeoutError: a flush, sync or
// close that gave up waiting.
var ErrTimeout = errors.New("incident: timed out")

// TimeoutError reports that Sync, Flush or Close gave up before everything
// was written. It satisfies net.Error (Timeout reports true), matches
// ErrTimeout with errors.Is, and unwraps to the context error that ended the
// wait, if any.
type TimeoutError struct {
	// Op is the operation that timed out: "sync", "flush" or "close".
	Op string
	// Pending is how many entries (Async) or incidents (Recorder) were
	// still waiting to be written when the wait ended.
	Pending uint64
	// Waited is how long the operation waited.
	Waited time.Duration
	// Cause is the context error that ended the wait, or nil when the
	// operation's own bound expired.
	Cause error
}

// Error implements error.
func (e *TimeoutError) Error() string {
	return fmt.Sprintf("incident: %s timed out after %v with %d pending", e.Op, e.Waited.Round(time.Millisecond), e.Pending)
}

// Timeout reports true, as net.Error asks.
func (e *TimeoutError) Timeout() bool { return true }

// Temporary reports true: waiting again may succeed.
func (e *TimeoutError) Temporary() bool { return true }

// Is reports whether target is ErrTimeout.
func (e *TimeoutError) Is(target error) bool { return target == ErrTimeout }

// Unwrap returns the context error that ended the wait, if any.
func (e *TimeoutError) Unwrap() error { return e.Cause }

// WriteError reports that an incident file could not be written. The
// incident is lost; later incidents still try. Unwrap gives the file system
// error, so errors.Is(err, fs.ErrPermission) and the like work.
type WriteError struct {
	// Path is the file the Recorder was writing (its final name).
	Path string
	// Op is the step that failed: "create", "write", "sync", "close" or
	// "rename".
	Op string
	// Err is the underlying error.
	Err error
}

// Error implements error.
func (e *WriteError) Error() string {
	return fmt.Sprintf("incident: cannot write incident file %s: %s: %v", e.Path, e.Op, e.Err)
}

// Unwrap returns the underlying error.
func (e *WriteError) Unwrap() error { return e.Err }
