package incident_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/tetherrpc/tether/incident"
)

func newTestRecorder(t *testing.T, opts ...incident.RecorderOption) (*incident.Recorder, *fakeClock, *testFS, *zap.Logger) {
	t.Helper()
	clk, fsys := newFakeClock(), newTestFS()
	opts = append([]incident.RecorderOption{incident.WithClock(clk), incident.WithFileSystem(fsys)}, opts...)
	rec, err := incident.NewRecorder(t.TempDir(), opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rec.Close() })
	return rec, clk, fsys, zap.New(rec)
}

var fileNameRE = regexp.MustCompile(`^incident-(\d{8}T\d{6}\.\d{3}Z)-[0-9a-f]{8}\.json$`)

func TestRecorderOneIncident(t *testing.T) {
	rec, clk, fsys, log := newTestRecorder(t)
	for i := range 5 {
		log.Debug("noisy", zap.Int("i", i))
		log.Info("operational", zap.Int("i", i))
	}
	for i := range 3 {
		log.Warn("unusual", zap.Int("i", i))
	}
	opened := clk.Now()
	log.Error("weird", zap.String(incident.PeerKey, "p1"))
	for i := range 4 {
		clk.Advance(time.Second)
		log.Info("after", zap.Int("i", i))
	}
	if st := rec.Stats(); st.Incidents != 1 || st.Written != 0 {
		t.Fatalf("stats %+v", st)
	}
	fsys.noneWritten(t)
	clk.Advance(time.Second) // the 5 s window ends

	path := fsys.written(t)
	m := fileNameRE.FindStringSubmatch(filepath.Base(path))
	if m == nil || m[1] != opened.UTC().Format("20060102T150405.000Z") || m[1] != "20261125T140102.123Z" {
		t.Errorf("file name %s", filepath.Base(path))
	}
	h, lines, tr := readIncident(t, path)
	if h.History != 13 || h.Trailing != 4 || h.Trigger != "weird" || h.TriggerLevel != "error" || h.TriggerSeq != 14 || !h.Opened.Equal(opened) {
		t.Errorf("header %+v", h)
	}
	if len(lines) != 18 {
		t.Fatalf("%d entry lines, want 13 history + trigger + 4 trailing", len(lines))
	}
	for i, l := range lines {
		if l.seq() != uint64(i+1) {
			t.Errorf("line %d has seq %d", i, l.seq())
		}
	}
	if trig := lines[13]; trig.msg() != "weird" || trig[incident.PeerKey] != "p1" || trig.level() != "error" {
		t.Errorf("trigger line %v", trig)
	}
	if lines[0].msg() != "noisy" || lines[12].msg() != "unusual" || lines[17].msg() != "after" {
		t.Errorf("lines out of place: %v ... %v ... %v", lines[0], lines[12], lines[17])
	}
	if tr.Triggers != 1 || tr.Folded != 0 || !slices.Equal(tr.Peers, []string{"p1"}) || tr.Trailing != 4 || tr.ClosedBy != "window" {
		t.Errorf("trailer %+v", tr)
	}
	if !tr.Closed.Equal(opened.Add(5 * time.Second)) {
		t.Errorf("closed at %v, want %v", tr.Closed, opened.Add(5*time.Second))
	}
	if err := rec.Close(); err != nil {
		t.Fatal(err)
	}
	if got := rec.Files(); !slices.Equal(got, []string{path}) {
		t.Errorf("Files() = %v", got)
	}
	ents, _ := os.ReadDir(rec.Dir())
	if len(ents) != 1 {
		t.Errorf("directory holds %d files, want only the incident", len(ents))
	}
	st := rec.Stats()
	if st.Recorded != 18 || st.Triggers != 1 || st.Incidents != 1 || st.Written != 1 || st.WriteErrors != 0 {
		t.Errorf("stats %+v", st)
	}
}

