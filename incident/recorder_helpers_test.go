package incident_test

import (
	"bufio"
	"encoding/json"
	"io"
	"io/fs"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/tetherrpc/tether/incident"
)

// testFS is the operating system's file system with hooks: Create can be
// made to fail or wait, and every completed rename is announced.
type testFS struct {
	mu       sync.Mutex
	creates  int
	onCreate func(n int, name string) error // n counts from 1
	renamed  chan string
}

func newTestFS() *testFS { return &testFS{renamed: make(chan string, 64)} }

func (f *testFS) MkdirAll(path string, perm fs.FileMode) error { return os.MkdirAll(path, perm) }

func (f *testFS) Create(name string) (io.WriteCloser, error) {
	f.mu.Lock()
	f.creates++
	n, hook := f.creates, f.onCreate
	f.mu.Unlock()
	if hook != nil {
		if err := hook(n, name); err != nil {
			return nil, err
		}
	}
	return os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
}

func (f *testFS) Rename(oldpath, newpath string) error {
	err := os.Rename(oldpath, newpath)
	if err == nil {
		f.renamed <- newpath
	}
	return err
}

func (f *testFS) Remove(name string) error { return os.Remove(name) }

// written waits for the next incident file.
func (f *testFS) written(t *testing.T) string {
	t.Helper()
	select {
	case p := <-f.renamed:
		return p
	case <-time.After(10 * time.Second):
		t.Fatal("no incident file written")
		return ""
	}
}

// noneWritten fails if an incident file has been written.
func (f *testFS) noneWritten(t *testing.T) {
	t.Helper()
	select {
	case p := <-f.renamed:
		t.Fatalf("unexpected incident file %s", p)
	default:
	}
}

// line is one entry of an incident file.
type line map[string]any

func (l line) seq() uint64   { return uint64(l["seq"].(float64)) }
func (l line) msg() string   { return l["msg"].(string) }
func (l line) level() string { return l["level"].(string) }

// readIncident parses an incident file.
func readIncident(t *testing.T, path string) (incident.Header, []line, incident.Trailer) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var raw [][]byte
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		raw = append(raw, append([]byte(nil), sc.Bytes()...))
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if len(raw) < 2 {
		t.Fatalf("%s: %d lines", path, len(raw))
	}
	var h incident.Header
	var tr incident.Trailer
	if err := json.Unmarshal(raw[0], &h); err != nil || h.Incident == "" || h.Format != incident.IncidentFormat {
		t.Fatalf("header %s: %v", raw[0], err)
	}
	if err := json.Unmarshal(raw[len(raw)-1], &tr); err != nil || !tr.Trailer || tr.Incident != h.Incident {
		t.Fatalf("trailer %s: %v", raw[len(raw)-1], err)
	}
	var lines []line
	for _, r := range raw[1 : len(raw)-1] {
		var l line
		if err := json.Unmarshal(r, &l); err != nil {
			t.Fatalf("line %s: %v", r, err)
		}
		lines = append(lines, l)
	}
	return h, lines, tr
}
