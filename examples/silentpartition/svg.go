package main

import (
	"bufio"
	"bytes"
	"encoding/xml"
	"fmt"
	"io"
	"math"
	"os"
	"strings"
)

// writeSVGFile writes the run's timeline picture to path.
func writeSVGFile(path string, r *Result) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := writeSVG(f, r); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// The picture's geometry, in SVG user units.
const (
	svgW, svgH   = 960, 590
	plotL, plotR = 78, 930  // plot area, left and right
	aTop, aBot   = 100, 360 // panel A: calls in flight per peer
	bTop, bBot   = 405, 525 // panel B: reads a second
)

var peerColours = []string{"#1f77b4", "#2ca02c", "#ff7f0e", "#17becf", "#8c564b", "#bcbd22", "#7f7f7f", "#e377c2"}

const (
	victimColour   = "#d62728"
	baselineColour = "#9467bd"
	readsColour    = "#1f77b4"
)

// writeSVG draws the run: calls in flight to each storage node over time
// (the silenced one in red), the plain yamux calls with -baseline, reads
// a second below, and the partition (a shaded band), eviction, heal and
// reconnection as marks. Every mark has an id: partition, eviction, heal,
// reconnect, suspect, baseline-partition, baseline-notice.
func writeSVG(w io.Writer, r *Result) error {
	bw := bufio.NewWriter(w)
	p := &svgPen{w: bw}
	samples := r.samples
	end := 0.0
	if len(samples) > 0 {
		end = samples[len(samples)-1].t.Seconds()
	}
	end = max(end, r.EndAtS, 1)
	var xs []float64
	for _, n := range []int{10, 12, 8, 6} { // the tightest round axis
		if t := niceTicks(0, end, n); xs == nil || t[len(t)-1] < xs[len(xs)-1] {
			xs = t
		}
	}
	xmax := xs[len(xs)-1]
	tetherEnd := end // the tether side's samples end with its reads
	if m, ok := r.markAt("end"); ok {
		tetherEnd = m.at.Seconds()
	}
	x := func(t float64) float64 { return plotL + (plotR-plotL)*t/xmax }

	// Panel A's scale: the most calls in flight to any node.
	peak := 1
	for _, s := range samples {
		for _, n := range s.inFlight {
			peak = max(peak, n)
		}
		peak = max(peak, s.baseline)
	}
	ya := niceTicks(0, float64(peak)*1.4, 5) // headroom for the marks' labels
	yaMax := ya[len(ya)-1]
	yA := func(v float64) float64 { return aBot - (aBot-aTop)*v/yaMax }

	// Reads a second, over 250 ms windows.
	type pt struct{ t, v float64 }
	var rate []pt
	const win = 5 // samples of 50 ms
	for i := win; i < len(samples); i++ {
		dt := (samples[i].t - samples[i-win].t).Seconds()
		if dt > 0 && samples[i].t.Seconds() <= tetherEnd {
			rate = append(rate, pt{samples[i].t.Seconds(), float64(samples[i].reads-samples[i-win].reads) / dt})
		}
	}
	peakRate := 1.0
	for _, q := range rate {
		peakRate = max(peakRate, q.v)
	}
	yb := niceTicks(0, peakRate, 4)
	ybMax := yb[len(yb)-1]
	yB := func(v float64) float64 { return bBot - (bBot-bTop)*v/ybMax }

	p.f(`<?xml version="1.0" encoding="UTF-8"?>` + "\n")
	p.f(`<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="Helvetica, Arial, sans-serif" font-size="12">`+"\n", svgW, svgH, svgW, svgH)
	p.f(`<rect width="100%%" height="100%%" fill="#ffffff"/>` + "\n")

	title := fmt.Sprintf("tether: storage node %s silenced while %d calls wait on it; reads k=%d of %d", r.Victim, r.Held, r.K, r.Peers)
	p.text(plotL, 26, "start", "font-size=\"16\" font-weight=\"bold\"", title)
	sub := "kernel-level silent partition: iptables DROP in a private network namespace (no ACK, no RST)"
	if r.Mode == ModeProxy {
		sub = "user-space proxy blackholed: its kernel still ACKs, so the node looks hung, not partitioned"
	}
	p.text(plotL, 44, "start", `fill="#444"`, sub)
	sub = fmt.Sprintf("heartbeat %.0f ms", r.HeartbeatMS)
	if r.DetectMS != nil {
		sub += fmt.Sprintf(" · evicted after %.0f ms (%s) · %d calls failed at once", *r.DetectMS, r.Verdict, r.CallsCancelled)
	}
	sub += fmt.Sprintf(" · reads %d ok, %d failed", r.ReadsOK, r.ReadsFailed)
	if r.ReconnectMS != nil {
		sub += fmt.Sprintf(" · back %.0f ms after the heal", *r.ReconnectMS)
	}
	p.text(plotL, 60, "start", `fill="#444"`, sub)
	if b := r.Baseline; b != nil {
		sub = fmt.Sprintf("plain yamux (keepalive %s, write timeout %s), silenced at the same instant: ", b.KeepAlive, b.Timeout)
		if b.DetectMS != nil {
			sub += fmt.Sprintf("noticed after %.1f s; %d calls ended with a bare io.EOF", *b.DetectMS/1000, b.CallsEOF)
		} else {
			sub += fmt.Sprintf("not noticed within %.0f s", b.WaitedMS/1000)
		}
		p.text(plotL, 76, "start", fmt.Sprintf(`fill="%s"`, baselineColour), sub)
	}

	// The partition, behind everything.
	if m, ok := r.markAt("partition"); ok {
		t0 := m.at.Seconds()
		t1 := end
		if h, ok := r.markAt("heal"); ok {
			t1 = h.at.Seconds()
		}
		if b, ok := r.markAt("baseline-notice"); ok && b.at.Seconds() > t1 {
			p.f(`<rect id="baseline-partition" x="%.1f" y="%d" width="%.1f" height="%d" fill="%s" fill-opacity="0.08"><title>plain yamux's port still silenced, until it noticed</title></rect>`+"\n",
				x(t1), aTop-14, x(b.at.Seconds())-x(t1), aBot-aTop+14, baselineColour)
			p.text((x(t1)+x(b.at.Seconds()))/2, aTop-3, "middle", fmt.Sprintf(`fill="%s"`, baselineColour), "plain yamux's port still silenced")
		}
		label := "partition (iptables DROP)"
		if r.Mode == ModeProxy {
			label = "proxy blackholed"
		}
		p.f(`<rect id="partition" x="%.1f" y="%d" width="%.1f" height="%d" fill="%s" fill-opacity="0.12"><title>%s, %.3f s to %.3f s</title></rect>`+"\n",
			x(t0), aTop-14, max(x(t1)-x(t0), 1), bBot-aTop+14, victimColour, esc(label), t0, t1)
		p.text(x(t0)+4, aTop-3, "start", `fill="#a11"`, label)
	}

	// Axes and grid.
	p.axes(xs, x, ya, yA, aTop, aBot, false)
	p.axes(xs, x, yb, yB, bTop, bBot, true)
	p.text(plotL+(plotR-plotL)/2, bBot+38, "middle", "", "seconds since the grid was up")
	p.f(`<text transform="translate(24,%d) rotate(-90)" text-anchor="middle">calls in flight per peer</text>`+"\n", (aTop+aBot)/2)
	p.f(`<text transform="translate(24,%d) rotate(-90)" text-anchor="middle">reads/s</text>`+"\n", (bTop+bBot)/2)

	// Calls in flight to each storage node; the victim last, on top.
	order := make([]int, 0, len(r.nodes))
	for i := range r.nodes {
		if i != r.victimIx {
			order = append(order, i)
		}
	}
	order = append(order, r.victimIx)
	for k, i := range order {
		colour, width := peerColours[k%len(peerColours)], 1.2
		if i == r.victimIx {
			colour, width = victimColour, 2.5
		}
		var pts []pt
		for _, s := range samples {
			if i < len(s.inFlight) && s.t.Seconds() <= tetherEnd {
				pts = append(pts, pt{s.t.Seconds(), float64(s.inFlight[i])})
			}
		}
		p.f(`<polyline id="inflight-%s" fill="none" stroke="%s" stroke-width="%.1f" stroke-linejoin="round" points="`, esc(r.nodes[i]), colour, width)
		for _, q := range pts {
			p.f("%.1f,%.1f ", x(q.t), yA(q.v))
		}
		p.f(`"><title>calls in flight to %s</title></polyline>`+"\n", esc(r.nodes[i]))
	}
	if r.Baseline != nil {
		p.f(`<polyline id="inflight-baseline" fill="none" stroke="%s" stroke-width="2" stroke-dasharray="6 4" points="`, baselineColour)
		for _, s := range samples {
			if s.baseline >= 0 {
				p.f("%.1f,%.1f ", x(s.t.Seconds()), yA(float64(s.baseline)))
			}
		}
		p.f(`"><title>plain yamux: calls in flight on the silenced port</title></polyline>` + "\n")
	}

	// Reads a second, as an area.
	if len(rate) > 0 {
		p.f(`<polygon id="reads" fill="%s" fill-opacity="0.25" stroke="%s" stroke-width="1.2" points="%.1f,%d `, readsColour, readsColour, x(rate[0].t), bBot)
		for _, q := range rate {
			p.f("%.1f,%.1f ", x(q.t), yB(q.v))
		}
		p.f(`%.1f,%d"><title>reads completed a second (k=%d of %d)</title></polygon>`+"\n", x(rate[len(rate)-1].t), bBot, r.K, r.Peers)
	}

	// Marks.
	vline := func(id string, colour, dash string, labelY float64, anchor, label string) {
		m, ok := r.markAt(id)
		if !ok {
			return
		}
		xx := x(m.at.Seconds())
		p.f(`<g id="%s"><title>%s</title>`, id, esc(m.text))
		p.f(`<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="%s" stroke-width="1.5"%s/>`, xx, aTop, xx, bBot, colour, dash)
		dx := 4.0
		if anchor == "end" {
			dx = -4
		}
		p.text(xx+dx, labelY, anchor, fmt.Sprintf(`fill="%s"`, colour), label)
		p.f("</g>\n")
	}
	if r.DetectMS != nil {
		vline("eviction", victimColour, "", aTop+14, "start",
			fmt.Sprintf("evicted +%.0f ms: %d calls failed at once", *r.DetectMS, r.CallsCancelled))
		if r.CancelSpreadMS != nil {
			p.text(x(r.timelineAt("eviction"))+4, aTop+30, "start", `fill="#a11"`, fmt.Sprintf("(all within %.2f ms, rpc.ErrDeadReference)", *r.CancelSpreadMS))
		}
	}
	if r.SuspectMS != nil {
		vline("suspect", "#d08a00", ` stroke-dasharray="2 3"`, aTop+46, "start", fmt.Sprintf("suspect +%.0f ms", *r.SuspectMS))
	}
	vline("heal", "#2a7d2a", ` stroke-dasharray="6 3"`, aTop+62, "start", "heal")
	if r.ReconnectMS != nil {
		vline("reconnect", "#2a7d2a", ` stroke-dasharray="2 2"`, aTop+78, "start", fmt.Sprintf("reconnected +%.0f ms", *r.ReconnectMS))
	}
	if r.Baseline != nil && r.Baseline.DetectMS != nil {
		vline("baseline-notice", baselineColour, ` stroke-dasharray="6 4"`, aTop+14, "end",
			fmt.Sprintf("plain yamux noticed: +%.1f s", *r.Baseline.DetectMS/1000))
	}

	// Legend.
	ly := float64(aTop) + 110
	lx := float64(plotR) - 265
	if r.Baseline != nil {
		lx = min(x(tetherEnd)+30, lx)
	}
	p.f(`<g id="legend">`)
	rows := min(len(order)-1, 4) + 1
	if r.Baseline != nil {
		rows++
	}
	p.f(`<rect x="%.1f" y="%.1f" width="270" height="%d" fill="#ffffff" fill-opacity="0.9" stroke="#ccc"/>`, lx-8, ly-16, rows*17+8)
	item := func(colour, dash string, wd float64, label string) {
		p.f(`<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-width="%.1f"%s/>`, lx, ly-4, lx+24, ly-4, colour, wd, dash)
		p.text(lx+30, ly, "start", "", label)
		ly += 17
	}
	item(victimColour, "", 2.5, r.Victim+" (silenced): tether calls in flight")
	for k, i := range order[:len(order)-1] {
		if k == 3 && len(order) > 5 {
			item("#999", "", 1.2, fmt.Sprintf("… and %d more healthy nodes", len(order)-1-k))
			break
		}
		item(peerColours[k%len(peerColours)], "", 1.2, r.nodes[i]+" (healthy)")
	}
	if r.Baseline != nil {
		item(baselineColour, ` stroke-dasharray="6 4"`, 2, "plain yamux: calls in flight (same port fate)")
	}
	p.f("</g>\n")
	p.f("</svg>\n")
	if p.err != nil {
		return p.err
	}
	return bw.Flush()
}