func TestRecorderFoldsTriggersInWindow(t *testing.T) {
	rec, clk, fsys, log := newTestRecorder(t, incident.WithTrailing(5*time.Second, 10))
	log.Error("first", zap.String(incident.PeerKey, "p0"))
	viaWith := log.With(zap.String(incident.PeerKey, "ctx-peer"))
	for i := range 50 {
		clk.Advance(90 * time.Millisecond) // the last at 4.5 s
		switch {
		case i == 10:
			viaWith.Error("again")
		case i == 11:
			log.Error("again", zap.Stringer(incident.PeerKey, &box{"stringer-peer"}))
		default:
			log.Error("again", zap.String(incident.PeerKey, fmt.Sprintf("p%d", i%5+1)))
		}
		log.Info("between")
	}
	if st := rec.Stats(); st.Incidents != 1 || st.Folded != 50 || st.Written != 0 {
		t.Fatalf("stats %+v", st)
	}
	clk.Advance(500 * time.Millisecond)
	_, lines, tr := readIncident(t, fsys.written(t))
	if tr.Triggers != 51 || tr.Folded != 50 {
		t.Errorf("trailer counts %d triggers, %d folded; want 51, 50", tr.Triggers, tr.Folded)
	}
	wantPeers := []string{"p0", "p1", "p2", "p3", "p4", "p5", "ctx-peer", "stringer-peer"}
	if !slices.Equal(tr.Peers, wantPeers) {
		t.Errorf("peers %v, want %v", tr.Peers, wantPeers)
	}
	if tr.Trailing != 10 || tr.TrailingOmitted != 90 || len(lines) != 11 {
		t.Errorf("trailing %d recorded, %d omitted, %d lines; want 10, 90, 11", tr.Trailing, tr.TrailingOmitted, len(lines))
	}
	if err := rec.Close(); err != nil {
		t.Fatal(err)
	}
	if n := len(rec.Files()); n != 1 {
		t.Errorf("%d files, want 1", n)
	}
}

func TestRecorderPeerListIsBounded(t *testing.T) {
	_, clk, fsys, log := newTestRecorder(t, incident.WithMaxPeers(3))
	for i := range 10 {
		log.Error("e", zap.String(incident.PeerKey, fmt.Sprintf("p%d", i%6)))
	}
	clk.Advance(incident.DefaultTrailingWindow)
	_, _, tr := readIncident(t, fsys.written(t))
	// Triggers name p0..p5, p0..p3: p0, p1, p2 are listed; the triggers
	// naming p3, p4, p5, p3 are only counted.
	if !slices.Equal(tr.Peers, []string{"p0", "p1", "p2"}) || tr.PeersOmitted != 4 {
		t.Errorf("peers %v, %d omitted; want [p0 p1 p2], 4", tr.Peers, tr.PeersOmitted)
	}
}

func TestRecorderRateLimit(t *testing.T) {
	rec, clk, fsys, log := newTestRecorder(t)
	log.Error("one")
	clk.Advance(5 * time.Second) // closes at +5 s; next allowed at +65 s
	_ = fsys.written(t)

	clk.Advance(time.Second)
	log.Error("suppressed 1")
	clk.Advance(50 * time.Second)
	log.Error("suppressed 2")
	clk.Advance(8 * time.Second) // +64 s
	log.Error("suppressed 3")
	if st := rec.Stats(); st.Suppressed != 3 || st.Incidents != 1 {
		t.Fatalf("stats %+v", st)
	}
	clk.Advance(time.Second) // +65 s
	log.Error("two")
	clk.Advance(5 * time.Second)
	h, lines, tr := readIncident(t, fsys.written(t))
	if h.Trigger != "two" || h.SuppressedBefore != 3 || tr.SuppressedBefore != 3 {
		t.Errorf("header %+v trailer %+v, want 3 suppressed before", h, tr)
	}
	// The history starts after the first incident opened.
	if lines[0].msg() != "suppressed 1" {
		t.Errorf("history starts with %v", lines[0])
	}
	st := rec.Stats()
	if st.Incidents != 2 || st.Suppressed != 3 || st.Triggers != st.Incidents+st.Folded+st.Suppressed {
		t.Errorf("stats %+v", st)
	}
}

func TestRecorderLateTimer(t *testing.T) {
	rec, clk, fsys, log := newTestRecorder(t)
	log.Error("one")
	// The window has ended but its timer has not fired (a loaded machine).
	clk.Set(clk.Now().Add(6 * time.Second))
	log.Error("late")
	path := fsys.written(t)
	_, _, tr := readIncident(t, path)
	if tr.Triggers != 1 {
		t.Errorf("a trigger after the window was folded: %+v", tr)
	}
	clk.Advance(time.Minute) // the stale timer fires; nothing happens
	if st := rec.Stats(); st.Incidents != 1 || st.Suppressed != 1 || st.Folded != 0 {
		t.Errorf("stats %+v", st)
	}
	if err := rec.Close(); err != nil {
		t.Fatal(err)
	}
	if n := len(rec.Files()); n != 1 {
		t.Errorf("%d files", n)
	}
}

