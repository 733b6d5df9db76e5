package main

import (
	"bytes"
	"os"
	"strconv"
	"time"
)

// cpuStall reads Linux's CPU pressure (PSI): the total time, since boot,
// that some runnable task on the machine waited for a CPU. It tells a busy
// machine (other processes competing for the two cores) from a slow
// program, when read latencies are compared across a run. ok is false
// where the kernel does not report it.
func cpuStall() (total time.Duration, ok bool) {
	b, err := os.ReadFile("/proc/pressure/cpu")
	if err != nil {
		return 0, false
	}
	// "some avg10=0.00 avg60=0.00 avg300=0.00 total=12345" (microseconds)
	line, _, _ := bytes.Cut(b, []byte("\n"))
	i := bytes.Index(line, []byte("total="))
	if !bytes.HasPrefix(line, []byte("some ")) || i < 0 {
		return 0, false
	}
	us, err := strconv.ParseInt(string(bytes.TrimSpace(line[i+len("total="):])), 10, 64)
	if err != nil {
		return 0, false
	}
	return time.Duration(us) * time.Microsecond, true
}

// pressure is the share of [from, to) during which some task waited for a
// CPU, in percent, from the samples' readings; nil without them.
func pressure(samples []sample, from, to time.Duration) *float64 {
	var a, b *sample
	for i := range samples {
		s := &samples[i]
		if s.stall < 0 {
			return nil
		}
		if a == nil && s.t >= from {
			a = s
		}
		if s.t <= to {
			b = s
		}
	}
	if a == nil || b == nil || b.t <= a.t {
		return nil
	}
	p := 100 * float64(b.stall-a.stall) / float64(b.t-a.t)
	return ptr(round3(min(max(p, 0), 100)))
}
