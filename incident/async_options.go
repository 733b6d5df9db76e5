package incident

import "time"

// Defaults for Async. The queue bounds are per AsyncCore tree (a core and
// every core made from it by With share one queue).
const (
	// DefaultMaxEntries bounds the queue in entries.
	DefaultMaxEntries = 8192
	// DefaultMaxBytes bounds the queue in estimated bytes (see Async for
	// how an entry's size is estimated).
	DefaultMaxBytes = 4 << 20
	// DefaultFlushTimeout bounds Sync, Close, and the wait after Panic and
	// Fatal entries.
	DefaultFlushTimeout = time.Second
)

// Option configures Async.
type Option func(*asyncConfig)

type asyncConfig struct {
	maxEntries   int
	maxBytes     int
	flushTimeout time.Duration
	onError      func(error)
}

func defaultAsyncConfig() asyncConfig {
	return asyncConfig{
		maxEntries:   DefaultMaxEntries,
		maxBytes:     DefaultMaxBytes,
		flushTimeout: DefaultFlushTimeout,
	}
}

// WithMaxEntries bounds the queue to n entries (default DefaultMaxEntries).
// A value below 4 leaves the default.
func WithMaxEntries(n int) Option {
	return func(c *asyncConfig) {
		if n >= 4 {
			c.maxEntries = n
		}
	}
}

// WithMaxBytes bounds the queue to n estimated bytes (default
// DefaultMaxBytes). A value below 4096 leaves the default.
func WithMaxBytes(n int) Option {
	return func(c *asyncConfig) {
		if n >= 4096 {
			c.maxBytes = n
		}
	}
}

// WithFlushTimeout sets how long Sync and Close wait for the queue to drain,
// and how long a Panic or Fatal entry waits before zap panics or exits
// (default DefaultFlushTimeout). A non-positive value leaves the default.
func WithFlushTimeout(d time.Duration) Option {
	return func(c *asyncConfig) {
		if d > 0 {
			c.flushTimeout = d
		}
	}
}

// WithErrorHandler sets a function called, on the writer goroutine, with
// each error returned by the inner core's Write or Sync and with each panic
// (as an error). It must not block for long: the queue waits for it. The
// default is none; failures are always counted in AsyncStats.Errors.
func WithErrorHandler(f func(error)) Option {
	return func(c *asyncConfig) { c.onError = f }
}

// AsyncStats is a consistent snapshot of an AsyncCore's counters, taken
// under the queue's lock, so that
//
//	Enqueued == Written + Dropped + Queued
//
// holds exactly in every snapshot.
type AsyncStats struct {
	// Enqueued counts every entry offered to Write, accepted or dropped.
	// It equals the last sequence number given out.
	Enqueued uint64
	// Written counts entries handed to the inner core, including those
	// the inner core failed to write (see Errors).
	Written uint64
	// Dropped counts entries never handed to the inner core: the queue was
	// full, the core was closed, or Close gave up waiting.
	Dropped uint64
	// Queued counts accepted entries not yet written, including those the
	// writer goroutine holds.
	Queued uint64
	// QueuedBytes is the estimated size of the queued entries.
	QueuedBytes int
	// Errors counts errors returned, and panics raised, by the inner core.
	Errors uint64
	// Notices counts "entries lost" notices written. They are not entries
	// offered to Write, so they are not in Enqueued or Written.
	Notices uint64
}