func TestRecorderHistoryRings(t *testing.T) {
	_, clk, fsys, log := newTestRecorder(t,
		incident.WithHistory(zapcore.DebugLevel, 3),
		incident.WithHistory(zapcore.InfoLevel, 2))
	for i := range 10 {
		log.Debug("d", zap.Int("i", i)) // seq 2i+1
		log.Info("i", zap.Int("i", i))  // seq 2i+2
	}
	log.Error("trigger") // seq 21
	clk.Advance(incident.DefaultTrailingWindow)
	h, lines, _ := readIncident(t, fsys.written(t))
	var seqs []uint64
	for _, l := range lines {
		seqs = append(seqs, l.seq())
	}
	if want := []uint64{15, 17, 18, 19, 20, 21}; !slices.Equal(seqs, want) || h.History != 5 {
		t.Errorf("seqs %v (history %d), want %v", seqs, h.History, want)
	}
}

func TestRecorderCustomTriggerAndLevel(t *testing.T) {
	rec, clk, fsys, log := newTestRecorder(t,
		incident.WithRecordLevel(zapcore.InfoLevel),
		incident.WithTrigger(func(ent zapcore.Entry, fields []zapcore.Field) bool {
			return ent.Message == "evicted"
		}))
	log.Debug("not recorded")
	log.Error("not a trigger")
	log.Warn("evicted")
	clk.Advance(incident.DefaultTrailingWindow)
	h, lines, _ := readIncident(t, fsys.written(t))
	if h.Trigger != "evicted" || h.TriggerLevel != "warn" || len(lines) != 2 {
		t.Errorf("header %+v, %d lines", h, len(lines))
	}
	if st := rec.Stats(); st.Recorded != 2 || st.Triggers != 1 {
		t.Errorf("stats %+v", st)
	}
}

func TestRecorderWriteFailureReportedOnce(t *testing.T) {
	injected := errors.New("disk full")
	var mu sync.Mutex
	var reported []error
	rec, clk, fsys, log := newTestRecorder(t,
		incident.WithRateLimit(0),
		incident.WithTrailing(time.Second, 0),
		incident.WithWriteErrorHandler(func(err error) {
			mu.Lock()
			reported = append(reported, err)
			mu.Unlock()
		}))
	fsys.onCreate = func(n int, _ string) error {
		if n == 4 {
			return nil
		}
		return injected
	}
	for i := range 5 {
		log.Error("trigger", zap.Int("i", i))
		clk.Advance(time.Second)
	}
	if err := rec.Close(); err != nil {
		t.Fatal(err)
	}
	st := rec.Stats()
	if st.Incidents != 5 || st.WriteErrors != 4 || st.Written != 1 || len(rec.Files()) != 1 {
		t.Errorf("stats %+v, files %v", st, rec.Files())
	}
	mu.Lock()
	defer mu.Unlock()
	// Failures 1-3 are reported once; 5 again, after the success of 4.
	if len(reported) != 2 {
		t.Fatalf("reported %d times: %v", len(reported), reported)
	}
	var we *incident.WriteError
	if !errors.Is(reported[0], injected) || !errors.As(reported[0], &we) || we.Op != "create" || !strings.HasPrefix(filepath.Base(we.Path), "incident-") {
		t.Errorf("reported %v", reported[0])
	}
	ents, _ := os.ReadDir(rec.Dir())
	if len(ents) != 1 {
		t.Errorf("directory holds %d files, want 1 (no temporary left)", len(ents))
	}
}

