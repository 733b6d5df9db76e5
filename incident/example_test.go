package incident_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/tetherrpc/tether/incident"
)

// Wrap an existing logger's core so that a slow or stuck sink never holds up
// a caller.
func ExampleAsync() {
	cfg := zap.NewProductionEncoderConfig()
	cfg.TimeKey = "" // keep the output reproducible
	existing := zap.New(zapcore.NewCore(zapcore.NewJSONEncoder(cfg), zapcore.AddSync(os.Stdout), zapcore.InfoLevel))

	async := incident.Async(existing.Core())
	log := zap.New(async)
	log.Info("peer evicted", zap.String(incident.PeerKey, "p1"), zap.Int("cancelled", 102))
	log.Debug("below the inner core's level: not queued, no sequence number")
	log.Warn("reconnecting", zap.String(incident.PeerKey, "p1"))

	_ = async.Close() // drains the queue; Sync would too, without stopping
	st := async.Stats()
	fmt.Printf("enqueued %d, written %d, dropped %d\n", st.Enqueued, st.Written, st.Dropped)
	// Output:
	// {"level":"info","msg":"peer evicted","seq":1,"peer":"p1","cancelled":102}
	// {"level":"warn","msg":"reconnecting","seq":2,"peer":"p1"}
	// enqueued 2, written 2, dropped 0
}

// Tee a Recorder beside the main log: a burst of errors becomes one incident
// file, written in the background.
func ExampleNewRecorder() {
	dir, err := os.MkdirTemp("", "incidents")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer os.RemoveAll(dir)

	rec, err := incident.NewRecorder(dir)
	if err != nil {
		fmt.Println(err)
		return
	}
	main := incident.Async(zapcore.NewCore(
		zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig()), zapcore.AddSync(io.Discard), zapcore.InfoLevel))
	log := zap.New(zapcore.NewTee(main, rec))

	log.Debug("handshake done", zap.String(incident.PeerKey, "a")) // recorded as history only
	log.Info("serving")
	for _, p := range []string{"a", "b", "a"} {
		log.Error("call failed", zap.String(incident.PeerKey, p)) // one incident, three triggers
	}

	_ = main.Close()
	_ = rec.Close() // closes the open incident and waits for its file
	for _, path := range rec.Files() {
		f, err := os.Open(path)
		if err != nil {
			fmt.Println(err)
			return
		}
		var last []byte
		for sc := bufio.NewScanner(f); sc.Scan(); {
			last = append(last[:0], sc.Bytes()...)
		}
		f.Close()
		var tr incident.Trailer
		if err := json.Unmarshal(last, &tr); err != nil {
			fmt.Println(err)
			return
		}
		fmt.Printf("%d triggers from peers %v, %d trailing entries\n", tr.Triggers, tr.Peers, tr.Trailing)
	}
	// Output:
	// 3 triggers from peers [a b], 2 trailing entries
}

// Log with foolscap's level names.
func Example_levels() {
	cfg := zap.NewProductionEncoderConfig()
	cfg.TimeKey = ""
	core := zapcore.NewCore(zapcore.NewJSONEncoder(cfg), zapcore.AddSync(os.Stdout), incident.Operational)
	async := incident.Async(core)
	defer async.Close()
	log := zap.New(async)

	log.Log(incident.Noisy, "frame received") // below Operational: not written
	log.Log(incident.Curious, "peer answered late")
	log.Log(incident.Weird, "unexpected message")
	_ = async.Sync()
	// Output:
	// {"level":"warn","msg":"peer answered late","seq":1}
	// {"level":"error","msg":"unexpected message","seq":2}
}
