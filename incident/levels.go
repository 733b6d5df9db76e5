package incident

import "go.uber.org/zap/zapcore"

// Foolscap's log levels, mapped onto zap's. Foolscap had more names than zap
// has levels, so several names share a level; use whichever name says what
// you mean, the recorded level is the same.
//
// Scary and Bad map to DPanic: a development logger (zap.Development())
// panics after writing such an entry, a production logger does not. Levels
// above DPanic (Panic, Fatal) keep zap's meaning and count as Bad too.
const (
	// Noisy is for detail nobody reads unless debugging: zap's Debug.
	Noisy zapcore.Level = zapcore.DebugLevel
	// Operational is normal operation worth a line: zap's Info.
	Operational zapcore.Level = zapcore.InfoLevel
	// Unusual is something out of the ordinary but handled: zap's Warn.
	// The library logs dead references at this level.
	Unusual zapcore.Level = zapcore.WarnLevel
	// Infrequent is a rare but expected event: zap's Warn.
	Infrequent zapcore.Level = zapcore.WarnLevel
	// Curious is something that deserves a look later: zap's Warn.
	Curious zapcore.Level = zapcore.WarnLevel
	// Weird is a failure that should not happen: zap's Error. By default it
	// opens an incident (see Recorder).
	Weird zapcore.Level = zapcore.ErrorLevel
	// Scary is a failure that endangers data or the process: zap's DPanic.
	Scary zapcore.Level = zapcore.DPanicLevel
	// Bad is as bad as it gets short of dying: zap's DPanic.
	Bad zapcore.Level = zapcore.DPanicLevel
)
