package perf

import (
	"bytes"
	"context"
	"io"
	"runtime/pprof"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestParsePrometheus(t *testing.T) {
	text := `# HELP x
relay_events_dropped_total{reason="bad_signature"} 3
relay_events_dropped_total{reason="stale_rev"} 4
relay_head_seq 1234
go_goroutines 17 1700000000000
garbage line
relay_lat_bucket{vmrange="1.0e-3...1.2e-3"} 5
`
	m, err := ParsePrometheus(strings.NewReader(text))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]float64{
		`relay_events_dropped_total{reason="bad_signature"}`: 3,
		"relay_events_dropped_total":                         7,
		"relay_head_seq":                                     1234,
		"go_goroutines":                                      17,
		"relay_lat_bucket":                                   5,
	}
	for k, v := range want {
		if m[k] != v {
			t.Errorf("%s = %v, want %v", k, m[k], v)
		}
	}
	if _, ok := m["garbage"]; ok {
		t.Error("parsed a line without a value")
	}
}

func TestReadProcSelf(t *testing.T) {
	s, err := ReadProc(0)
	if err != nil {
		t.Skipf("no /proc: %v", err)
	}
	if s.RSSBytes <= 0 || s.Threads < 1 || s.CPU < 0 {
		t.Fatalf("%+v", s)
	}
}

func TestObserverInProcess(t *testing.T) {
	o := &Observer{
		WriteMetrics: func(w io.Writer) {
			_, _ = io.WriteString(w, "relay_events_dropped_total{reason=\"bad_signature\"} 2\nrelay_events_dropped_total{reason=\"stale_rev\"} 0\nrelay_head_seq 9\n")
		},
		GoroutineLabel: "side",
	}
	v := o.Observe()
	if v[ObsDrops] != 2 || v[ObsHeadSeq] != 9 || v[`drop reason="bad_signature"`] != 2 {
		t.Fatalf("metrics not observed: %v", v)
	}
	if _, ok := v[`drop reason="stale_rev"`]; ok {
		t.Fatal("a zero drop reason is listed")
	}
	if v[ObsGoroutines] < 1 || v[ObsHeapMB] <= 0 || v["goroutines_unlabelled"] < 1 {
		t.Fatalf("process not observed: %v", v)
	}
	if _, err := ReadProc(0); err == nil {
		if v[ObsRSSMB] <= 0 {
			t.Fatalf("rss: %v", v)
		}
		if _, ok := v[ObsCPUPercent]; ok {
			t.Fatal("cpu_pct on the first sample")
		}
		if _, ok := o.Observe()[ObsCPUPercent]; !ok {
			t.Fatal("no cpu_pct on the second sample")
		}
	}
}

// TestGoroutinesAndCPUByLabel starts labelled goroutines that spin, and
// checks both splits attribute them to their label.
func TestGoroutinesAndCPUByLabel(t *testing.T) {
	var prof bytes.Buffer
	if err := pprof.StartCPUProfile(&prof); err != nil {
		t.Skipf("CPU profile unavailable: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	const spinners = 3
	pprof.Do(context.Background(), pprof.Labels("side", "spin"), func(context.Context) {
		for range spinners {
			wg.Add(1)
			go func() {
				defer wg.Done()
				x := 0
				for ctx.Err() == nil {
					for i := range 10000 {
						x += i
					}
				}
				_ = x
			}()
		}
	})
	by, err := GoroutinesByLabel("side")
	if err != nil {
		t.Fatal(err)
	}
	if by["spin"] != spinners || by[""] < 1 {
		t.Fatalf("goroutines by label %v", by)
	}
	time.Sleep(300 * time.Millisecond)
	cancel()
	wg.Wait()
	pprof.StopCPUProfile()
	cpu, err := CPUByLabel(&prof, "side")
	if err != nil {
		t.Fatal(err)
	}
	if cpu["spin"] <= 0 || cpu["spin"] < cpu[""] {
		t.Fatalf("cpu by label %v", cpu)
	}
	if _, err := CPUByLabel(strings.NewReader("not gzip"), "side"); err == nil {
		t.Fatal("parsed garbage")
	}
}
