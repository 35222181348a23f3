package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	_ "net/http/pprof" // served only with -pprof, on the address given
	"os"
	"path/filepath"
	"runtime/pprof"
	"sync"
	"time"

	"github.com/relay/relay/perf"
	"github.com/relay/relay/perf/inproc"
	"github.com/relay/relay/relay"
)

// Run limits.
const (
	// closeTimeout bounds the in-process relay's graceful shutdown.
	closeTimeout = 30 * time.Second
	// replayTimeout bounds the replay measurement after a run.
	replayTimeout = 5 * time.Minute
	// emitSlack lets the emitter run a little past -duration, so that the
	// events pregenerated for -duration all go out when ticks run late.
	emitSlack = 2 * time.Second
	// cpuProfileFile is the CPU profile of the timed phase (in-process).
	cpuProfileFile = "cpu.pprof"
)

// execute runs the scenario of o, writes the report into o.out and prints
// the summary table.
func execute(ctx context.Context, o *options, stdout, stderr io.Writer) (*perf.Result, error) {
	level := slog.LevelWarn
	if o.verbose {
		level = slog.LevelInfo
	}
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	// indigo's commit verification logs through the default logger.
	slog.SetDefault(logger)
	if o.out == "" {
		o.out = "perf-report-" + time.Now().Format("20060102-150405")
	}
	if err := os.MkdirAll(o.out, 0o755); err != nil {
		return nil, err
	}
	if o.pprofAddr != "" {
		ln, err := net.Listen("tcp", o.pprofAddr)
		if err != nil {
			return nil, fmt.Errorf("pprof listener: %w", err)
		}
		defer ln.Close()
		go func() { _ = http.Serve(ln, http.DefaultServeMux) }()
		fmt.Fprintf(stderr, "pprof on http://%s/debug/pprof/\n", ln.Addr())
	}

	var (
		res *perf.Result
		err error
	)
	// Everything the harness starts carries side=harness; the in-process
	// relay relabels its own goroutines side=relay.
	pprof.Do(ctx, pprof.Labels(inproc.LabelKey, inproc.LabelHarness), func(ctx context.Context) {
		res, err = runScenario(ctx, o, logger, stderr)
	})
	if err != nil {
		return nil, err
	}
	if err := perf.WriteReport(o.out, []*perf.Result{res}); err != nil {
		return nil, fmt.Errorf("write report: %w", err)
	}
	if err := perf.WriteMarkdown(stdout, []*perf.Result{res}); err != nil {
		return nil, err
	}
	fmt.Fprintf(stdout, "\nreport: %s\n", o.out)
	return res, nil
}

// runScenario starts the network and the target and runs the scenario.
func runScenario(ctx context.Context, o *options, logger *slog.Logger, stderr io.Writer) (*perf.Result, error) {
	if o.replayOnly > 0 {
		return replayOnly(ctx, o, stderr)
	}
	fmt.Fprintf(stderr, "starting %d hosts x %d accounts (%.0f%% P-256)\n", o.hosts, o.accounts, 100*o.p256)
	n, err := perf.StartNetwork(perf.NetworkOptions{
		Hosts:           o.hosts,
		AccountsPerHost: o.accounts,
		P256Fraction:    o.p256,
		PLCAddr:         o.plcAddr,
	})
	if err != nil {
		return nil, err
	}
	defer n.Close()

	var (
		target perf.Target
		ir     *inproc.Relay
	)
	if o.external() {
		target = perf.Target{
			Name:            "external",
			RequestCrawlURL: o.targetCrawl,
			FirehoseURL:     o.targetFirehose,
			Observe:         (&perf.Observer{PID: o.targetPID, MetricsURL: o.targetMetrics}).Observe,
		}
	} else {
		ir, err = inproc.Start(ctx, inproc.Options{
			PLCURL: n.PLC.URL(),
			Logger: logger.With("side", "relay"), // the relay's components add "component"
			Configure: func(c *relay.Config) {
				if o.workers > 0 {
					c.FrameWorkers = o.workers
				}
				if o.loops > 0 {
					c.EventLoops = o.loops
				}
				c.FsyncInterval = o.fsyncInterval
			},
		})
		if err != nil {
			return nil, fmt.Errorf("start in-process relay: %w", err)
		}
		defer func() {
			cctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
			defer cancel()
			if err := ir.Close(cctx); err != nil {
				logger.Warn("in-process relay shutdown", "err", err)
			}
		}()
		target = ir.Target()
	}
	fmt.Fprintf(stderr, "target: %s (%s)\n", target.Name, target.FirehoseURL)

	prog := newProgress(stderr, o.quiet)
	cpu := &cpuSplit{path: filepath.Join(o.out, cpuProfileFile), enabled: ir != nil && o.cpuProfile}
	live := func(l perf.Live) {
		cpu.start(logger)
		prog.live(l)
	}

	var res *perf.Result
	if o.idle {
		res, err = perf.RunIdleOn(ctx, target, perf.IdleScenario{
			Name:           o.name,
			Consumers:      o.consumers,
			Hold:           o.duration,
			ConnectTimeout: o.connectMax,
			Live:           live,
		}, n)
	} else {
		profile, _ := o.loadProfile()
		events := o.events
		if events <= 0 {
			events = eventsFor(profile, o.duration)
		}
		fmt.Fprintf(stderr, "crawl, warm up, pregenerate %d events, then %s for %s to %d consumers\n", events, profile.Name, o.duration, o.consumers)
		res, err = perf.RunOn(ctx, target, perf.Scenario{
			Name:               o.name,
			Events:             events,
			Ops:                o.ops,
			Profile:            profile,
			Duration:           o.duration + emitSlack,
			Consumers:          o.consumers,
			SlowFraction:       o.slow,
			SlowDelay:          o.slowDelay,
			ConsumerReadBuffer: o.readBuffer,
			ConnectTimeout:     o.connectMax,
			WarmupTimeout:      o.warmupWait,
			Drain:              o.drain,
			Faults:             o.faults,
			Live:               live,
		}, n)
	}
	prog.done()
	split, cpuErr := cpu.stop()
	if err != nil {
		return nil, err
	}
	if cpuErr != nil {
		res.Notes = append(res.Notes, "cpu profile: "+cpuErr.Error())
	}
	for k, v := range split {
		if res.Extra == nil {
			res.Extra = map[string]float64{}
		}
		res.Extra[k] = v
	}
	if o.external() {
		res.Notes = append(res.Notes, "external target: RSS, CPU and goroutines are the target process's (when -target-pid and -target-metrics are given)")
	} else {
		res.Notes = append(res.Notes, "in-process target: the relay, the fake PDS fleet and the consumer fleet share this process and the machine's cores; rss_mb, heap_mb and cpu are the whole process, goroutines_relay and the cpu split are the relay's own (pprof labels)")
	}

	if o.replay && !o.idle && res.Fleet.MaxLastSeq > 0 {
		fmt.Fprintf(stderr, "replaying from cursor 0 to seq %d\n", res.Fleet.MaxLastSeq)
		rp, err := perf.MeasureReplay(ctx, perf.ReplayOptions{
			URL: target.FirehoseURL, TLS: target.TLS, Head: res.Fleet.MaxLastSeq, Timeout: replayTimeout,
		})
		if err != nil {
			return nil, err
		}
		res.Replay = rp
	}
	return res, nil
}