// timelineAt is the time of a mark in seconds, or 0.
func (r *Result) timelineAt(id string) float64 {
	m, _ := r.markAt(id)
	return m.at.Seconds()
}

// svgPen writes SVG, remembering the first error.
type svgPen struct {
	w   io.Writer
	err error
}

func (p *svgPen) f(format string, args ...any) {
	if p.err == nil {
		_, p.err = fmt.Fprintf(p.w, format, args...)
	}
}

func (p *svgPen) text(x, y float64, anchor, attrs, s string) {
	p.f(`<text x="%.1f" y="%.1f" text-anchor="%s" %s>%s</text>`+"\n", x, y, anchor, attrs, esc(s))
}

// axes draws one panel's frame, grid lines and tick labels.
func (p *svgPen) axes(xs []float64, x func(float64) float64, ys []float64, y func(float64) float64, top, bot int, xLabels bool) {
	p.f(`<g stroke="#e4e4e4" stroke-width="1">`)
	for _, v := range ys {
		p.f(`<line x1="%d" y1="%.1f" x2="%d" y2="%.1f"/>`, plotL, y(v), plotR, y(v))
	}
	for _, t := range xs {
		p.f(`<line x1="%.1f" y1="%d" x2="%.1f" y2="%d"/>`, x(t), top, x(t), bot)
	}
	p.f("</g>\n")
	p.f(`<g stroke="#333" stroke-width="1"><line x1="%d" y1="%d" x2="%d" y2="%d"/><line x1="%d" y1="%d" x2="%d" y2="%d"/></g>`+"\n",
		plotL, top, plotL, bot, plotL, bot, plotR, bot)
	for _, v := range ys {
		p.text(plotL-6, y(v)+4, "end", `fill="#333"`, fmtTick(v))
	}
	if xLabels {
		for _, t := range xs {
			p.text(x(t), float64(bot)+16, "middle", `fill="#333"`, fmtTick(t))
		}
	}
}

// niceTicks returns about n+1 round tick values from lo to at least hi.
func niceTicks(lo, hi float64, n int) []float64 {
	if hi <= lo {
		hi = lo + 1
	}
	raw := (hi - lo) / float64(n)
	mag := math.Pow(10, math.Floor(math.Log10(raw)))
	step := mag
	for _, m := range []float64{1, 2, 2.5, 5, 10} {
		if m*mag >= raw {
			step = m * mag
			break
		}
	}
	var ticks []float64
	for v := lo; ; v += step {
		ticks = append(ticks, round3(v))
		if v >= hi-step*1e-9 {
			break
		}
	}
	return ticks
}

func fmtTick(v float64) string {
	if v == math.Trunc(v) {
		return fmt.Sprintf("%.0f", v)
	}
	return strings.TrimRight(fmt.Sprintf("%.2f", v), "0")
}

func esc(s string) string {
	var b bytes.Buffer
	xml.EscapeText(&b, []byte(s))
	return b.String()
}
