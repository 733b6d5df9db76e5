package incident

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"path/filepath"
	"time"

	"go.uber.org/zap/zapcore"
)

// IncidentFormat names the incident file format, in each header.
const IncidentFormat = "tether-incident/1"

// fileTimeLayout formats an incident's opening time in its file name.
const fileTimeLayout = "20060102T150405.000Z"

// Header is the first line of an incident file, as JSON.
type Header struct {
	Incident         string    `json:"incident"`          // the id, also in the file name
	Format           string    `json:"format"`            // IncidentFormat
	Opened           time.Time `json:"opened"`            // when the opening trigger came
	Trigger          string    `json:"trigger"`           // the opening trigger's message
	TriggerLevel     string    `json:"trigger_level"`     // and level
	TriggerSeq       uint64    `json:"trigger_seq"`       // and sequence number
	History          int       `json:"history"`           // entries before the trigger
	Trailing         int       `json:"trailing"`          // entries after it
	SuppressedBefore uint64    `json:"suppressed_before"` // triggers rate-limited since the last incident
}

// Trailer is the last line of an incident file, as JSON.
type Trailer struct {
	Trailer          bool      `json:"trailer"` // always true
	Incident         string    `json:"incident"`
	Closed           time.Time `json:"closed"`
	ClosedBy         string    `json:"closed_by"`        // "window", or "close" if Close cut it short
	Triggers         uint64    `json:"triggers"`         // the opening trigger plus the folded ones
	Folded           uint64    `json:"folded"`           // triggers - 1
	Peers            []string  `json:"peers"`            // distinct peers of the triggers, first come first
	PeersOmitted     uint64    `json:"peers_omitted"`    // triggers whose peer did not fit in the list
	Trailing         int       `json:"trailing"`         // trailing entries recorded
	TrailingOmitted  uint64    `json:"trailing_omitted"` // trailing entries only counted
	SuppressedBefore uint64    `json:"suppressed_before"`
}

var entryEncoderConfig = zapcore.EncoderConfig{
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

// run is the writer goroutine: it writes closed incidents, one at a time.
func (st *recState) run() {
	defer close(st.done)
	for {
		st.mu.Lock()
		for len(st.pending) == 0 && !st.closed {
			st.mu.Unlock()
			<-st.wake
			st.mu.Lock()
		}
		if len(st.pending) == 0 {
			st.mu.Unlock()
			return
		}
		if st.abandon.Load() {
			st.stats.Discarded += uint64(len(st.pending))
			st.pending = nil
			st.mu.Unlock()
			return
		}
		inc := st.pending[0]
		st.pending[0] = nil
		st.pending = st.pending[1:]
		st.mu.Unlock()

		path, err := st.writeIncident(inc)
		inc.history.reset()

		st.mu.Lock()
		report := false
		if err != nil {
			st.stats.WriteErrors++
			report = !st.failing
			st.failing = true
		} else {
			st.stats.Written++
			st.failing = false
			if len(st.files) == maxFiles {
				st.files = append(st.files[:0], st.files[1:]...)
			}
			st.files = append(st.files, path)
		}
		if st.spareRings == nil {
			st.spareRings = inc.history
		}
		st.mu.Unlock()
		if report && st.cfg.onError != nil {
			func() {
				defer func() { _ = recover() }()
				st.cfg.onError(err)
			}()
		}
	}
}

// fileName is inc's file name.
func (inc *incident) fileName() string {
	return "incident-" + inc.opened.UTC().Format(fileTimeLayout) + "-" + inc.id + ".json"
}

// writeIncident writes inc to a temporary file and renames it into place.
func (st *recState) writeIncident(inc *incident) (path string, err error) {
	name := inc.fileName()
	path = filepath.Join(st.dir, name)
	tmp := filepath.Join(st.dir, "."+name+".tmp")
	fail := func(op string, e error) (string, error) {
		return path, &WriteError{Path: path, Op: op, Err: e}
	}
	f, err := st.cfg.fs.Create(tmp)
	if err != nil {
		return fail("create", err)
	}
	op := "write"
	defer func() {
		if err != nil {
			_ = st.cfg.fs.Remove(tmp)
		}
	}()
	w := bufio.NewWriterSize(f, 64<<10)
	err = encodeIncident(w, inc)
	if err == nil {
		err = w.Flush()
	}
	if err == nil {
		if s, ok := f.(interface{ Sync() error }); ok {
			op = "sync"
			err = s.Sync()
		}
	}
	if cerr := f.Close(); err == nil && cerr != nil {
		op, err = "close", cerr
	}
	if err == nil {
		op = "rename"
		err = st.cfg.fs.Rename(tmp, path)
	}
	if err != nil {
		return fail(op, err)
	}
	return path, nil
}

// encodeIncident writes inc's lines to w.
func encodeIncident(w io.Writer, inc *incident) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("encoding panicked: %v", p)
		}
	}()
	var history []*record
	for _, rec := range inc.history.merged() {
		if rec.seq < inc.triggerSeq {
			history = append(history, rec)
		}
	}
	trigger := &inc.trigger
	hdr := Header{
		Incident:         inc.id,
		Format:           IncidentFormat,
		Opened:           inc.opened.UTC(),
		TriggerSeq:       inc.triggerSeq,
		History:          len(history),
		Trailing:         len(inc.trailing),
		SuppressedBefore: inc.suppressedBefore,
	}
	hdr.Trigger = trigger.ent.Message
	hdr.TriggerLevel = trigger.ent.Level.String()
	if err := writeJSONLine(w, hdr); err != nil {
		return err
	}
	enc := zapcore.NewJSONEncoder(entryEncoderConfig)
	var scratch []zapcore.Field
	line := func(rec *record) error {
		scratch = append(scratch[:0], zapcore.Field{Key: SeqKey, Type: zapcore.Uint64Type, Integer: int64(rec.seq)})
		scratch = append(scratch, rec.fields...)
		buf, err := enc.EncodeEntry(rec.ent, scratch)
		if err != nil {
			return err
		}
		_, err = w.Write(buf.Bytes())
		buf.Free()
		return err
	}
	for _, rec := range history {
		if err := line(rec); err != nil {
			return err
		}
	}
	if err := line(trigger); err != nil {
		return err
	}
	for i := range inc.trailing {
		if err := line(&inc.trailing[i]); err != nil {
			return err
		}
	}
	peers := inc.peers
	if peers == nil {
		peers = []string{}
	}
	return writeJSONLine(w, Trailer{
		Trailer:          true,
		Incident:         inc.id,
		Closed:           inc.closed.UTC(),
		ClosedBy:         inc.closedBy,
		Triggers:         inc.triggers,
		Folded:           inc.triggers - 1,
		Peers:            peers,
		PeersOmitted:     inc.peersOmitted,
		Trailing:         len(inc.trailing),
		TrailingOmitted:  inc.trailingOmitted,
		SuppressedBefore: inc.suppressedBefore,
	})
}

func writeJSONLine(w io.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	_, err = w.Write(append(b, '\n'))
	return err
}
