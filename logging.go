package tether

import (
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/tetherrpc/tether/incident"
	"github.com/tetherrpc/tether/incident/logport"
)

// startLogging builds the node's log pipeline.
func (n *Node) startLogging() error {
	base := zap.NewNop()
	if n.opts.logger != nil {
		base = n.opts.logger
	}
	var cores []zapcore.Core
	if n.opts.incidentDir != "" {
		rec, err := incident.NewRecorder(n.opts.incidentDir, incident.WithTrigger(trigger), incident.WithWriteErrorHandler(func(err error) {
			n.logger.Warn("incident file not written", zap.Error(err))
		}))
		if err != nil {
			return err
		}
		n.rec = rec
		cores = append(cores, rec) // cheap and never blocking: inline
	}
	// What may be slow (the user's sink) or does real work (the log port's
	// encoding) goes behind Async, on its writer goroutine.
	var slow []zapcore.Core
	if n.opts.logger != nil {
		slow = append(slow, base.Core())
	}
	if n.opts.logPort != nil {
		popts := n.opts.logPort
		if n.rec != nil {
			popts = append([]logport.Option{logport.WithIncidents(n.rec)}, popts...)
		}
		n.port = logport.New(popts...)
		slow = append(slow, n.port.Core())
	}
	if len(slow) > 0 {
		n.async = incident.Async(zapcore.NewTee(slow...))
		cores = append(cores, n.async)
	}
	n.logger = base.WithOptions(zap.WrapCore(func(zapcore.Core) zapcore.Core { return zapcore.NewTee(cores...) }))
	return nil
}

// trigger opens an incident on Error and above, and on any entry marked
// with the incident field (the node's own actions, logged at Warn).
func trigger(ent zapcore.Entry, fields []zapcore.Field) bool {
	if ent.Level >= zapcore.ErrorLevel {
		return true
	}
	for _, f := range fields {
		if f.Key == incidentField && f.Type == zapcore.BoolType && f.Integer == 1 {
			return true
		}
	}
	return false
}

// stopLogging flushes the pipeline (within its bounds) and stops it.
func (n *Node) stopLogging() {
	if n.port != nil {
		n.port.Close()
	}
	if n.rec != nil {
		n.rec.Close()
	}
	if n.async != nil {
		n.async.Close()
	}
}
