package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/relay/relay/perf"
)

// options is everything the command line chooses.
type options struct {
	name       string
	hosts      int
	accounts   int // per host
	rate       float64
	profile    string
	peak       float64
	period     time.Duration
	rampFrom   float64
	duration   time.Duration
	events     int
	ops        int
	consumers  int
	slow       float64
	slowDelay  time.Duration
	readBuffer int
	p256       float64
	faults     perf.FaultOptions
	idle       bool
	replay     bool
	replayOnly int64 // > 0: only replay an external relay's log up to this seq
	smoke      bool
	soak       bool
	drain      time.Duration
	warmupWait time.Duration
	connectMax time.Duration

	targetCrawl    string
	targetFirehose string
	targetMetrics  string
	targetPID      int
	plcAddr        string
	workers        int
	loops          int
	fsyncInterval  time.Duration

	out        string
	cpuProfile bool
	pprofAddr  string
	quiet      bool
	verbose    bool
}

// external reports whether the target is a relay reached by URL.
func (o *options) external() bool { return o.targetCrawl != "" }

// Demo defaults: about 60 s on a laptop with no network.
const (
	demoHosts     = 20
	demoAccounts  = 20
	demoRate      = 500
	demoDuration  = 60 * time.Second
	demoConsumers = 50
	demoSlow      = 0.1
	demoP256      = 0.2
	// defaultBurstFactor: a burst profile's peak is this times the rate
	// unless -peak is given.
	defaultBurstFactor = 4
	defaultBurstPeriod = 20 * time.Second
	// defaultConsumerBuffer lets a consumer read a batch of frames in one
	// syscall: the fleet then costs the machine much less CPU, which
	// matters when it shares the cores with the relay.
	defaultConsumerBuffer = 32 << 10
)

// smokeDefaults replace the demo defaults under -smoke for every flag not
// given explicitly: a few seconds of every feature, faults included.
var smokeDefaults = map[string]string{
	"name":              "smoke",
	"hosts":             "3",
	"accounts":          "4",
	"rate":              "400",
	"duration":          "2s",
	"consumers":         "8",
	"slow":              "0.25",
	"slow-delay":        "1ms",
	"p256":              "0.25",
	"fault-badsig":      "0.02",
	"fault-wronghost":   "0.02",
	"fault-stalerev":    "0.02",
	"fault-garbage":     "0.01",
	"fault-disconnects": "1.5",
	"replay":            "true",
	"drain":             "15s",
	"cpuprofile":        "false",
}

// ErrFlags is returned for contradictory or out-of-range flags.
var ErrFlags = errors.New("invalid flags")

func parseFlags(args []string, stderr io.Writer) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("perf", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.name, "name", "demo", "scenario name (report labels and file names)")
	fs.IntVar(&o.hosts, "hosts", demoHosts, "fake PDS hosts")
	fs.IntVar(&o.accounts, "accounts", demoAccounts, "accounts per host")
	fs.Float64Var(&o.rate, "rate", demoRate, "aggregate emit rate, events/s (the base rate of burst, the end rate of ramp)")
	fs.StringVar(&o.profile, "profile", "steady", "load profile: steady, burst or ramp")
	fs.Float64Var(&o.peak, "peak", 0, "burst peak rate (default 4 x -rate)")
	fs.DurationVar(&o.period, "period", defaultBurstPeriod, "burst period (the first quarter of each is at -peak)")
	fs.Float64Var(&o.rampFrom, "ramp-from", 0, "ramp start rate (it reaches -rate at -duration)")
	fs.DurationVar(&o.duration, "duration", demoDuration, "timed phase (with -idle: how long to hold idle)")
	fs.IntVar(&o.events, "events", 0, "events to pregenerate (default: what the profile emits in -duration)")
	fs.IntVar(&o.ops, "ops", 0, "ops per commit (0: realistic mix, mean about 1.5)")
	fs.IntVar(&o.consumers, "consumers", demoConsumers, "firehose consumers")
	fs.Float64Var(&o.slow, "slow", demoSlow, "fraction of slow consumers")
	fs.DurationVar(&o.slowDelay, "slow-delay", perf.DefaultSlowDelay, "pause of a slow consumer after each frame")
	fs.IntVar(&o.readBuffer, "consumer-buffer", defaultConsumerBuffer, "each consumer's socket read buffer, bytes")
	fs.Float64Var(&o.p256, "p256", demoP256, "fraction of accounts with P-256 keys (the rest K-256)")
	fs.Float64Var(&o.faults.BadSignature, "fault-badsig", 0, "fraction of events with a bad signature")
	fs.Float64Var(&o.faults.WrongHost, "fault-wronghost", 0, "fraction of events sent by the wrong host")
	fs.Float64Var(&o.faults.StaleRev, "fault-stalerev", 0, "fraction of events with a stale rev")
	fs.Float64Var(&o.faults.Garbage, "fault-garbage", 0, "fraction of events replaced by non-CBOR garbage")
	fs.Float64Var(&o.faults.Disconnects, "fault-disconnects", 0, "abrupt host disconnects per second")
	fs.BoolVar(&o.idle, "idle", false, "idle scenario: connect the hosts and consumers, emit nothing, observe for -duration")
	fs.BoolVar(&o.replay, "replay", true, "after the run, time one consumer replaying the log from cursor 0")
	fs.Int64Var(&o.replayOnly, "replay-only", 0, "only time one consumer replaying an external relay's log from cursor 0 up to this seq (needs -target-firehose)")
	fs.BoolVar(&o.smoke, "smoke", false, "a few seconds with faults; exit 1 unless zero gaps, zero duplicates, everything delivered, no fault delivered and the report written")
	fs.BoolVar(&o.soak, "soak", false, "10-minute soak: 2,000 ev/s to 200 consumers (flags given explicitly win); RSS, heap and goroutines sampled every second, exit 1 unless they stay flat and every event is delivered")
	fs.DurationVar(&o.drain, "drain", perf.DefaultDrain, "give up draining after this long without delivery progress")
	fs.DurationVar(&o.warmupWait, "warmup-timeout", perf.DefaultWarmupTimeout, "how long the one-commit-per-account warmup may take")
	fs.DurationVar(&o.connectMax, "connect-timeout", perf.DefaultConnectTimeout, "how long the target may take to subscribe to every host")

	fs.StringVar(&o.targetCrawl, "target-crawl", "", "external relay: requestCrawl URL (default: an in-process relay)")
	fs.StringVar(&o.targetFirehose, "target-firehose", "", "external relay: subscribeRepos URL (ws:// or wss://)")
	fs.StringVar(&o.targetMetrics, "target-metrics", "", "external relay: Prometheus /metrics URL to observe")
	fs.IntVar(&o.targetPID, "target-pid", 0, "external relay: process id, for its RSS and CPU from /proc")
	fs.StringVar(&o.plcAddr, "plc-addr", "", "fake PLC listen address (default 127.0.0.1:0; an external relay needs a fixed one)")
	fs.IntVar(&o.workers, "workers", 0, "in-process relay: validation workers (default GOMAXPROCS)")
	fs.IntVar(&o.loops, "loops", 0, "in-process relay: event loops (default GOMAXPROCS)")
	fs.DurationVar(&o.fsyncInterval, "fsync-interval", 0, "in-process relay: group commit pause (default 0: sync when the last sync ends)")

	fs.StringVar(&o.out, "out", "", "report directory (default perf-report-<timestamp>)")
	fs.BoolVar(&o.cpuProfile, "cpuprofile", true, "in-process: CPU profile of the timed phase (cpu.pprof) and the relay/harness CPU split")
	fs.StringVar(&o.pprofAddr, "pprof", "", "serve net/http/pprof on this address (e.g. 127.0.0.1:6060)")
	fs.BoolVar(&o.quiet, "quiet", false, "no live progress line")
	fs.BoolVar(&o.verbose, "v", false, "relay and harness logs at info level (default warn)")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("%w: unexpected arguments %q", ErrFlags, fs.Args())
	}
	var preset map[string]string
	switch {
	case o.smoke:
		preset = smokeDefaults
	case o.soak:
		preset = soakDefaults
	}
	if preset != nil {
		set := map[string]bool{}
		fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
		for name, v := range preset {
			if !set[name] {
				if err := fs.Set(name, v); err != nil {
					return nil, err
				}
			}
		}
	}
	return o, o.validate()
}

