package loadtest

import (
	"fmt"
	"html"
	"io"
	"math"
	"strings"
)

// The HTML report is one self-contained XHTML-compatible page: inline CSS
// and inline SVG, no script, no external resource.

var palette = []string{"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"}

type series struct {
	name  string
	color string
	pts   [][2]float64
}

type tick struct {
	v     float64
	label string
}

const (
	plotW, plotH                   = 720, 300
	padL, padR, padT, padB float64 = 70, 150, 30, 45
)

// writeSVG draws a line plot. xTicks may be nil (automatic).
func writeSVG(b *strings.Builder, title, xLabel, yLabel string, ss []series, xTicks []tick) {
	xmin, xmax, ymax := math.Inf(1), math.Inf(-1), 0.0
	for _, s := range ss {
		for _, p := range s.pts {
			xmin, xmax, ymax = math.Min(xmin, p[0]), math.Max(xmax, p[0]), math.Max(ymax, p[1])
		}
	}
	if math.IsInf(xmin, 0) {
		xmin, xmax = 0, 1
	}
	if xmax <= xmin {
		xmax = xmin + 1
	}
	yTicks := niceTicks(ymax)
	ytop := yTicks[len(yTicks)-1].v
	iw, ih := plotW-padL-padR, plotH-padT-padB
	sx := func(x float64) float64 { return padL + (x-xmin)/(xmax-xmin)*iw }
	sy := func(y float64) float64 { return padT + ih - y/ytop*ih }
	fmt.Fprintf(b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" role="img">`+"\n", plotW, plotH, plotW, plotH)
	fmt.Fprintf(b, `<title>%s</title>`+"\n", html.EscapeString(title))
	fmt.Fprintf(b, `<text x="%g" y="18" class="t">%s</text>`+"\n", padL, html.EscapeString(title))
	fmt.Fprintf(b, `<rect x="%g" y="%g" width="%g" height="%g" fill="none" stroke="#999"/>`+"\n", padL, padT, iw, ih)
	for _, t := range yTicks {
		y := sy(t.v)
		fmt.Fprintf(b, `<line x1="%g" y1="%.1f" x2="%g" y2="%.1f" stroke="#eee"/><text x="%g" y="%.1f" class="yl">%s</text>`+"\n",
			padL, y, padL+iw, y, padL-6, y+4, t.label)
	}
	if xTicks == nil {
		xTicks = niceTicksRange(xmin, xmax)
	}
	for _, t := range xTicks {
		if t.v < xmin || t.v > xmax {
			continue
		}
		x := sx(t.v)
		fmt.Fprintf(b, `<line x1="%.1f" y1="%g" x2="%.1f" y2="%g" stroke="#eee"/><text x="%.1f" y="%g" class="xl">%s</text>`+"\n",
			x, padT, x, padT+ih, x, padT+ih+16, html.EscapeString(t.label))
	}
	fmt.Fprintf(b, `<text x="%g" y="%g" class="xl">%s</text>`+"\n", padL+iw/2, float64(plotH)-6, html.EscapeString(xLabel))
	fmt.Fprintf(b, `<text x="14" y="%g" class="xl" transform="rotate(-90 14 %g)">%s</text>`+"\n", padT+ih/2, padT+ih/2, html.EscapeString(yLabel))
	for i, s := range ss {
		if len(s.pts) == 0 {
			continue
		}
		var pts strings.Builder
		for _, p := range s.pts {
			fmt.Fprintf(&pts, "%.1f,%.1f ", sx(p[0]), sy(p[1]))
		}
		fmt.Fprintf(b, `<polyline fill="none" stroke="%s" stroke-width="1.8" points="%s"/>`+"\n", s.color, strings.TrimSpace(pts.String()))
		ly := padT + 14 + float64(i)*16
		fmt.Fprintf(b, `<line x1="%g" y1="%g" x2="%g" y2="%g" stroke="%s" stroke-width="3"/><text x="%g" y="%g" class="lg">%s</text>`+"\n",
			padL+iw+10, ly-4, padL+iw+28, ly-4, s.color, padL+iw+32, ly, html.EscapeString(s.name))
	}
	b.WriteString("</svg>\n")
}

// niceTicks returns 0..top in about five round steps covering max.
func niceTicks(max float64) []tick {
	if max <= 0 || math.IsNaN(max) {
		max = 1
	}
	step := math.Pow(10, math.Floor(math.Log10(max/5)))
	for _, m := range []float64{1, 2, 2.5, 5, 10} {
		if max/(step*m) <= 6 {
			step *= m
			break
		}
	}
	var out []tick
	for v := 0.0; ; v += step {
		out = append(out, tick{v, fmtNum(v)})
		if v >= max || len(out) > 12 {
			break
		}
	}
	return out
}

func niceTicksRange(lo, hi float64) []tick {
	ts := niceTicks(hi - lo)
	out := make([]tick, 0, len(ts))
	for _, t := range ts {
		out = append(out, tick{lo + t.v, fmtNum(lo + t.v)})
	}
	return out
}

func fmtNum(v float64) string {
	switch {
	case v == 0:
		return "0"
	case math.Abs(v) >= 1e6:
		return fmt.Sprintf("%gM", math.Round(v/1e4)/100)
	case math.Abs(v) >= 1e4:
		return fmt.Sprintf("%gk", math.Round(v/10)/100)
	}
	return fmt.Sprintf("%.4g", v)
}

// nines maps a percentile to the x of a "latency by percentile" plot:
// 0 at p0, 1 at p90, 2 at p99, 3 at p99.9 ...
func nines(p float64) float64 {
	if p >= 100 {
		return 6
	}
	return math.Min(6, math.Log10(100/(100-p)))
}

var ninesTicks = []tick{{nines(0), "0%"}, {nines(50), "50%"}, {nines(90), "90%"}, {nines(99), "99%"}, {nines(99.9), "99.9%"}, {nines(99.99), "99.99%"}, {nines(99.999), "99.999%"}, {nines(100), "max"}}

func writeHTML(w io.Writer, rep *Report) error {
	var b strings.Builder
	b.WriteString(`<!DOCTYPE html>
<html xmlns="http://www.w3.org/1999/xhtml" lang="en"><head><meta charset="utf-8"/><title>presenced loadtest</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:0.5em 0}td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}
th{background:#f4f4f4}.t{font-weight:bold;font-size:14px}.yl{text-anchor:end;font-size:11px}
.xl{text-anchor:middle;font-size:11px}.lg{font-size:11px}svg{display:block;margin:0.5em 0}
.bad{color:#b00}.good{color:#070}pre{background:#f8f8f8;padding:0.5em}
</style></head><body>
<h1>presenced loadtest</h1>
`)
	fmt.Fprintf(&b, "<p>%s: %d users, %d rooms (%s), tokens %v, batch %d, %d sockets, %d conns, ack-timeout %gs, target p99 %g ms, max loss %g%%.</p>\n",
		rep.Started.Format("2006-01-02 15:04:05 MST"), rep.Users, rep.Rooms, html.EscapeString(rep.RoomDist), rep.Tokens,
		rep.Batch, rep.Sockets, rep.Conns, rep.AckTimeoutS, rep.TargetP99Ms, rep.MaxLossPct)
	fmt.Fprintf(&b, "<pre>presenced loadtest %s</pre>\n", html.EscapeString(strings.Join(rep.Args, " ")))
	if len(rep.Ratios) > 0 {
		b.WriteString("<h2>Ratios</h2>\n<table><tr><th>target</th><th>baseline</th><th>rate ratio</th><th>basis</th><th>p99 ratio</th></tr>\n")
		for _, q := range rep.Ratios {
			fmt.Fprintf(&b, "<tr><td>%s</td><td>%s</td><td>%.3f</td><td>%s</td><td>%.2f</td></tr>\n",
				html.EscapeString(q.Target), html.EscapeString(q.Baseline), q.RateRatio, html.EscapeString(q.Basis), q.P99Ratio)
		}
		b.WriteString("</table>\n")
	}
	for i := range rep.Runs {
		writeRunHTML(&b, &rep.Runs[i])
	}
	b.WriteString("</body></html>\n")
	_, err := io.WriteString(w, b.String())
	return err
}

func writeRunHTML(b *strings.Builder, r *Run) {
	fmt.Fprintf(b, "<h2>%s over %s</h2>\n", html.EscapeString(r.Target), html.EscapeString(r.Transport))
	if r.Error != "" {
		fmt.Fprintf(b, "<p class=\"bad\">error: %s</p>\n", html.EscapeString(r.Error))
	}
	if r.Note != "" {
		fmt.Fprintf(b, "<p>note: %s</p>\n", html.EscapeString(r.Note))
	}
	if r.Capacity != "" {
		fmt.Fprintf(b, "<p class=\"good\"><b>highest sustainable rate: %.0f heartbeats/s</b>; %s</p>\n", r.BestRate, html.EscapeString(r.Capacity))
	} else if r.Sweep {
		b.WriteString("<p class=\"bad\">no sustainable step</p>\n")
	}
	b.WriteString("<table><tr><th>step</th><th>offered/s</th><th>sent/s</th><th>answered/s</th><th>loss %</th><th>errors</th><th>p50 ms</th><th>p90 ms</th><th>p99 ms</th><th>p99.9 ms</th><th>max ms</th><th>CPU %</th><th>ok</th></tr>\n")
	for j, s := range r.Steps {
		fmt.Fprintf(b, "<tr><td>%d</td><td>%.0f</td><td>%.0f</td><td>%.0f</td><td>%.3f</td><td>%d %s</td><td>%.3f</td><td>%.3f</td><td>%.3f</td><td>%.3f</td><td>%.3f</td><td>%s</td><td>%s</td></tr>\n",
			j+1, s.OfferedRate, s.SentPerS, s.AnsweredPerS, s.LossPct, s.ErrorCount, html.EscapeString(errorsText(s.Errors)),
			s.Latency.P50, s.Latency.P90, s.Latency.P99, s.Latency.P999, s.Latency.Max, cpuText(s.CPUPct), html.EscapeString(okHTML(s)))
	}
	b.WriteString("</table>\n")
	for j, s := range r.Steps {
		if f := s.Flood; f != nil {
			fmt.Fprintf(b, "<p>step %d flood (%s, %s, from %s, not in the figures above): sent %.0f/s, replies %.0f/s (%.2f%%) %s</p>\n",
				j+1, html.EscapeString(f.Kind), floodRateText(f.OfferedRate), html.EscapeString(f.Source), f.SentPerS, f.RepliesPerS, f.ReplyPct, html.EscapeString(errorsText(f.ReplyStatuses)))
		}
	}
	if r.Online != nil {
		if r.Online.Error != "" {
			fmt.Fprintf(b, "<p class=\"bad\">online check failed: %s</p>\n", html.EscapeString(r.Online.Error))
		} else {
			fmt.Fprintf(b, "<p>users offline at end: %d of %d reached%s</p>\n", r.Online.Offline, r.Online.Users, html.EscapeString(notReachedText(r.Online)))
		}
	}
	if len(r.Steps) > 0 {
		fmt.Fprintf(b, "<p>CPU: %s. Latency is per request, from its intended send time.</p>\n", html.EscapeString(r.Steps[0].CPUScope))
	}
	var pct []series
	for j, s := range r.Steps {
		ser := series{name: fmt.Sprintf("%.0f/s", s.OfferedRate), color: palette[j%len(palette)]}
		for _, c := range s.Latency.Curve {
			ser.pts = append(ser.pts, [2]float64{nines(c.Pct), c.Ms})
		}
		pct = append(pct, ser)
	}
	writeSVG(b, "latency by percentile", "percentile", "latency (ms)", pct, ninesTicks)
	sent := series{name: "sent/s", color: palette[0]}
	ans := series{name: "answered/s", color: palette[2]}
	p99 := series{name: "p99 (ms)", color: palette[1]}
	p50 := series{name: "p50 (ms)", color: palette[3]}
	off := 0.0
	for _, s := range r.Steps {
		for _, p := range s.Timeline {
			t := off + p.T
			sent.pts = append(sent.pts, [2]float64{t, p.SentPerS})
			ans.pts = append(ans.pts, [2]float64{t, p.AnswerPerS})
			p99.pts = append(p99.pts, [2]float64{t, p.P99Ms})
			p50.pts = append(p50.pts, [2]float64{t, p.P50Ms})
		}
		if n := len(s.Timeline); n > 0 {
			off += s.Timeline[n-1].T
		}
	}
	writeSVG(b, "rate over time", "time (s)", "heartbeats/s", []series{sent, ans}, nil)
	writeSVG(b, "latency over time (per second)", "time (s)", "latency (ms)", []series{p99, p50}, nil)
}

// okHTML is a step's ok cell: "yes", or "NO: " and which limit it broke.
func okHTML(s StepResult) string {
	if s.Sustainable || s.NotOK == "" {
		return okText(s.Sustainable)
	}
	return okText(false) + ": " + s.NotOK
}
