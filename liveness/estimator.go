package liveness

import "time"

// Estimator learns a peer's round-trip time as TCP does (RFC 6298): a
// smoothed mean (SRTT) and mean deviation (RTTVAR) of the samples, and a
// timeout of SRTT + 4·RTTVAR clamped to bounds. The zero value has no
// samples; its timeout is the upper bound until the first sample, as
// RFC 6298 starts conservatively. It is not safe for concurrent use.
type Estimator struct {
	srtt, rttvar time.Duration
	samples      int
}

// Observe adds one round-trip sample.
func (e *Estimator) Observe(rtt time.Duration) {
	if rtt < 0 {
		return
	}
	if e.samples == 0 {
		e.srtt, e.rttvar = rtt, rtt/2
	} else {
		// RTTVAR = 3/4 RTTVAR + 1/4 |SRTT - R|; SRTT = 7/8 SRTT + 1/8 R.
		dev := e.srtt - rtt
		if dev < 0 {
			dev = -dev
		}
		e.rttvar += (dev - e.rttvar) / 4
		e.srtt += (rtt - e.srtt) / 8
	}
	e.samples++
}

// Timeout is SRTT + 4·RTTVAR clamped to [lo, hi]; hi before any sample.
func (e *Estimator) Timeout(lo, hi time.Duration) time.Duration {
	if e.samples == 0 {
		return hi
	}
	return min(max(e.srtt+4*e.rttvar, lo), hi)
}

// SRTT is the smoothed round trip, RTTVAR its mean deviation, and Samples
// how many round trips were observed.
func (e *Estimator) SRTT() time.Duration   { return e.srtt }
func (e *Estimator) RTTVAR() time.Duration { return e.rttvar }
func (e *Estimator) Samples() int          { return e.samples }
