package logport

import (
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// Defaults and limits of a Port.
const (
	// DefaultBudget bounds the memory a port spends on its log stream, in
	// all, whatever its subscribers do: 4 MiB. It holds the entries not yet
	// sent to every subscriber (thousands of typical 200 to 400 byte
	// entries: foolscap's queue held 2,000), shared by all subscribers, and
	// the chunks senders are writing from. A subscriber that falls further
	// behind loses the oldest entries, never costs more.
	DefaultBudget = 4 << 20
	// ChunkSize is the unit the budget is spent in: entries are stored
	// back to back, already framed for the wire, in chunks of this size,
	// and dropped a chunk at a time when the budget is spent.
	ChunkSize = 64 << 10
	// MinBudget is the smallest budget: 8 chunks.
	MinBudget = 8 * ChunkSize
	// MaxEntrySize bounds one encoded entry (its JSON line, about 64 KiB).
	// A larger entry is replaced by a stub that keeps its time, level,
	// logger, caller and the first KiB of its message, plus a field
	// "logport_oversize" with its size.
	MaxEntrySize = ChunkSize - frameHeader - entryFixed - len(seqPrefix) - 20
	// DefaultMaxSubscribers bounds concurrent subscriptions per port; each
	// costs a goroutine pair and, while it sends, may hold one chunk out of
	// the ring (within the budget).
	DefaultMaxSubscribers = 8
	// DefaultMaxCredit bounds the credit a subscriber may hold, in
	// entries: a grant beyond it is a protocol violation. 65,536 entries is
	// 64 times the default window.
	DefaultMaxCredit = 1 << 16
	// OverloadInterval is the least time between two overload notices.
	OverloadInterval = time.Hour
	// HandshakeTimeout bounds the wait for a subscriber's first frame (and
	// a fetch's name).
	HandshakeTimeout = 10 * time.Second
	// closeGrace is how long Close lets a sender blocked in a write (its
	// subscriber stopped reading) finish it, and write its farewell.
	closeGrace = time.Second
)

// handshakeTimeout is HandshakeTimeout; tests shorten it.
var handshakeTimeout = HandshakeTimeout

// Option configures a Port.
type Option func(*config)

type config struct {
	budget     int
	maxSubs    int
	maxCredit  uint64
	level      zapcore.LevelEnabler
	encoder    zapcore.EncoderConfig
	history    bool
	incidents  IncidentSource
	onOverload func(Notice)
	onEnd      func(SubscriberStats, error)
	now        func() time.Time
	logger     *zap.Logger
}

// EncoderConfig is the JSON layout of entries by default: that of incident
// files (keys ts, level, logger, caller, msg, stacktrace; RFC 3339 times
// with nanoseconds; durations as strings).
func EncoderConfig() zapcore.EncoderConfig {
	return zapcore.EncoderConfig{
		TimeKey:        "ts",
		LevelKey:       "level",
		NameKey:        "logger",
		CallerKey:      "caller",
		FunctionKey:    zapcore.OmitKey,
		MessageKey:     "msg",
		StacktraceKey:  "stacktrace",
		LineEnding:     "\n",
		EncodeLevel:    zapcore.LowercaseLevelEncoder,
		EncodeTime:     zapcore.RFC3339NanoTimeEncoder,
		EncodeDuration: zapcore.StringDurationEncoder,
		EncodeCaller:   zapcore.ShortCallerEncoder,
	}
}

func defaultConfig() config {
	return config{
		budget:    DefaultBudget,
		maxSubs:   DefaultMaxSubscribers,
		maxCredit: DefaultMaxCredit,
		level:     zapcore.DebugLevel,
		encoder:   EncoderConfig(),
		now:       time.Now,
		logger:    zap.NewNop(),
	}
}

// resolve enforces the relations between settings: the budget is whole
// chunks, and leaves room for every sender's pinned chunk plus two.
func (c *config) resolve() {
	c.budget = max(c.budget, MinBudget) / ChunkSize * ChunkSize
	c.maxSubs = min(c.maxSubs, c.budget/ChunkSize-2)
}

// WithBudget sets the memory budget in bytes (default DefaultBudget). It is
// rounded down to whole chunks; a value below MinBudget means MinBudget.
func WithBudget(n int) Option { return func(c *config) { c.budget = n } }

// WithMaxSubscribers bounds concurrent subscriptions (default
// DefaultMaxSubscribers); a non-positive n leaves the default. It is lowered
// if need be to the budget's chunks less two.
func WithMaxSubscribers(n int) Option {
	return func(c *config) {
		if n > 0 {
			c.maxSubs = n
		}
	}
}

// WithMaxCredit bounds the credit a subscriber may hold (default
// DefaultMaxCredit); a zero n leaves the default.
func WithMaxCredit(n uint64) Option {
	return func(c *config) {
		if n > 0 {
			c.maxCredit = n
		}
	}
}

// WithLevel sets which entries the port publishes (default: Debug and
// above, everything its pipeline passes it).
func WithLevel(l zapcore.LevelEnabler) Option {
	return func(c *config) {
		if l != nil {
			c.level = l
		}
	}
}

// WithEncoderConfig sets the JSON layout of entries (default
// EncoderConfig()). Its LineEnding is forced to "\n".
func WithEncoderConfig(e zapcore.EncoderConfig) Option {
	return func(c *config) {
		e.LineEnding = "\n"
		c.encoder = e
	}
}

// WithHistory keeps the budget full of recent entries even when every
// subscriber has them, and encodes entries even when nobody subscribes, so
// that a subscriber can start with what came before (CatchUp) and resume
// after a reconnection without a gap (From), as far as the budget reaches.
// Without it (the default) the port encodes nothing while nobody
// subscribes and frees entries as soon as every subscriber has them.
func WithHistory() Option { return func(c *config) { c.history = true } }

// WithIncidents lets subscribers list and fetch the incident files of src
// (an *incident.Recorder is one; IncidentDir scans a directory). Default:
// none, and the incident methods answer with an empty list and
// ErrNotFound.
func WithIncidents(src IncidentSource) Option { return func(c *config) { c.incidents = src } }

// WithOverloadNotice sets a function called when a subscriber loses entries
// because it fell a budget behind, at most once per OverloadInterval (an
// hour); the notice counts every entry lost since the previous one. It runs
// on a goroutine of its own, never on the producer's path, and should
// return promptly: Close waits for it. Send it to an overload gatherer, log
// it, or page someone.
func WithOverloadNotice(fn func(Notice)) Option { return func(c *config) { c.onOverload = fn } }

// WithClock sets the port's clock, used for overload notices and
// subscription times (default time.Now). Tests inject a fake one.
func WithClock(now func() time.Time) Option {
	return func(c *config) {
		if now != nil {
			c.now = now
		}
	}
}

// WithLogger sets where the port logs misbehaving subscribers (one line
// each, at Warn) and overload notices (at most once an hour). Default: none.
// It may be the very logger the port taps: the port never logs on the
// producer's path or under its lock.
func WithLogger(l *zap.Logger) Option {
	return func(c *config) {
		if l != nil {
			c.logger = l
		}
	}
}

// WithSubscriptionEnd sets a function called when a subscription ends, with
// its final counts (Produced == Delivered + Dropped, Queued zero) and why it
// ended: nil when the subscriber unsubscribed (or closed its connection
// cleanly), its context's or its connection's error, an error matching
// ErrProtocol or ErrClosed. It runs on
// the subscription's goroutine and should return promptly.
func WithSubscriptionEnd(fn func(SubscriberStats, error)) Option {
	return func(c *config) { c.onEnd = fn }
}
