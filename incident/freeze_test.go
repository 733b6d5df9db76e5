package incident_test

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/tetherrpc/tether/incident"
)

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) Sync() error { return nil }

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// gatedCore holds every Write until its gate is closed.
type gatedCore struct {
	zapcore.Core
	gate chan struct{}
}

func (g *gatedCore) With(f []zapcore.Field) zapcore.Core {
	return &gatedCore{Core: g.Core.With(f), gate: g.gate}
}

func (g *gatedCore) Check(ent zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if g.Enabled(ent.Level) {
		return ce.AddCore(ent, g)
	}
	return ce
}

func (g *gatedCore) Write(ent zapcore.Entry, f []zapcore.Field) error {
	<-g.gate
	return g.Core.Write(ent, f)
}

func jsonCore(w zapcore.WriteSyncer) zapcore.Core {
	cfg := zap.NewProductionEncoderConfig()
	cfg.TimeKey = ""
	return zapcore.NewCore(zapcore.NewJSONEncoder(cfg), w, zapcore.DebugLevel)
}

type box struct{ v string }

func (b *box) String() string { return b.v }

type boxErr struct{ v string }

func (e *boxErr) Error() string { return e.v }

// richErr prints more with %+v, as github.com/pkg/errors does.
type richErr struct{ v string }

func (e *richErr) Error() string { return e.v }
func (e *richErr) Format(f fmt.State, verb rune) {
	if f.Flag('+') {
		fmt.Fprintf(f, "%s\n\tdetail of %s", e.v, e.v)
		return
	}
	fmt.Fprint(f, e.v)
}

// errGroup is an error made of several, as go.uber.org/multierr makes;
// zap lists such errors' causes.
type errGroup []error

func (g errGroup) Error() string {
	var parts []string
	for _, e := range g {
		parts = append(parts, e.Error())
	}
	return strings.Join(parts, "; ")
}

func (g errGroup) Errors() []error { return g }

type user struct {
	name string
	tags []string
	meta map[string]int
}

func (u *user) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	enc.AddString("name", u.name)
	_ = enc.AddArray("tags", zapcore.ArrayMarshalerFunc(func(a zapcore.ArrayEncoder) error {
		for _, t := range u.tags {
			a.AppendString(t)
		}
		_ = a.AppendObject(zapcore.ObjectMarshalerFunc(func(o zapcore.ObjectEncoder) error {
			o.AddInt("len", len(u.tags))
			return nil
		}))
		return a.AppendReflected(u.meta)
	}))
	enc.OpenNamespace("inner")
	enc.AddDuration("d", time.Second)
	return enc.AddReflected("meta", u.meta)
}

type halfMarshaler struct{ v string }

func (h *halfMarshaler) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	enc.AddString("partial", h.v)
	return errors.New("half done: " + h.v)
}

type panicky struct{}

func (panicky) MarshalLogObject(zapcore.ObjectEncoder) error { panic("marshaler bug") }

