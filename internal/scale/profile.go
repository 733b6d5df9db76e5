package scale

import (
	"fmt"
	"os"
	"runtime"
	"runtime/pprof"
)

// Environment variables that make Run write profiles of the node after the
// idle window, once memory has been measured, for finding what an idle
// peer costs and where.
const (
	// EnvHeapProfile names a file Run writes the node's heap profile to
	// (pprof format; look at inuse_space).
	EnvHeapProfile = "TETHER_SCALE_HEAPPROFILE"
	// EnvGoroutineProfile names a file Run writes the node's goroutines to,
	// grouped by stack (the text of pprof's goroutine profile, debug=1).
	EnvGoroutineProfile = "TETHER_SCALE_GOROUTINEPROFILE"
)

// profileAllocations makes the heap profile, if one is asked for, record
// every allocation from now on, not one per 512 KiB: the figures per
// connection are then exact.
func profileAllocations() {
	if os.Getenv(EnvHeapProfile) != "" {
		runtime.MemProfileRate = 1
	}
}

// writeProfiles writes the profiles the environment asks for, logging
// where, or why not.
func writeProfiles(logf func(string, ...any)) {
	if path := os.Getenv(EnvHeapProfile); path != "" {
		runtime.GC()
		if err := writeProfile(path, "heap", 0); err != nil {
			logf("heap profile: %v", err)
		} else {
			logf("heap profile of the node written to %s", path)
		}
	}
	if path := os.Getenv(EnvGoroutineProfile); path != "" {
		if err := writeProfile(path, "goroutine", 1); err != nil {
			logf("goroutine profile: %v", err)
		} else {
			logf("goroutine profile of the node written to %s", path)
		}
	}
}

func writeProfile(path, name string, debug int) error {
	p := pprof.Lookup(name)
	if p == nil {
		return fmt.Errorf("no %s profile", name)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := p.WriteTo(f, debug); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
