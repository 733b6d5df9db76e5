package logport_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/tetherrpc/tether/incident"
	"github.com/tetherrpc/tether/incident/logport"
)

// writeIncident makes a real incident file with a Recorder and returns the
// recorder (closed) and the file's path.
func writeIncident(t *testing.T, dir string) (*incident.Recorder, string) {
	t.Helper()
	rec, err := incident.NewRecorder(dir, incident.WithTrailing(time.Hour, 10))
	if err != nil {
		t.Fatal(err)
	}
	l := zap.New(rec)
	l.Info("before")
	l.Error("disk failed", zap.String(incident.PeerKey, "p1"))
	if err := rec.Close(); err != nil { // closes the open incident and writes it
		t.Fatal(err)
	}
	files := rec.Files()
	if len(files) != 1 {
		t.Fatalf("recorder wrote %v", files)
	}
	return rec, files[0]
}

// A subscriber lists incident files and fetches one, byte for byte.
func TestIncidentListAndFetch(t *testing.T) {
	dir := t.TempDir()
	rec, path := writeIncident(t, dir)
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, logport.WithIncidents(rec))
	c, _ := e.connect()
	ctx := context.Background()

	list, err := logport.ListIncidents(ctx, c)
	if err != nil {
		t.Fatal(err)
	}
	name := filepath.Base(path)
	if len(list) != 1 || list[0].Name != name || list[0].Size != int64(len(want)) || list[0].Time.IsZero() {
		t.Fatalf("list %+v, want %s of %d bytes", list, name, len(want))
	}
	var got bytes.Buffer
	n, err := logport.FetchIncident(ctx, logport.StreamFunc(c.OpenStream), name, &got)
	if err != nil || n != int64(len(want)) || !bytes.Equal(got.Bytes(), want) {
		t.Fatalf("fetched %d bytes, err %v; equal %v", n, err, bytes.Equal(got.Bytes(), want))
	}
	if !strings.Contains(got.String(), "disk failed") {
		t.Fatalf("%s", got.String())
	}

	// A missing file is not found; IncidentDir lists the same file.
	_, err = logport.FetchIncident(ctx, logport.StreamFunc(c.OpenStream), "incident-20000101T000000.000Z-00000000.json", &got)
	if !errors.Is(err, logport.ErrNotFound) {
		t.Fatalf("missing: %v", err)
	}
	if files := logport.IncidentDir(dir).Files(); len(files) != 1 || files[0] != name {
		t.Fatalf("IncidentDir lists %v", files)
	}
}

// Path traversal is refused: by the client before sending, and by the port
// when a client sends it anyway, before the file system is touched; and a
// symlink out of the directory is neither listed nor served.
func TestIncidentPathTraversal(t *testing.T) {
	dir := t.TempDir()
	inc := filepath.Join(dir, "incidents")
	if err := os.Mkdir(inc, 0o755); err != nil {
		t.Fatal(err)
	}
	secret := filepath.Join(dir, "secret.json")
	if err := os.WriteFile(secret, []byte(`{"secret":true}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(inc, "incident-ok.json"), []byte("{}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(secret, filepath.Join(inc, "incident-link.json")); err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, logport.WithIncidents(logport.IncidentDir(inc)))
	c, _ := e.connect()
	ctx := context.Background()

	bad := []string{
		"../x", "/etc/passwd", "incident-../../x.json", "incident-../secret.json",
		"incident-x.json/../../secret.json", `incident-..\secret.json`, "incident-.json",
		"incident-a.json\x00", "../incidents/incident-ok.json", "./incident-ok.json",
		"incident-ok.json ", "INCIDENT-ok.json", "incident-ok.JSON", "", strings.Repeat("incident-", 40) + ".json",
	}
	for _, name := range bad {
		if logport.ValidIncidentName(name) {
			t.Errorf("ValidIncidentName(%q) is true", name)
		}
		_, err := logport.FetchIncident(ctx, logport.StreamFunc(c.OpenStream), name, new(bytes.Buffer))
		if !errors.Is(err, logport.ErrBadName) {
			t.Errorf("client side, %q: %v", name, err)
		}
		// Sent anyway, raw.
		if len(name) > 255 {
			continue
		}
		st, err := c.OpenStream(ctx, logport.MethodIncident)
		if err != nil {
			t.Fatal(err)
		}
		st.Write(frame(0x03, []byte(name)...))
		code, msg := readUntilError(t, st)
		st.Close()
		if code != logport.CodeBadName {
			t.Errorf("port side, %q: (%v) %s", name, code, msg)
		}
	}

	var got bytes.Buffer
	if _, err := logport.FetchIncident(ctx, logport.StreamFunc(c.OpenStream), "incident-link.json", &got); err == nil || strings.Contains(got.String(), "secret") {
		t.Fatalf("the symlink out of the directory was served: %q, %v", got.String(), err)
	}
	list, err := logport.ListIncidents(ctx, c)
	if err != nil || len(list) != 1 || list[0].Name != "incident-ok.json" {
		t.Fatalf("list %+v, %v", list, err)
	}
	if _, err := logport.FetchIncident(ctx, logport.StreamFunc(c.OpenStream), "incident-ok.json", &got); err != nil || got.String() != "{}\n" {
		t.Fatalf("%q %v", got.String(), err)
	}
}

// A port without an incident source lists nothing and finds nothing.
func TestNoIncidentSource(t *testing.T) {
	e := newEnv(t)
	c, _ := e.connect()
	list, err := logport.ListIncidents(context.Background(), c)
	if err != nil || len(list) != 0 {
		t.Fatalf("%v %v", list, err)
	}
	_, err = logport.FetchIncident(context.Background(), logport.StreamFunc(c.OpenStream), "incident-x.json", new(bytes.Buffer))
	if !errors.Is(err, logport.ErrNotFound) {
		t.Fatal(err)
	}
}