func TestAsyncSnapshotsFieldsAtCall(t *testing.T) {
	bin := []byte("hello")
	bs := []byte("world")
	str := &box{"old stringer"}
	e1 := &boxErr{"old error"}
	rich := &richErr{"old rich"}
	group := errGroup{&boxErr{"old a"}, e1}
	u := &user{name: "old name", tags: []string{"old tag", "t2"}, meta: map[string]int{"k": 1}}
	nums := []int{1, 2, 3}
	refl := map[string][]int{"a": {1}}
	anyv := &struct{ X []string }{X: []string{"old any", "<&>"}}
	half := &halfMarshaler{"old half"}
	fields := func() []zapcore.Field {
		return []zapcore.Field{
			zap.Binary("bin", bin),
			zap.ByteString("bs", bs),
			zap.Stringer("str", str),
			zap.Stringer("nilstr", (*box)(nil)),
			zap.Error(e1),
			zap.NamedError("rich", rich),
			zap.NamedError("group", group),
			zap.Object("user", u),
			zap.Inline(u),
			zap.Ints("nums", nums),
			zap.Reflect("refl", refl),
			zap.Any("any", anyv),
			zap.Object("half", half),
			zap.Time("when", time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC)),
			zap.Namespace("ns"),
			zap.Int("after", 1),
		}
	}
	ent := zapcore.Entry{Level: zapcore.InfoLevel, Message: "snap", Time: time.Unix(1, 0)}

	// What an unwrapped core writes at the call.
	var want lockedBuffer
	if err := jsonCore(&want).Write(ent, fields()); err != nil {
		t.Fatal(err)
	}

	var got lockedBuffer
	gate := make(chan struct{})
	a := incident.Async(&gatedCore{Core: jsonCore(&got), gate: gate})
	defer a.Close()
	if err := a.Write(ent, fields()); err != nil {
		t.Fatal(err)
	}

	// Change everything the fields point to.
	bin[0], bs[0] = 'J', 'W'
	str.v, e1.v, rich.v, half.v = "NEW", "NEW", "NEW", "NEW"
	u.name, u.tags[0], u.meta["k"] = "NEW", "NEW", 99
	nums[0] = 99
	refl["a"][0] = 99
	anyv.X[0] = "NEW"

	var mutated lockedBuffer
	if err := jsonCore(&mutated).Write(ent, fields()); err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{`"richVerbose"`, `"groupCauses"`, `"nilstr":"<nil>"`, `"halfError"`, `"<&>"`} {
		if !strings.Contains(want.String(), key) {
			t.Fatalf("the fields do not exercise %s:\n%s", key, want.String())
		}
	}
	if mutated.String() == want.String() || !strings.Contains(mutated.String(), "NEW") {
		t.Fatalf("the mutations changed nothing; the test proves nothing:\n%s", mutated.String())
	}

	close(gate)
	if err := a.Sync(); err != nil {
		t.Fatal(err)
	}
	out := strings.Replace(got.String(), `"seq":1,`, "", 1)
	if out != want.String() {
		t.Errorf("async output differs from the output at the call\n got: %s\nwant: %s", out, want.String())
	}
	if strings.Contains(out, "NEW") || strings.Contains(out, "99") {
		t.Errorf("async output shows later values: %s", out)
	}
}

func TestAsyncContainsMarshalerPanics(t *testing.T) {
	s := newSink()
	a := incident.Async(s.core(zapcore.DebugLevel))
	defer a.Close()
	ent := zapcore.Entry{Level: zapcore.InfoLevel, Message: "m"}
	err := a.Write(ent, []zapcore.Field{
		zap.Object("boom", panicky{}),
		{Key: "weird", Type: zapcore.FieldType(250)},
		zap.Int("fine", 7),
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Sync(); err != nil {
		t.Fatal(err)
	}
	got := s.all()
	if len(got) != 1 {
		t.Fatalf("sink saw %d entries", len(got))
	}
	boom, ok1 := got[0].field("boomError")
	weird, ok2 := got[0].field("weirdError")
	fine, ok3 := got[0].field("fine")
	if !ok1 || !strings.Contains(boom.String, "marshaler bug") || !ok2 || !strings.HasPrefix(weird.String, "PANIC=") || !ok3 || fine.Integer != 7 {
		t.Errorf("fields %+v", got[0].fields)
	}
	if st := a.Stats(); st.Errors != 0 {
		t.Errorf("Errors = %d: the panics should have been caught at the call", st.Errors)
	}
}

func TestAsyncWithSnapshotsContext(t *testing.T) {
	var got lockedBuffer
	a := incident.Async(jsonCore(&got))
	defer a.Close()
	b := []byte("ctx-old")
	log := zap.New(a).With(zap.ByteString("ctx", b))
	b[4] = 'X'
	log.Info("m")
	if err := a.Sync(); err != nil {
		t.Fatal(err)
	}
	if want := `{"level":"info","msg":"m","ctx":"ctx-old","seq":1}`; strings.TrimSpace(got.String()) != want {
		t.Errorf("got %s, want %s", got.String(), want)
	}
}
