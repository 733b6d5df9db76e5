package incident

import (
	"io"
	"io/fs"
	"os"
	"time"

	"go.uber.org/zap/zapcore"
)

// Defaults for NewRecorder.
const (
	// DefaultTrailingWindow is how long an incident stays open after its
	// opening trigger: trailing entries are recorded, and triggers are
	// folded in, until it ends.
	DefaultTrailingWindow = 5 * time.Second
	// DefaultTrailingEntries is how many trailing entries an incident
	// records at most; later ones are only counted.
	DefaultTrailingEntries = 100
	// DefaultRateLimit is how long after an incident closes no new one
	// opens; triggers in that time are counted as suppressed.
	DefaultRateLimit = 60 * time.Second
	// DefaultMaxPeers is how many distinct peers an incident's trailer lists.
	DefaultMaxPeers = 100
	// DefaultCloseTimeout bounds how long Close waits for incident files to
	// be written.
	DefaultCloseTimeout = 2 * time.Second
)

// Default history ring sizes, per level. Higher levels are rarer and say
// more, so they are kept longer. Levels below Debug share Debug's ring;
// DPanic, Panic and Fatal share Error's.
const (
	DefaultDebugHistory = 100
	DefaultInfoHistory  = 100
	DefaultWarnHistory  = 200
	DefaultErrorHistory = 500
)

// PeerKey is the field key the Recorder reads to learn which peer a trigger
// concerns: a string field (zap.String(incident.PeerKey, id), or a Stringer,
// which is snapshotted to a string) on the entry or on the logger (With).
const PeerKey = "peer"

// TriggerFunc decides whether an entry opens (or, while one is open, folds
// into) an incident. It gets the entry's own fields, not those added by
// With, and runs on the caller's goroutine, so it must be quick.
type TriggerFunc func(ent zapcore.Entry, fields []zapcore.Field) bool

// Clock is the Recorder's source of time, injectable for tests.
type Clock interface {
	Now() time.Time
	// AfterFunc calls f on its own goroutine after d, unless stopped.
	AfterFunc(d time.Duration, f func()) Timer
}

// Timer is what Clock.AfterFunc returns; *time.Timer is one.
type Timer interface {
	// Stop prevents the call if it has not happened; it reports whether it
	// did so.
	Stop() bool
}

type systemClock struct{}

func (systemClock) Now() time.Time                            { return time.Now() }
func (systemClock) AfterFunc(d time.Duration, f func()) Timer { return time.AfterFunc(d, f) }

// FileSystem is where the Recorder writes incident files; the default is the
// operating system's. Tests inject failures through it.
type FileSystem interface {
	// MkdirAll creates a directory and its parents, as os.MkdirAll.
	MkdirAll(path string, perm fs.FileMode) error
	// Create creates a new file for writing; it must fail if the file
	// exists. If the writer has a Sync() error method, the Recorder calls
	// it before Close.
	Create(name string) (io.WriteCloser, error)
	// Rename moves a file, replacing the target, as os.Rename.
	Rename(oldpath, newpath string) error
	// Remove deletes a file, as os.Remove.
	Remove(name string) error
}

type osFS struct{}

func (osFS) MkdirAll(path string, perm fs.FileMode) error { return os.MkdirAll(path, perm) }
func (osFS) Create(name string) (io.WriteCloser, error) {
	return os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
}
func (osFS) Rename(oldpath, newpath string) error { return os.Rename(oldpath, newpath) }
func (osFS) Remove(name string) error             { return os.Remove(name) }

// RecorderOption configures NewRecorder.
type RecorderOption func(*recorderConfig)

type recorderConfig struct {
	level        zapcore.LevelEnabler
	trigger      TriggerFunc
	history      [4]int
	window       time.Duration
	maxTrailing  int
	rateLimit    time.Duration
	maxPeers     int
	closeTimeout time.Duration
	clock        Clock
	fs           FileSystem
	onError      func(error)
}

func defaultRecorderConfig() recorderConfig {
	return recorderConfig{
		level:        zapcore.DebugLevel,
		trigger:      func(ent zapcore.Entry, _ []zapcore.Field) bool { return ent.Level >= zapcore.ErrorLevel },
		history:      [4]int{DefaultDebugHistory, DefaultInfoHistory, DefaultWarnHistory, DefaultErrorHistory},
		window:       DefaultTrailingWindow,
		maxTrailing:  DefaultTrailingEntries,
		rateLimit:    DefaultRateLimit,
		maxPeers:     DefaultMaxPeers,
		closeTimeout: DefaultCloseTimeout,
		clock:        systemClock{},
		fs:           osFS{},
	}
}

