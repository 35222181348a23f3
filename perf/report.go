package perf

import (
	"encoding/json"
	"fmt"
	"html"
	"io"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// WriteJSON writes results as indented JSON.
func WriteJSON(w io.Writer, results []*Result) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(results)
}

// WriteMarkdown writes one table row per result, then each result's
// details (latency tail, faults, replay, observed target figures, notes).
func WriteMarkdown(w io.Writer, results []*Result) error {
	var b strings.Builder
	b.WriteString("| scenario | target | profile | hosts x accounts | consumers (slow) | emitted | delivered | ratio | throughput/s | p50 | p90 | p99 | max | gaps / dups | too slow |\n")
	b.WriteString("|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, r := range results {
		l := r.Fleet.Latency
		fmt.Fprintf(&b, "| %s | %s | %s | %d x %d | %d (%d) | %d | %d | %.4f | %.0f | %s | %s | %s | %s | %d / %d | %d |\n",
			mdCell(r.Scenario), mdCell(r.Target), mdCell(r.Profile),
			r.Hosts, r.Accounts/max(r.Hosts, 1), r.Consumers, r.Fleet.Slow,
			r.Emit.Emitted, r.Delivered, r.DeliveredRatio, r.Throughput,
			FormatLatency(l.P50), FormatLatency(l.P90), FormatLatency(l.P99), FormatLatency(l.Max),
			r.Fleet.Gaps, r.Fleet.Duplicates, r.Fleet.ConsumerTooSlow)
	}
	for _, r := range results {
		writeDetails(&b, r)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// writeDetails writes a result's figures beyond the table row: latency
// tail, faults, replay, extra figures, observed target samples, notes.
func writeDetails(b *strings.Builder, r *Result) {
	fmt.Fprintf(b, "\n**%s / %s**\n\n", mdCell(r.Scenario), mdCell(r.Target))
	if l := r.Fleet.Latency; l.Count > 0 {
		fmt.Fprintf(b, "- latency (fast consumers, %d samples): p50 %s, p90 %s, p99 %s, p99.9 %s, max %s\n",
			l.Count, FormatLatency(l.P50), FormatLatency(l.P90), FormatLatency(l.P99), FormatLatency(l.P999), FormatLatency(l.Max))
	}
	if r.Emit.Emitted > 0 {
		fmt.Fprintf(b, "- pregenerated %d events (%.1f MB) in %s; warmup %s; drain %s\n",
			r.PregenEvents, float64(r.PregenBytes)/1e6, r.PregenDuration.Round(time.Millisecond),
			r.WarmupDuration.Round(time.Millisecond), r.DrainTime.Round(time.Millisecond))
	}
	if len(r.Emit.Faults) > 0 || r.Emit.Disconnects > 0 {
		kinds := make([]string, 0, len(r.Emit.Faults))
		for k := range r.Emit.Faults {
			kinds = append(kinds, string(k))
		}
		sort.Strings(kinds)
		var parts []string
		for _, k := range kinds {
			parts = append(parts, fmt.Sprintf("%s %d", k, r.Emit.Faults[FaultKind(k)]))
		}
		fmt.Fprintf(b, "- faults emitted: %s; disconnects %d; fault events delivered: %d\n",
			strings.Join(parts, ", "), r.Emit.Disconnects, r.Fleet.FaultsDelivered)
	}
	if rp := r.Replay; rp != nil {
		fmt.Fprintf(b, "- replay from cursor %d to %d: %d frames, %.1f MB in %s: %.0f frames/s, %.1f MB/s (gaps %d, duplicates %d, complete %v)\n",
			rp.Cursor, rp.Head, rp.Frames, float64(rp.Bytes)/1e6, rp.Duration.Round(time.Millisecond),
			rp.FramesPerSec, rp.MBPerSec, rp.Gaps, rp.Duplicates, rp.Complete)
	}
	for _, k := range sortedKeys(r.Extra) {
		fmt.Fprintf(b, "- %s: %s\n", mdCell(k), fmtValue(r.Extra[k]))
	}
	if len(r.Observed) > 0 {
		last := r.Observed[len(r.Observed)-1].Values
		maxes, sums, counts := map[string]float64{}, map[string]float64{}, map[string]int{}
		for _, p := range r.Observed {
			for k, v := range p.Values {
				maxes[k] = max(maxes[k], v)
				sums[k] += v
				counts[k]++
			}
		}
		b.WriteString("\n| observed (once a second) | last | mean | max |\n|---|---:|---:|---:|\n")
		for _, k := range sortedKeys(maxes) {
			fmt.Fprintf(b, "| %s | %s | %s | %s |\n", mdCell(k), fmtValue(last[k]), fmtValue(sums[k]/float64(counts[k])), fmtValue(maxes[k]))
		}
		b.WriteString("\n")
	}
	for _, n := range r.Notes {
		fmt.Fprintf(b, "- %s\n", mdCell(n))
	}
	for _, e := range r.Fleet.Errors {
		fmt.Fprintf(b, "- consumer error: %s\n", mdCell(e))
	}
}

func sortedKeys(m map[string]float64) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// fmtValue prints a figure: integers without decimals, others with two.
func fmtValue(v float64) string {
	if v == math.Trunc(v) && math.Abs(v) < 1e15 {
		return fmt.Sprintf("%.0f", v)
	}
	return fmt.Sprintf("%.2f", v)
}

// mdCell keeps a value from breaking a table row.
func mdCell(s string) string {
	return strings.NewReplacer("|", "\\|", "\n", " ").Replace(s)
}

// FormatLatency prints a latency with a precision that suits its size
// ("-" for none): the report's and cmd/perf's progress lines' format.
func FormatLatency(d time.Duration) string {
	switch {
	case d == 0:
		return "-"
	case d < time.Millisecond:
		return fmt.Sprintf("%.0fµs", float64(d)/float64(time.Microsecond))
	case d < 10*time.Second:
		return fmt.Sprintf("%.1fms", float64(d)/float64(time.Millisecond))
	}
	return fmt.Sprintf("%.1fs", d.Seconds())
}

// WriteReport writes results.json, report.md and two SVG charts per
// result (throughput and latency over time) into dir, creating it.
func WriteReport(dir string, results []*Result) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := writeFile(filepath.Join(dir, "results.json"), func(w io.Writer) error { return WriteJSON(w, results) }); err != nil {
		return err
	}
	var md strings.Builder
	md.WriteString("# Perf report\n\n")
	if err := WriteMarkdown(&md, results); err != nil {
		return err
	}
	for _, r := range results {
		base := slug(r.Scenario + "-" + r.Target)
		tp, lat := base+"-throughput.svg", base+"-latency.svg"
		if err := writeFile(filepath.Join(dir, tp), func(w io.Writer) error { return WriteThroughputSVG(w, r) }); err != nil {
			return err
		}
		if err := writeFile(filepath.Join(dir, lat), func(w io.Writer) error { return WriteLatencySVG(w, r) }); err != nil {
			return err
		}
		fmt.Fprintf(&md, "\n## %s / %s\n\n![throughput](%s)\n\n![latency](%s)\n", mdCell(r.Scenario), mdCell(r.Target), tp, lat)
	}
	return writeFile(filepath.Join(dir, "report.md"), func(w io.Writer) error {
		_, err := io.WriteString(w, md.String())
		return err
	})
}

func writeFile(path string, fn func(io.Writer) error) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := fn(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// slug makes a file-name-safe lowercase name.
func slug(s string) string {
	var b strings.Builder
	dash := false
	for _, r := range strings.ToLower(s) {
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') {
			b.WriteRune(r)
			dash = false
		} else if !dash && b.Len() > 0 {
			b.WriteByte('-')
			dash = true
		}
	}
	return strings.TrimSuffix(b.String(), "-")
}

// Series is one polyline of a chart.
type Series struct {
	Name   string
	Color  string
	Points [][2]float64 // (x, y)
}

// WriteThroughputSVG charts events emitted and received per second.
func WriteThroughputSVG(w io.Writer, r *Result) error {
	emitted := Series{Name: "emitted/s", Color: "#1f77b4"}
	for i, c := range r.Emit.PerSec {
		emitted.Points = append(emitted.Points, [2]float64{float64(i), float64(c)})
	}
	received := Series{Name: "received/s (per fast consumer)", Color: "#d62728"}
	for _, s := range r.Timeline {
		received.Points = append(received.Points, [2]float64{float64(s.Second), s.Received})
	}
	return WriteLineChart(w, fmt.Sprintf("%s / %s: throughput", r.Scenario, r.Target), "seconds", "events/s", []Series{emitted, received})
}

// WriteLatencySVG charts emit-to-receive latency p50 and p99 per second.
func WriteLatencySVG(w io.Writer, r *Result) error {
	p50 := Series{Name: "p50", Color: "#2ca02c"}
	p99 := Series{Name: "p99", Color: "#ff7f0e"}
	for _, s := range r.Timeline {
		if s.Latency.Count == 0 {
			continue
		}
		x := float64(s.Second)
		p50.Points = append(p50.Points, [2]float64{x, float64(s.Latency.P50) / float64(time.Millisecond)})
		p99.Points = append(p99.Points, [2]float64{x, float64(s.Latency.P99) / float64(time.Millisecond)})
	}
	return WriteLineChart(w, fmt.Sprintf("%s / %s: latency", r.Scenario, r.Target), "seconds", "ms", []Series{p50, p99})
}

// Chart geometry, in SVG user units.
const (
	chartW      = 760
	chartH      = 380
	chartLeft   = 70
	chartRight  = 20
	chartTop    = 40
	chartBottom = 50
	chartTicks  = 5
)

// WriteLineChart draws series as polylines over linear axes starting at 0,
// with tick labels, axis titles and a legend.
func WriteLineChart(w io.Writer, title, xLabel, yLabel string, series []Series) error {
	maxX, maxY := 1.0, 1.0
	for _, s := range series {
		for _, p := range s.Points {
			maxX = math.Max(maxX, p[0])
			maxY = math.Max(maxY, p[1])
		}
	}
	maxX, maxY = niceCeil(maxX), niceCeil(maxY)
	plotW := float64(chartW - chartLeft - chartRight)
	plotH := float64(chartH - chartTop - chartBottom)
	px := func(x float64) float64 { return chartLeft + x/maxX*plotW }
	py := func(y float64) float64 { return chartTop + plotH - y/maxY*plotH }

	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n", chartW, chartH, chartW, chartH)
	fmt.Fprintf(&b, `<rect width="%d" height="%d" fill="white"/>`+"\n", chartW, chartH)
	fmt.Fprintf(&b, `<text x="%d" y="22" font-size="15" font-weight="bold">%s</text>`+"\n", chartLeft, html.EscapeString(title))
	for i := 0; i <= chartTicks; i++ {
		yv := maxY * float64(i) / chartTicks
		y := py(yv)
		fmt.Fprintf(&b, `<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#ddd"/>`+"\n", chartLeft, y, chartW-chartRight, y)
		fmt.Fprintf(&b, `<text x="%d" y="%.1f" text-anchor="end">%s</text>`+"\n", chartLeft-6, y+4, tickLabel(yv))
		xv := maxX * float64(i) / chartTicks
		x := px(xv)
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#999"/>`+"\n", x, chartH-chartBottom, x, chartH-chartBottom+5)
		fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="middle">%s</text>`+"\n", x, chartH-chartBottom+18, tickLabel(xv))
	}
	fmt.Fprintf(&b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#333"/>`+"\n", chartLeft, chartH-chartBottom, chartW-chartRight, chartH-chartBottom)
	fmt.Fprintf(&b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#333"/>`+"\n", chartLeft, chartTop, chartLeft, chartH-chartBottom)
	fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="middle">%s</text>`+"\n", chartLeft+plotW/2, chartH-10, html.EscapeString(xLabel))
	fmt.Fprintf(&b, `<text x="16" y="%.1f" text-anchor="middle" transform="rotate(-90 16 %.1f)">%s</text>`+"\n", chartTop+plotH/2, chartTop+plotH/2, html.EscapeString(yLabel))
	for i, s := range series {
		if len(s.Points) > 0 {
			b.WriteString(`<polyline fill="none" stroke-width="1.5" stroke="` + html.EscapeString(s.Color) + `" points="`)
			for k, p := range s.Points {
				if k > 0 {
					b.WriteByte(' ')
				}
				fmt.Fprintf(&b, "%.1f,%.1f", px(p[0]), py(p[1]))
			}
			b.WriteString("\"/>\n")
		}
		lx := chartLeft + 10 + i*200
		fmt.Fprintf(&b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="%s" stroke-width="3"/>`+"\n", lx, chartTop+8, lx+20, chartTop+8, html.EscapeString(s.Color))
		fmt.Fprintf(&b, `<text x="%d" y="%d">%s</text>`+"\n", lx+26, chartTop+12, html.EscapeString(s.Name))
	}
	b.WriteString("</svg>\n")
	_, err := io.WriteString(w, b.String())
	return err
}

// niceCeil rounds v up to 1, 2, 2.5 or 5 times a power of ten, so ticks
// (v/5 apart) are round numbers.
func niceCeil(v float64) float64 {
	if v <= 0 {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 2.5, 5, 10} {
		if v <= m*p {
			return m * p
		}
	}
	return 10 * p
}

func tickLabel(v float64) string {
	if v == math.Trunc(v) {
		return fmt.Sprintf("%.0f", v)
	}
	return fmt.Sprintf("%.1f", v)
}
