package perf

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"runtime"
	"runtime/metrics"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/common/expfmt"
)

// Observation limits.
const (
	// userHZ is the clock tick of /proc/<pid>/stat CPU times: USER_HZ is
	// 100 on every mainstream Linux architecture (it is an ABI constant,
	// not the kernel's HZ).
	userHZ = 100
	// scrapeTimeout bounds one /metrics request.
	scrapeTimeout = 5 * time.Second
	// maxScrapeBytes bounds a /metrics response read.
	maxScrapeBytes = 16 << 20
)

// ErrProcFormat is returned when /proc/<pid>/stat or status cannot be parsed.
var ErrProcFormat = errors.New("perf: unexpected /proc format")

// ProcSample is one reading of a process from /proc (Linux).
type ProcSample struct {
	RSSBytes int64
	// CPU is user + system time since the process started.
	CPU     time.Duration
	Threads int
}

// ReadProc reads the RSS, CPU time and thread count of pid (0: this
// process).
func ReadProc(pid int) (ProcSample, error) {
	dir := "/proc/self"
	if pid > 0 {
		dir = "/proc/" + strconv.Itoa(pid)
	}
	var s ProcSample
	stat, err := os.ReadFile(dir + "/stat")
	if err != nil {
		return s, err
	}
	// The command name (field 2) is in parentheses and may hold spaces:
	// fields are counted after the last ')'.
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return s, ErrProcFormat
	}
	f := strings.Fields(string(stat[i+1:]))
	// f[0] is field 3 (state); utime and stime are fields 14 and 15,
	// num_threads field 20.
	if len(f) < 18 {
		return s, ErrProcFormat
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	th, err3 := strconv.Atoi(f[17])
	if err := errors.Join(err1, err2, err3); err != nil {
		return s, fmt.Errorf("%w: %v", ErrProcFormat, err)
	}
	s.CPU = time.Duration(ut+st) * time.Second / userHZ
	s.Threads = th
	status, err := os.ReadFile(dir + "/status")
	if err != nil {
		return s, err
	}
	for line := range strings.Lines(string(status)) {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				return s, fmt.Errorf("%w: VmRSS: %v", ErrProcFormat, err)
			}
			s.RSSBytes = kb << 10
		}
	}
	return s, nil
}

// GoroutinesByLabel counts this process's goroutines by the value of one
// pprof label (runtime/pprof.Do); goroutines without it count under "".
// Labels are inherited by goroutines a labelled goroutine starts, so
// starting a component under a label attributes all its goroutines.
func GoroutinesByLabel(key string) (map[string]int, error) {
	var buf bytes.Buffer
	if err := pprof.Lookup("goroutine").WriteTo(&buf, 1); err != nil {
		return nil, err
	}
	out := map[string]int{}
	count, value := 0, ""
	flush := func() {
		if count > 0 {
			out[value] += count
		}
		count, value = 0, ""
	}
	sc := bufio.NewScanner(&buf)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			flush()
		case strings.HasPrefix(line, "# labels: "):
			var labels map[string]string
			if err := json.Unmarshal([]byte(strings.TrimPrefix(line, "# labels: ")), &labels); err == nil {
				value = labels[key]
			}
		case line[0] >= '0' && line[0] <= '9':
			flush()
			n, _, _ := strings.Cut(line, " ")
			count, _ = strconv.Atoi(n)
		}
	}
	flush()
	return out, sc.Err()
}

// ParsePrometheus reads Prometheus text exposition with expfmt. Each
// series is keyed by its full name with labels in the order written
// ("a_total{reason=\"x\"}"), and each metric name also by itself with the
// sum of its series. Lines are parsed one at a time, as untyped samples, so
// a malformed line is skipped rather than failing the whole scrape, and
// the # TYPE of a histogram does not fold its _bucket series away.
func ParsePrometheus(r io.Reader) (map[string]float64, error) {
	out := map[string]float64{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	var p expfmt.TextParser
	var key strings.Builder
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		fams, err := p.TextToMetricFamilies(strings.NewReader(line + "\n"))
		if err != nil {
			continue
		}
		for name, mf := range fams {
			for _, m := range mf.GetMetric() {
				v := m.GetUntyped().GetValue()
				if len(m.GetLabel()) == 0 {
					out[name] = v
					continue
				}
				key.Reset()
				key.WriteString(name)
				for i, l := range m.GetLabel() {
					if i == 0 {
						key.WriteByte('{')
					} else {
						key.WriteByte(',')
					}
					key.WriteString(l.GetName())
					key.WriteString(`="`)
					key.WriteString(labelEscaper.Replace(l.GetValue()))
					key.WriteByte('"')
				}
				key.WriteByte('}')
				out[key.String()] = v
				out[name] += v
			}
		}
	}
	return out, sc.Err()
}

