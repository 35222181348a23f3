package main

import (
	"io"
	"strings"
	"testing"
	"time"

	"github.com/relay/relay/perf"
)

func soakSamples(n int, rss func(sec int) float64) []perf.ObservedPoint {
	var out []perf.ObservedPoint
	for s := range n {
		out = append(out, perf.ObservedPoint{Second: s, Values: map[string]float64{
			perf.ObsRSSMB: rss(s), perf.ObsHeapMB: 20 + float64(s%7), perf.ObsGoroutines: 48,
		}})
	}
	return out
}

func TestSoakReportVerdict(t *testing.T) {
	dir := t.TempDir()
	flat := &perf.Result{Emit: perf.EmitStats{Emitted: 100}, Delivered: 100,
		Observed: soakSamples(600, func(s int) float64 { return 60 + float64(s%11) })}
	var out strings.Builder
	if p := soakReport(flat, dir, &out); len(p) != 0 {
		t.Fatalf("flat series judged %v\n%s", p, out.String())
	}
	if !strings.Contains(out.String(), "| 9 |") || !strings.Contains(out.String(), "RSS MB: mean") {
		t.Fatalf("no per-minute table or verdict:\n%s", out.String())
	}
	grows := &perf.Result{Emit: perf.EmitStats{Emitted: 100}, Delivered: 99,
		Observed: soakSamples(600, func(s int) float64 { return 60 + float64(s)/10 })}
	got := strings.Join(soakReport(grows, "", io.Discard), "\n")
	for _, want := range []string{"RSS MB grew", "99 of 100"} {
		if !strings.Contains(got, want) {
			t.Errorf("growing series: %q lacks %q", got, want)
		}
	}
	short := &perf.Result{Observed: soakSamples(70, func(int) float64 { return 60 })}
	if p := soakReport(short, "", io.Discard); len(p) == 0 || !strings.Contains(p[0], "too short") {
		t.Errorf("a 70 s soak was judged: %v", p)
	}
}

func TestSoakFlagDefaults(t *testing.T) {
	o, err := parseFlags([]string{"-soak", "-consumers", "20"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if o.rate != 2000 || o.duration != 10*time.Minute || o.consumers != 20 || o.slow != 0 || o.replay || o.name != "soak" {
		t.Fatalf("soak defaults: %+v", o)
	}
	if _, err := parseFlags([]string{"-soak", "-smoke"}, io.Discard); err == nil {
		t.Fatal("-soak with -smoke accepted")
	}
}
