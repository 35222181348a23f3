// Package inproc runs this project's relay inside the harness's process as
// a perf.Target, for cmd/perf and the root benchmarks. It is a package of
// its own because the relay's tests import perf: perf cannot import relay.
//
// The relay is started under the pprof label side=relay, so every
// goroutine it starts (event loops, workers, HTTP servers and their
// connection goroutines) carries the label; callers start the load
// generator under side=harness. perf.GoroutinesByLabel and perf.CPUByLabel
// then split the process's goroutines and CPU between the two.
package inproc

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"runtime/pprof"

	"github.com/relay/relay/perf"
	"github.com/relay/relay/relay"
	"github.com/relay/relay/relay/httpapi"
)

// pprof labels that split the process between the relay and the harness.
const (
	LabelKey     = "side"
	LabelRelay   = "relay"
	LabelHarness = "harness"
)

// Options configure an in-process relay.
type Options struct {
	// PLCURL is the did:plc directory the relay resolves with (the fake
	// PLC of a perf.Network).
	PLCURL string
	// DataDir holds the event log and store; empty means a new temporary
	// directory, removed by Close.
	DataDir string
	// Logger for the relay; nil discards its logs.
	Logger *slog.Logger
	// Configure, when set, adjusts the configuration after the defaults
	// below are applied.
	Configure func(*relay.Config)
}

// Relay is a relay running in this process.
type Relay struct {
	r       *relay.Relay
	dataDir string
	temp    bool
}

// Config is the configuration Start uses before Options.Configure: the
// relay's defaults, on ephemeral 127.0.0.1 ports, with insecure (loopback)
// hosts allowed, no seed relay, and no daily limit on new hosts (a perf
// network can have thousands).
func Config(plcURL, dataDir string) relay.Config {
	cfg := relay.DefaultConfig()
	cfg.TrustedDomains = "*" // the harness is a private network streaming at benchmark rates
	cfg.Listen = "127.0.0.1:0"
	cfg.MetricsListen = "127.0.0.1:0"
	cfg.DataDir = dataDir
	cfg.Upstream = ""
	cfg.PLCHost = plcURL
	cfg.AllowInsecureHosts = true
	cfg.NewHostsPerDay = 0
	return cfg
}

// Start opens and starts a relay under the side=relay pprof label, added
// to ctx's labels. ctx must carry the caller's labels (pprof.Do restores
// exactly those afterwards); it does not bound the relay's lifetime.
func Start(ctx context.Context, opts Options) (*Relay, error) {
	ir := &Relay{dataDir: opts.DataDir}
	if ir.dataDir == "" {
		dir, err := os.MkdirTemp("", "perf-relay-")
		if err != nil {
			return nil, err
		}
		ir.dataDir, ir.temp = dir, true
	}
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	cfg := Config(opts.PLCURL, ir.dataDir)
	if opts.Configure != nil {
		opts.Configure(&cfg)
	}
	var err error
	pprof.Do(ctx, pprof.Labels(LabelKey, LabelRelay), func(context.Context) {
		ir.r, err = relay.New(cfg, logger)
		if err != nil {
			return
		}
		if err = ir.r.Start(httpapi.Handlers(ir.r)); err != nil {
			_ = ir.r.Close(context.Background())
		}
	})
	if err != nil {
		if ir.temp {
			_ = os.RemoveAll(ir.dataDir)
		}
		return nil, err
	}
	return ir, nil
}

// Relay is the running relay.
func (ir *Relay) Relay() *relay.Relay { return ir.r }

// DataDir is where the relay keeps its event log and store.
func (ir *Relay) DataDir() string { return ir.dataDir }

// FirehoseURL is the relay's subscribeRepos URL.
func (ir *Relay) FirehoseURL() string {
	return "ws://" + ir.r.Addr() + "/xrpc/com.atproto.sync.subscribeRepos"
}

// Target describes the relay to the harness. Its Observe samples this
// process (RSS, CPU, heap), the goroutines by side, and the relay's
// metrics (drops, events, consumers).
func (ir *Relay) Target() perf.Target {
	obs := &perf.Observer{WriteMetrics: ir.r.Metrics().WritePrometheus, GoroutineLabel: LabelKey}
	return perf.Target{
		Name:            "relay (in-process)",
		RequestCrawlURL: "http://" + ir.r.Addr() + "/xrpc/com.atproto.sync.requestCrawl",
		FirehoseURL:     ir.FirehoseURL(),
		Observe:         obs.Observe,
	}
}

// Close shuts the relay down and removes a temporary data directory.
func (ir *Relay) Close(ctx context.Context) error {
	err := ir.r.Close(ctx)
	if ir.temp {
		err = errors.Join(err, os.RemoveAll(ir.dataDir))
	}
	return err
}