// labelEscaper escapes a label value as the text format writes it.
var labelEscaper = strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`)

// ScrapePrometheus fetches and parses a /metrics URL.
func ScrapePrometheus(ctx context.Context, url string) (map[string]float64, error) {
	ctx, cancel := context.WithTimeout(ctx, scrapeTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("perf: scrape %s: %s", url, resp.Status)
	}
	return ParsePrometheus(io.LimitReader(resp.Body, maxScrapeBytes))
}

// Observer samples a relay once a second for Target.Observe: the process
// (RSS, CPU, goroutines, heap) and the relay's Prometheus metrics. It
// works for a relay in this process (PID 0, WriteMetrics, GoroutineLabel)
// and for one in another process (PID, MetricsURL).
type Observer struct {
	// PID of the relay process; 0 means this process.
	PID int
	// MetricsURL is scraped when set; otherwise WriteMetrics, when set,
	// writes the metrics in Prometheus text.
	MetricsURL   string
	WriteMetrics func(io.Writer)
	// GoroutineLabel, for PID 0, splits the goroutine count by this pprof
	// label ("goroutines_<value>").
	GoroutineLabel string

	mu      sync.Mutex
	lastCPU time.Duration
	lastAt  time.Time
}

// Observation keys. Counters are cumulative since the relay started.
const (
	ObsRSSMB       = "rss_mb"
	ObsHeapMB      = "heap_mb"
	ObsCPUSeconds  = "cpu_seconds"
	ObsCPUPercent  = "cpu_pct" // since the previous sample; 100 = one core
	ObsGoroutines  = "goroutines"
	ObsThreads     = "threads"
	ObsDrops       = "drops"
	ObsEventsIn    = "events_in"
	ObsEventsOut   = "events_out"
	ObsConsumers   = "consumers"
	ObsHeadSeq     = "head_seq"
	ObsKicked      = "consumers_closed"
	obsGoroutineBy = "goroutines_"
)

// Observe takes one sample. Figures that cannot be read are left out.
func (o *Observer) Observe() map[string]float64 {
	v := map[string]float64{}
	now := time.Now()
	if ps, err := ReadProc(o.PID); err == nil {
		v[ObsRSSMB] = float64(ps.RSSBytes) / (1 << 20)
		v[ObsCPUSeconds] = ps.CPU.Seconds()
		v[ObsThreads] = float64(ps.Threads)
		o.mu.Lock()
		if !o.lastAt.IsZero() {
			v[ObsCPUPercent] = 100 * (ps.CPU - o.lastCPU).Seconds() / now.Sub(o.lastAt).Seconds()
		}
		o.lastCPU, o.lastAt = ps.CPU, now
		o.mu.Unlock()
	}
	var m map[string]float64
	switch {
	case o.MetricsURL != "":
		m, _ = ScrapePrometheus(context.Background(), o.MetricsURL)
	case o.WriteMetrics != nil:
		var buf bytes.Buffer
		o.WriteMetrics(&buf)
		m, _ = ParsePrometheus(&buf)
	}
	if o.PID == 0 {
		v[ObsGoroutines] = float64(runtime.NumGoroutine())
		s := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
		metrics.Read(s)
		if s[0].Value.Kind() == metrics.KindUint64 {
			v[ObsHeapMB] = float64(s[0].Value.Uint64()) / (1 << 20)
		}
		if o.GoroutineLabel != "" {
			if by, err := GoroutinesByLabel(o.GoroutineLabel); err == nil {
				for k, n := range by {
					if k == "" {
						k = "unlabelled"
					}
					v[obsGoroutineBy+k] = float64(n)
				}
			}
		}
	} else if m != nil {
		copyMetric(v, ObsGoroutines, m, "go_goroutines")
		if x, ok := m["go_memstats_heap_alloc_bytes"]; ok {
			v[ObsHeapMB] = x / (1 << 20)
		}
	}
	if m != nil {
		copyMetric(v, ObsDrops, m, "relay_events_dropped_total")
		copyMetric(v, ObsEventsIn, m, "relay_events_in_total")
		copyMetric(v, ObsEventsOut, m, "relay_events_out_total")
		copyMetric(v, ObsConsumers, m, "relay_consumers")
		copyMetric(v, ObsHeadSeq, m, "relay_head_seq")
		copyMetric(v, ObsKicked, m, "relay_consumers_closed_total")
		for k, x := range m {
			if strings.HasPrefix(k, "relay_events_dropped_total{") && x > 0 {
				v["drop "+strings.TrimSuffix(strings.TrimPrefix(k, "relay_events_dropped_total{"), "}")] = x
			}
		}
	}
	return v
}

func copyMetric(dst map[string]float64, key string, m map[string]float64, name string) {
	if x, ok := m[name]; ok {
		dst[key] = x
	}
}