// cpuSplit profiles the CPU of the timed phase of an in-process run and
// splits it between the relay and the harness by pprof label.
type cpuSplit struct {
	path    string
	enabled bool

	once    sync.Once
	f       *os.File
	started time.Time
}

// start begins profiling (once; later calls do nothing).
func (c *cpuSplit) start(logger *slog.Logger) {
	if !c.enabled {
		return
	}
	c.once.Do(func() {
		f, err := os.Create(c.path)
		if err != nil {
			logger.Warn("cpu profile", "err", err)
			return
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			logger.Warn("cpu profile", "err", err)
			f.Close()
			return
		}
		c.f, c.started = f, time.Now()
	})
}

// stop ends profiling and returns the split: CPU seconds of the relay,
// the harness and the rest (runtime background work such as GC marking),
// and each as a percentage of one core over the profiled wall time.
func (c *cpuSplit) stop() (map[string]float64, error) {
	if c.f == nil {
		return nil, nil
	}
	pprof.StopCPUProfile()
	wall := time.Since(c.started).Seconds()
	if err := c.f.Close(); err != nil {
		return nil, err
	}
	f, err := os.Open(c.path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	by, err := perf.CPUByLabel(f, inproc.LabelKey)
	if err != nil {
		return nil, err
	}
	if wall <= 0 {
		return nil, errors.New("empty profile")
	}
	out := map[string]float64{"cpu profiled wall seconds": wall}
	for side, name := range map[string]string{inproc.LabelRelay: "relay", inproc.LabelHarness: "harness", "": "other (runtime, GC workers)"} {
		s := by[side].Seconds()
		out["cpu seconds "+name] = s
		out["cpu % of one core "+name] = 100 * s / wall
	}
	return out, nil
}

// replayOnly times one consumer reading an external relay's log from
// cursor 0 to -replay-only, observing the relay meanwhile.
func replayOnly(ctx context.Context, o *options, stderr io.Writer) (*perf.Result, error) {
	res := &perf.Result{Scenario: o.name, Target: "external", Profile: "replay", Started: time.Now(), Consumers: 1}
	obs := &perf.Observer{PID: o.targetPID, MetricsURL: o.targetMetrics}
	obs.Observe() // CPU baseline
	fmt.Fprintf(stderr, "replaying %s from cursor 0 to seq %d\n", o.targetFirehose, o.replayOnly)
	rp, err := perf.MeasureReplay(ctx, perf.ReplayOptions{URL: o.targetFirehose, Head: o.replayOnly, Timeout: replayTimeout})
	if err != nil {
		return nil, err
	}
	res.Replay = rp
	res.Observed = []perf.ObservedPoint{{Values: obs.Observe()}}
	return res, nil
}
