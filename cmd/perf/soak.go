package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/relay/relay/perf"
)

// soakDefaults replace the demo defaults under -soak for every flag not
// given explicitly: issue 13's soak, 2,000 ev/s to 200 consumers for 10
// minutes. Its 1.2 million events are pregenerated (~3 GB in the harness).
var soakDefaults = map[string]string{
	"name":       "soak",
	"hosts":      "100",
	"accounts":   "20",
	"rate":       "2000",
	"duration":   "10m",
	"consumers":  "200",
	"slow":       "0",
	"replay":     "false",
	"cpuprofile": "false",
}

// Soak verdict: after soakSkip seconds (the ring and caches filling), the
// mean of the last third of the samples may exceed the mean of the first
// third by at most soakGrowth, plus an absolute slack per series (GC
// timing moves heap and RSS by a few MB from one sample to the next).
const (
	soakSkip   = 60
	soakGrowth = 0.15
)

// soakSeries are the sampled figures a soak must hold flat, with their
// absolute slack. For an in-process target the relay's goroutines are
// the "side=relay" pprof label's.
var soakSeries = []struct {
	key   string
	label string
	slack float64
}{
	{perf.ObsRSSMB, "RSS MB", 8},
	{perf.ObsHeapMB, "heap MB", 8},
	{perf.ObsGoroutines, "goroutines", 5},
}

func soakValue(p perf.ObservedPoint, key string) (float64, bool) {
	if key == perf.ObsGoroutines {
		if v, ok := p.Values["goroutines_relay"]; ok {
			return v, true
		}
	}
	v, ok := p.Values[key]
	return v, ok
}

// soakReport writes a per-minute table of the sampled series and the
// flatness verdict to w (and soak.md in the report directory), and returns
// what did not hold.
func soakReport(res *perf.Result, dir string, w io.Writer) []string {
	var b strings.Builder
	var problems []string
	fmt.Fprintf(&b, "## soak: %s, %d consumers, %d samples\n\n", res.Profile, res.Consumers, len(res.Observed))
	fmt.Fprintf(&b, "| minute | RSS MB | heap MB | goroutines | CPU %% |\n|---:|---:|---:|---:|---:|\n")
	for _, p := range res.Observed {
		if p.Second%60 != 0 {
			continue
		}
		rss, _ := soakValue(p, perf.ObsRSSMB)
		heap, _ := soakValue(p, perf.ObsHeapMB)
		g, _ := soakValue(p, perf.ObsGoroutines)
		cpu := p.Values[perf.ObsCPUPercent]
		fmt.Fprintf(&b, "| %d | %.1f | %.1f | %.0f | %.0f |\n", p.Second/60, rss, heap, g, cpu)
	}
	b.WriteString("\n")
	pts := res.Observed
	if len(pts) > soakSkip {
		pts = pts[soakSkip:]
	}
	third := len(pts) / 3
	if third < 10 {
		problems = append(problems, fmt.Sprintf("only %d samples after the first %d s: too short to judge", len(pts), soakSkip))
	} else {
		for _, s := range soakSeries {
			first, fn := 0.0, 0
			last, ln := 0.0, 0
			peak := 0.0
			for i, p := range pts {
				v, ok := soakValue(p, s.key)
				if !ok {
					continue
				}
				peak = max(peak, v)
				switch {
				case i < third:
					first += v
					fn++
				case i >= len(pts)-third:
					last += v
					ln++
				}
			}
			if fn == 0 || ln == 0 {
				problems = append(problems, s.label+": not sampled")
				continue
			}
			first, last = first/float64(fn), last/float64(ln)
			verdict := "flat"
			if last > first*(1+soakGrowth)+s.slack {
				verdict = "GREW"
				problems = append(problems, fmt.Sprintf("%s grew: mean %.1f in the first third, %.1f in the last", s.label, first, last))
			}
			fmt.Fprintf(&b, "- %s: mean %.1f (first third) -> %.1f (last third), max %.1f: %s\n", s.label, first, last, peak, verdict)
		}
	}
	f := res.Fleet
	if f.Gaps != 0 || f.Duplicates != 0 {
		problems = append(problems, fmt.Sprintf("%d gaps, %d duplicates", f.Gaps, f.Duplicates))
	}
	if res.Delivered != res.Emit.Emitted {
		problems = append(problems, fmt.Sprintf("%d of %d events reached every fast consumer", res.Delivered, res.Emit.Emitted))
	}
	fmt.Fprintf(&b, "- delivered %d of %d to every consumer, %d gaps, %d duplicates\n", res.Delivered, res.Emit.Emitted, f.Gaps, f.Duplicates)
	_, _ = io.WriteString(w, b.String())
	if dir != "" {
		if err := os.WriteFile(filepath.Join(dir, "soak.md"), []byte(b.String()), 0o644); err != nil {
			problems = append(problems, "soak.md: "+err.Error())
		}
	}
	return problems
}
