package logport

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/tetherrpc/tether/rpc"
)

// IncidentSource is where a port finds incident files. *incident.Recorder
// is one; IncidentDir makes one that scans a directory.
type IncidentSource interface {
	// Dir is the directory that holds the files.
	Dir() string
	// Files lists the files: paths (or bare names) in Dir.
	Files() []string
}

// IncidentDir is an IncidentSource that lists every incident-*.json file
// in dir, including those of earlier runs of the node.
func IncidentDir(dir string) IncidentSource { return dirSource(dir) }

type dirSource string

func (d dirSource) Dir() string { return string(d) }

func (d dirSource) Files() []string {
	ents, err := os.ReadDir(string(d))
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range ents {
		if e.Type().IsRegular() && ValidIncidentName(e.Name()) {
			out = append(out, e.Name())
		}
	}
	return out
}

// IncidentInfo describes one incident file.
type IncidentInfo struct {
	Name string    `cbor:"1,keyasint"` // incident-<time>-<id>.json
	Size int64     `cbor:"2,keyasint"` // bytes
	Time time.Time `cbor:"3,keyasint"` // last modified
}

// maxListed bounds the list MethodIncidents answers with: the newest ones.
const maxListed = 1024

// ValidIncidentName reports whether name may be fetched: "incident-",
// then letters, digits, '.', '-' or '_' without "..", then ".json", in all
// at most 255 bytes. Anything else (a path separator, "..", another
// prefix) is refused before the file system is touched, and files are
// opened through an os.Root confined to the incident directory besides.
func ValidIncidentName(name string) bool {
	const prefix, suffix = "incident-", ".json"
	if len(name) > maxNameLen || len(name) <= len(prefix)+len(suffix) ||
		!strings.HasPrefix(name, prefix) || !strings.HasSuffix(name, suffix) ||
		strings.Contains(name, "..") {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '.', c == '-', c == '_':
		default:
			return false
		}
	}
	return true
}

// serveList answers MethodIncidents: the incident files, oldest first
// (incident names sort by time), CBOR-encoded.
func (p *Port) serveList(ctx context.Context, _ []byte) ([]byte, error) {
	list := []IncidentInfo{}
	if src := p.cfg.incidents; src != nil {
		root, err := os.OpenRoot(src.Dir())
		if err != nil {
			return nil, rpc.Errorf(rpc.CodeApplication, "incident directory: %v", err)
		}
		defer root.Close()
		for _, f := range src.Files() {
			name := filepath.Base(f)
			if !ValidIncidentName(name) {
				continue
			}
			fi, err := root.Stat(name)
			if err != nil || !fi.Mode().IsRegular() {
				continue // deleted since, or not a file
			}
			list = append(list, IncidentInfo{Name: name, Size: fi.Size(), Time: fi.ModTime().UTC()})
		}
		slices.SortFunc(list, func(a, b IncidentInfo) int { return strings.Compare(a.Name, b.Name) })
		list = slices.CompactFunc(list, func(a, b IncidentInfo) bool { return a.Name == b.Name })
		if len(list) > maxListed {
			list = list[len(list)-maxListed:]
		}
	}
	return rpc.CBOR.Marshal(list)
}

// serveFetch answers MethodIncident: the subscriber sends a FETCH frame
// with a name; the port answers with a FILE frame and the file's bytes, or
// an error frame.
func (p *Port) serveFetch(ctx context.Context, st *rpc.Stream) error {
	if !p.enter() {
		return p.farewell(st, &Error{Code: CodeClosed, Message: "the port is closed"})
	}
	defer p.wg.Done()
	st.SetReadDeadline(time.Now().Add(handshakeTimeout))
	var buf [maxClientFrame]byte
	t, payload, err := readFrame(st, buf[:], maxClientFrame)
	if err == nil && t != frameFetch {
		err = protocolf("unexpected %s frame: a fetch must come first", frameName(t))
	}
	if err != nil {
		return p.handshakeFailed(st, peerOf(ctx), err, "fetch")
	}
	name := string(payload)
	if !ValidIncidentName(name) {
		return p.farewell(st, &Error{Code: CodeBadName, Message: fmt.Sprintf("%q is not an incident file name (incident-*.json, no path)", name)})
	}
	src := p.cfg.incidents
	if src == nil {
		return p.farewell(st, &Error{Code: CodeNotFound, Message: "this port serves no incidents"})
	}
	root, err := os.OpenRoot(src.Dir())
	if err != nil {
		return p.farewell(st, &Error{Code: CodeInternal, Message: "incident directory: " + err.Error()})
	}
	defer root.Close()
	f, err := root.Open(name)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return p.farewell(st, &Error{Code: CodeNotFound, Message: fmt.Sprintf("no incident %q", name)})
		}
		return p.farewell(st, &Error{Code: CodeInternal, Message: err.Error()})
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() {
		return p.farewell(st, &Error{Code: CodeNotFound, Message: fmt.Sprintf("%q is not a regular file", name)})
	}
	st.SetReadDeadline(time.Time{})
	size := fi.Size()
	if _, err := st.Write(appendFile(nil, size)); err != nil {
		return err
	}
	// The size was promised: send exactly that much, even if the file
	// changes meanwhile (incident files are written once, then renamed).
	n, err := io.Copy(st, io.LimitReader(f, size))
	if err == nil && n < size {
		err = fmt.Errorf("logport: incident %s shrank from %d to %d bytes while being sent", name, size, n)
	}
	return err
}

// Caller makes calls: a *peer.Peer or an *rpc.Conn.
type Caller interface {
	Call(ctx context.Context, method string, args, reply any) error
}

// ListIncidents asks a port for its incident files, oldest first.
func ListIncidents(ctx context.Context, c Caller) ([]IncidentInfo, error) {
	var raw []byte
	if err := c.Call(ctx, MethodIncidents, []byte(nil), &raw); err != nil {
		return nil, err
	}
	var list []IncidentInfo
	if err := rpc.CBOR.Unmarshal(raw, &list); err != nil {
		return nil, protocolf("decoding the incident list: %v", err)
	}
	return list, nil
}

// FetchIncident fetches the incident file name from a port and writes it to
// w; it returns the bytes written. Names that ValidIncidentName refuses are
// refused here before anything is sent; the port checks again.
func FetchIncident(ctx context.Context, s Streamer, name string, w io.Writer) (int64, error) {
	if !ValidIncidentName(name) {
		return 0, fmt.Errorf("%w: %q", ErrBadName, name)
	}
	st, err := s.Stream(ctx, MethodIncident)
	if err != nil {
		return 0, err
	}
	defer st.Close()
	if _, err := st.Write(appendFetch(nil, name)); err != nil {
		return 0, err
	}
	var buf [64]byte
	t, payload, err := readFrame(st, buf[:], maxErrorMessage+2)
	if err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return 0, err
	}
	switch t {
	case frameError:
		return 0, parseError(payload)
	case frameFile:
	default:
		return 0, protocolf("unexpected %s frame in answer to a fetch", frameName(t))
	}
	if len(payload) != fileLen {
		return 0, protocolf("a file frame of %d bytes", len(payload))
	}
	size := int64(binary.BigEndian.Uint64(payload))
	if size < 0 {
		return 0, protocolf("a file of %d bytes", uint64(size))
	}
	n, err := io.CopyN(w, st, size)
	if err == io.EOF {
		err = fmt.Errorf("logport: incident %s ended after %d of %d bytes: %w", name, n, size, io.ErrUnexpectedEOF)
	}
	return n, err
}