func TestRecorderUnwritableDirectory(t *testing.T) {
	base := t.TempDir()
	regular := filepath.Join(base, "file")
	if err := os.WriteFile(regular, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := incident.NewRecorder(filepath.Join(regular, "sub")); !errors.Is(err, syscall.ENOTDIR) {
		t.Errorf("NewRecorder under a regular file: %v, want ENOTDIR", err)
	}

	// A directory that turns into a regular file later: writes fail, even
	// for root.
	dir := filepath.Join(base, "incidents")
	errs := make(chan error, 4)
	clk := newFakeClock()
	rec, err := incident.NewRecorder(dir, incident.WithClock(clk),
		incident.WithWriteErrorHandler(func(err error) { errs <- err }))
	if err != nil {
		t.Fatal(err)
	}
	defer rec.Close()
	if err := os.Remove(dir); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dir, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	log := zap.New(rec)
	log.Error("cannot be written")
	clk.Advance(incident.DefaultTrailingWindow)
	select {
	case err := <-errs:
		var we *incident.WriteError
		if !errors.Is(err, syscall.ENOTDIR) || !errors.As(err, &we) || !strings.Contains(err.Error(), "incident: cannot write incident file") {
			t.Errorf("reported %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("write failure not reported")
	}
	log.Info("still fine") // the process carries on
	if st := rec.Stats(); st.WriteErrors != 1 || st.Recorded != 2 {
		t.Errorf("stats %+v", st)
	}
}

func TestRecorderCloseWritesOpenIncident(t *testing.T) {
	rec, _, fsys, log := newTestRecorder(t)
	log.Error("open", zap.String(incident.PeerKey, "p"))
	log.Info("trailing")
	if err := rec.Close(); err != nil {
		t.Fatal(err)
	}
	_, lines, tr := readIncident(t, fsys.written(t))
	if tr.ClosedBy != "close" || tr.Triggers != 1 || len(lines) != 2 {
		t.Errorf("trailer %+v, %d lines", tr, len(lines))
	}
	if err := rec.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	log.Error("after close")
	if st := rec.Stats(); st.Recorded != 2 || st.Incidents != 1 {
		t.Errorf("stats %+v", st)
	}
	goleak.VerifyNone(t)
}

func TestRecorderCloseIsBounded(t *testing.T) {
	gate := make(chan struct{})
	defer close(gate)
	entered := make(chan struct{}, 1)
	rec, clk, fsys, log := newTestRecorder(t, incident.WithCloseTimeout(100*time.Millisecond))
	fsys.onCreate = func(int, string) error {
		entered <- struct{}{}
		<-gate // a disk that does not answer
		return nil
	}
	log.Error("stuck")
	clk.Advance(incident.DefaultTrailingWindow)
	<-entered
	log.Error("still logging while the disk hangs")

	t0 := time.Now()
	err := rec.Close()
	var te *incident.TimeoutError
	if !errors.As(err, &te) || te.Op != "close" || !errors.Is(err, incident.ErrTimeout) {
		t.Fatalf("Close = %v, want a close timeout", err)
	}
	if took := time.Since(t0); took > 2*time.Second {
		t.Errorf("Close took %v", took)
	}
}

func TestLevelNames(t *testing.T) {
	for _, c := range []struct {
		got, want zapcore.Level
	}{
		{incident.Noisy, zapcore.DebugLevel},
		{incident.Operational, zapcore.InfoLevel},
		{incident.Unusual, zapcore.WarnLevel},
		{incident.Infrequent, zapcore.WarnLevel},
		{incident.Curious, zapcore.WarnLevel},
		{incident.Weird, zapcore.ErrorLevel},
		{incident.Scary, zapcore.DPanicLevel},
		{incident.Bad, zapcore.DPanicLevel},
	} {
		if c.got != c.want {
			t.Errorf("got %v, want %v", c.got, c.want)
		}
	}
}

func TestRecorderTriggerKeptWithoutErrorHistory(t *testing.T) {
	_, clk, fsys, log := newTestRecorder(t, incident.WithHistory(zapcore.ErrorLevel, 0))
	log.Error("earlier error, not kept")
	clk.Advance(incident.DefaultTrailingWindow)
	_ = fsys.written(t)
	clk.Advance(incident.DefaultRateLimit)
	log.Info("kept")
	log.Error("trigger", zap.String(incident.PeerKey, "p"))
	clk.Advance(incident.DefaultTrailingWindow)
	h, lines, _ := readIncident(t, fsys.written(t))
	if h.Trigger != "trigger" || h.History != 1 || len(lines) != 2 || lines[1].msg() != "trigger" || lines[1][incident.PeerKey] != "p" {
		t.Errorf("header %+v, lines %v", h, lines)
	}
}