// WithRecordLevel sets which entries the Recorder keeps (default Debug and
// above: like foolscap, it remembers what the main log does not write).
// Raise it if Debug entries are built often and cost too much to record.
func WithRecordLevel(l zapcore.LevelEnabler) RecorderOption {
	return func(c *recorderConfig) {
		if l != nil {
			c.level = l
		}
	}
}

// WithTrigger sets what opens an incident (default: level Error or above).
// A nil f leaves the default.
func WithTrigger(f TriggerFunc) RecorderOption {
	return func(c *recorderConfig) {
		if f != nil {
			c.trigger = f
		}
	}
}

// WithHistory sets how many entries of level l the Recorder remembers
// (defaults DefaultDebugHistory, DefaultInfoHistory, DefaultWarnHistory,
// DefaultErrorHistory). Levels below Debug share Debug's ring, levels above
// Error share Error's. A negative n leaves the default; 0 keeps none.
func WithHistory(l zapcore.Level, n int) RecorderOption {
	return func(c *recorderConfig) {
		if n >= 0 {
			c.history[ringIndex(l)] = n
		}
	}
}

// WithTrailing sets how long an incident stays open after its opening
// trigger and how many trailing entries it records at most (defaults
// DefaultTrailingWindow and DefaultTrailingEntries). Non-positive values
// leave the defaults.
func WithTrailing(window time.Duration, maxEntries int) RecorderOption {
	return func(c *recorderConfig) {
		if window > 0 {
			c.window = window
		}
		if maxEntries > 0 {
			c.maxTrailing = maxEntries
		}
	}
}

// WithRateLimit sets how long after an incident closes no new one opens
// (default DefaultRateLimit). Zero allows one right away; a negative value
// leaves the default.
func WithRateLimit(d time.Duration) RecorderOption {
	return func(c *recorderConfig) {
		if d >= 0 {
			c.rateLimit = d
		}
	}
}

// WithMaxPeers sets how many distinct peers an incident's trailer lists
// (default DefaultMaxPeers). A non-positive value leaves the default.
func WithMaxPeers(n int) RecorderOption {
	return func(c *recorderConfig) {
		if n > 0 {
			c.maxPeers = n
		}
	}
}

// WithCloseTimeout bounds how long Close waits for incident files to be
// written (default DefaultCloseTimeout), in real time whatever the Clock.
// A non-positive value leaves the default.
func WithCloseTimeout(d time.Duration) RecorderOption {
	return func(c *recorderConfig) {
		if d > 0 {
			c.closeTimeout = d
		}
	}
}

// WithClock sets the Recorder's clock (default: the system clock).
func WithClock(clk Clock) RecorderOption {
	return func(c *recorderConfig) {
		if clk != nil {
			c.clock = clk
		}
	}
}

// WithFileSystem sets where incident files are written (default: the
// operating system's file system).
func WithFileSystem(fsys FileSystem) RecorderOption {
	return func(c *recorderConfig) {
		if fsys != nil {
			c.fs = fsys
		}
	}
}

// WithWriteErrorHandler sets a function told when incident files cannot be
// written, with a *WriteError. It is called once for the first failure, and
// again only after a write has succeeded in between, so a full disk is
// reported once, not once a minute. Every failure counts in
// RecorderStats.WriteErrors. It runs on the Recorder's writer goroutine.
// The default is none.
func WithWriteErrorHandler(f func(error)) RecorderOption {
	return func(c *recorderConfig) { c.onError = f }
}

// RecorderStats is a snapshot of a Recorder's counters. Triggers ==
// Incidents + Folded + Suppressed, exactly.
type RecorderStats struct {
	// Recorded counts entries recorded into history.
	Recorded uint64
	// Triggers counts entries that met the trigger.
	Triggers uint64
	// Incidents counts incidents opened.
	Incidents uint64
	// Folded counts triggers folded into an open incident.
	Folded uint64
	// Suppressed counts triggers ignored by the rate limit; the next
	// incident's header and trailer say how many came before it.
	Suppressed uint64
	// Written counts incident files written.
	Written uint64
	// WriteErrors counts incident files that could not be written.
	WriteErrors uint64
	// Discarded counts closed incidents dropped without a write attempt:
	// too many were waiting for the disk, or Close gave up waiting.
	Discarded uint64
}
