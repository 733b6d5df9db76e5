package liveness_test

import (
	"fmt"
	"log"
	"time"

	"github.com/tetherrpc/tether/liveness"
)

// A node wraps each handler call in Begin and End, and answers its health
// checks with Healthy; OnUnhealthy is where it drains and exits when a
// problem lasts.
func ExampleWatchdog() {
	w, err := liveness.NewWatchdog(liveness.WatchdogConfig{
		HangAfter: 30 * time.Second,
		MaxHeap:   8 << 30, // hard bound, above any debug.SetMemoryLimit soft limit
		Sustain:   2 * time.Minute,
		OnUnhealthy: func(fs []liveness.Finding) {
			log.Printf("unhealthy for 2 minutes: %v; draining", fs)
		},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer w.Close()

	c := w.Begin("storage.get", "peer-1")
	// ... the handler runs ...
	c.End()

	ok, reasons := w.Healthy()
	fmt.Println(ok, reasons, w.InFlight())
	// Output: true [] 0
}