func (o *options) validate() error {
	switch {
	case o.hosts < 1 || o.accounts < 0:
		return fmt.Errorf("%w: need -hosts >= 1 and -accounts >= 0", ErrFlags)
	case !o.idle && o.accounts < 1:
		return fmt.Errorf("%w: a load run needs -accounts >= 1", ErrFlags)
	case o.rate <= 0 && !o.idle:
		return fmt.Errorf("%w: -rate must be positive", ErrFlags)
	case o.duration <= 0:
		return fmt.Errorf("%w: -duration must be positive", ErrFlags)
	case o.readBuffer < 0:
		return fmt.Errorf("%w: -consumer-buffer must not be negative", ErrFlags)
	case o.consumers < 0 || (o.consumers == 0 && !o.idle):
		return fmt.Errorf("%w: a load run needs -consumers >= 1", ErrFlags)
	case o.slow < 0 || o.slow > 1 || o.p256 < 0 || o.p256 > 1:
		return fmt.Errorf("%w: -slow and -p256 are fractions in [0, 1]", ErrFlags)
	case o.external() != (o.targetFirehose != "") && o.replayOnly == 0:
		return fmt.Errorf("%w: -target-crawl and -target-firehose go together", ErrFlags)
	case o.external() && (o.workers != 0 || o.loops != 0 || o.fsyncInterval != 0):
		return fmt.Errorf("%w: -workers, -loops and -fsync-interval configure the in-process relay only", ErrFlags)
	case o.replayOnly < 0 || (o.replayOnly > 0 && (o.targetFirehose == "" || o.smoke || o.idle)):
		return fmt.Errorf("%w: -replay-only needs -target-firehose, and excludes -smoke and -idle", ErrFlags)
	case o.smoke && o.idle:
		return fmt.Errorf("%w: -smoke and -idle exclude each other", ErrFlags)
	case o.soak && (o.smoke || o.idle || o.replayOnly > 0):
		return fmt.Errorf("%w: -soak excludes -smoke, -idle and -replay-only", ErrFlags)
	}
	if _, err := o.loadProfile(); err != nil {
		return err
	}
	return nil
}

// loadProfile builds the -profile.
func (o *options) loadProfile() (perf.Profile, error) {
	switch o.profile {
	case "steady":
		return perf.Steady(o.rate), nil
	case "burst":
		peak := o.peak
		if peak <= 0 {
			peak = defaultBurstFactor * o.rate
		}
		return perf.Burst(o.rate, peak, o.period), nil
	case "ramp":
		return perf.Ramp(o.rampFrom, o.rate, o.duration), nil
	}
	return perf.Profile{}, fmt.Errorf("%w: -profile %q (want steady, burst or ramp)", ErrFlags, o.profile)
}

// eventsFor is how many events p emits over d: the events to pregenerate.
func eventsFor(p perf.Profile, d time.Duration) int {
	const step = 10 * time.Millisecond
	sum := 0.0
	for t := time.Duration(0); t < d; t += step {
		sum += p.Rate(t) * step.Seconds()
	}
	return int(sum + 0.5)
}
