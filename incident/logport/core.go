package logport

import (
	"go.uber.org/zap/buffer"
	"go.uber.org/zap/zapcore"
)

// tapCore is the Core a port hands out: zap's JSON encoder in front of the
// ring.
type tapCore struct {
	p   *Port
	enc zapcore.Encoder // holds the fields added by With
}

var _ zapcore.Core = (*tapCore)(nil)

// Enabled reports whether the port publishes entries of level l.
func (c *tapCore) Enabled(l zapcore.Level) bool { return c.p.cfg.level.Enabled(l) }

// With returns a core adding fields to every entry.
func (c *tapCore) With(fields []zapcore.Field) zapcore.Core {
	enc := c.enc.Clone()
	for i := range fields {
		fields[i].AddTo(enc)
	}
	return &tapCore{p: c.p, enc: enc}
}

// Check adds the core to ce if the port publishes the entry's level.
func (c *tapCore) Check(ent zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.Enabled(ent.Level) {
		return ce.AddCore(ent, c)
	}
	return ce
}

// Write publishes the entry; see Port.Core.
func (c *tapCore) Write(ent zapcore.Entry, fields []zapcore.Field) error {
	p := c.p
	if !p.active.Load() {
		// Nobody listens: number the entry, so that a subscriber resuming
		// later sees it as a gap, and encode nothing.
		p.mu.Lock()
		if !p.active.Load() {
			if !p.closed {
				p.seq++
			}
			p.mu.Unlock()
			return nil
		}
		p.mu.Unlock()
	}
	buf, err := c.enc.EncodeEntry(ent, fields)
	if err != nil {
		return err
	}
	oversize := buf.Len() > MaxEntrySize
	if oversize {
		buf.Free()
		buf = c.stub(ent, buf.Len())
	}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		buf.Free()
		return nil
	}
	p.seq++
	if oversize {
		p.oversize++
	}
	if p.active.Load() {
		p.appendLocked(p.seq, buf.Bytes())
		for _, s := range p.subs {
			if s.waiting && s.credit > 0 {
				s.waiting = false
				s.poke()
			}
		}
	}
	p.mu.Unlock()
	buf.Free()
	return nil
}

// stub encodes what fits of an oversize entry: its metadata, the first KiB
// of its message, and its size.
func (c *tapCore) stub(ent zapcore.Entry, size int) *buffer.Buffer {
	if len(ent.Message) > 1024 {
		ent.Message = ent.Message[:1024]
	}
	ent.Stack = ""
	enc := zapcore.NewJSONEncoder(c.p.cfg.encoder)
	buf, err := enc.EncodeEntry(ent, []zapcore.Field{{Key: "logport_oversize", Type: zapcore.Int64Type, Integer: int64(size)}})
	if err != nil || buf.Len() > MaxEntrySize { // a huge logger name or caller: give up on them too
		buf = buffer.NewPool().Get()
		buf.AppendString(`{"logport_oversize":`)
		buf.AppendInt(int64(size))
		buf.AppendString("}\n")
	}
	return buf
}

// Sync does nothing: the port holds entries in memory only.
func (c *tapCore) Sync() error { return nil }
