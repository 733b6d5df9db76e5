package cluster

import (
	"bytes"

	"go.uber.org/zap"
)

// logWriter takes memberlist's log lines ("[LEVEL] memberlist: ...") to
// zap: [DEBUG] at Debug, the rest at Info. memberlist's warnings and
// errors are the protocol at work (a probe unanswered, a suspicion
// refuted, a member unreachable), which it resolves itself; what the node
// must hear at Warn, a peer lost, the registry logs once per eviction.
type logWriter struct{ log *zap.Logger }

func (w logWriter) Write(p []byte) (int, error) {
	line := bytes.TrimRight(p, "\n")
	// memberlist's log.Logger has no prefix of its own but the date.
	if i := bytes.Index(line, []byte("[")); i >= 0 {
		line = line[i:]
	}
	level, msg := "", line
	if i := bytes.IndexByte(line, ']'); i > 0 && line[0] == '[' {
		level, msg = string(line[1:i]), bytes.TrimSpace(line[i+1:])
	}
	msg = bytes.TrimPrefix(msg, []byte("memberlist: "))
	if level == "DEBUG" || level == "TRACE" {
		w.log.Debug(string(msg))
	} else {
		w.log.Info(string(msg), zap.String("level", level))
	}
	return len(p), nil
}
