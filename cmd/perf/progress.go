package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/relay/relay/perf"
)

// progress prints one line a second: emit and delivery rates, consumer lag,
// latency of the last second, the relay's RSS, CPU and goroutines, drops.
// On a terminal the line is rewritten in place; otherwise one line a second.
type progress struct {
	w     io.Writer
	quiet bool
	tty   bool

	mu            sync.Mutex
	printed       bool
	prevElapsed   time.Duration
	prevEmitted   int64
	prevDelivered int64
}

func newProgress(w io.Writer, quiet bool) *progress {
	p := &progress{w: w, quiet: quiet}
	if f, ok := w.(*os.File); ok {
		if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
			p.tty = true
		}
	}
	return p
}

func (p *progress) live(l perf.Live) {
	if p.quiet {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	dt := (l.Elapsed - p.prevElapsed).Seconds()
	var in, out float64
	if dt > 0 {
		in = float64(l.Emitted-p.prevEmitted) / dt
		out = float64(l.Fleet.MinCommits-p.prevDelivered) / dt
	}
	p.prevElapsed, p.prevEmitted, p.prevDelivered = l.Elapsed, l.Emitted, l.Fleet.MinCommits
	line := formatLive(l, in, out)
	if p.tty {
		fmt.Fprintf(p.w, "\r%s\x1b[K", line)
	} else {
		fmt.Fprintln(p.w, line)
	}
	p.printed = true
}

// done ends a rewritten line.
func (p *progress) done() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.tty && p.printed {
		fmt.Fprintln(p.w)
	}
}

func formatLive(l perf.Live, in, out float64) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%4.0fs", l.Elapsed.Seconds())
	if l.Total > 0 {
		fmt.Fprintf(&b, " in %5.0f/s out %5.0f/s lag %5d", in, out, max(0, l.Emitted-l.Fleet.MinCommits))
		lat := l.Second.Latency
		fmt.Fprintf(&b, " p50 %s p99 %s", perf.FormatLatency(lat.P50), perf.FormatLatency(lat.P99))
	}
	fmt.Fprintf(&b, " | consumers %d", l.Fleet.Consumers-l.Fleet.Ended)
	obs := l.Observed
	if v, ok := obs[perf.ObsRSSMB]; ok {
		fmt.Fprintf(&b, " rss %.0fMB", v)
	}
	if v, ok := obs[perf.ObsCPUPercent]; ok {
		fmt.Fprintf(&b, " cpu %.0f%%", v)
	}
	if v, ok := obs["goroutines_relay"]; ok {
		fmt.Fprintf(&b, " goroutines relay %.0f/%.0f", v, obs[perf.ObsGoroutines])
	} else if v, ok := obs[perf.ObsGoroutines]; ok {
		fmt.Fprintf(&b, " goroutines %.0f", v)
	}
	if v, ok := obs[perf.ObsDrops]; ok {
		fmt.Fprintf(&b, " | drops %.0f", v)
	}
	fmt.Fprintf(&b, " too-slow %d", l.Fleet.ConsumerTooSlow)
	if l.Fleet.Gaps > 0 || l.Fleet.Duplicates > 0 || l.Fleet.FaultsDelivered > 0 {
		fmt.Fprintf(&b, " GAPS %d DUPS %d FAULTS-DELIVERED %d", l.Fleet.Gaps, l.Fleet.Duplicates, l.Fleet.FaultsDelivered)
	}
	return b.String()
}
