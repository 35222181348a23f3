package perf

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"
)

// Harness defaults.
const (
	// DefaultConnectTimeout is how long the harness waits for the target to
	// subscribe to every host after requestCrawl.
	DefaultConnectTimeout = 60 * time.Second
	// DefaultWarmupTimeout is how long it waits for the warmup commits
	// (one per account) to come out of the target.
	DefaultWarmupTimeout = 60 * time.Second
	// DefaultDrain is how long it waits after the last emit for consumers
	// to receive everything.
	DefaultDrain = 30 * time.Second
	// crawlRequestTimeout bounds one requestCrawl call.
	crawlRequestTimeout = 30 * time.Second
	// drainPoll is how often the drain loop looks at the fleet.
	drainPoll = 10 * time.Millisecond
	// maxCrawlResponse bounds the requestCrawl response body read.
	maxCrawlResponse = 64 << 10
)

var (
	// ErrCrawl is returned when the target refuses a requestCrawl.
	ErrCrawl = errors.New("perf: target refused requestCrawl")
	// ErrNotSubscribed is returned when the target did not connect to
	// every host in time.
	ErrNotSubscribed = errors.New("perf: target did not subscribe to every host")
)

// Target is a relay reached through its URLs, so the harness can measure
// any relay: this project's, indigo's, or another.
type Target struct {
	// Name labels the results ("relay", "indigo", ...).
	Name string
	// RequestCrawlURL is the full com.atproto.sync.requestCrawl URL.
	RequestCrawlURL string
	// FirehoseURL is the subscribeRepos URL (ws:// or wss://), no cursor.
	FirehoseURL string
	// TLS for a wss:// firehose.
	TLS *tls.Config
	// Prepare, when set, runs after the hosts are crawled and subscribed,
	// for target-specific setup (e.g. raising per-host rate limits through
	// an admin API).
	Prepare func(ctx context.Context, hosts []*PDS) error
	// Observe, when set, is sampled once a second during the timed phase
	// (e.g. the target's goroutines, heap, RSS); samples go into the result.
	Observe func() map[string]float64
}

// Scenario is one measured run.
type Scenario struct {
	Name    string
	Network NetworkOptions
	// Events pregenerated for the timed phase, emitted at Profile's rate;
	// the phase ends when all are emitted or after Duration (0: no limit).
	Events   int
	Ops      int // ops per commit; 0 = realistic mix
	Profile  Profile
	Duration time.Duration
	// Consumers on the target's firehose; SlowFraction of them slow.
	Consumers    int
	SlowFraction float64
	SlowDelay    time.Duration
	// ConsumerReadBuffer is each consumer's socket read buffer (default
	// DefaultClientReadBuffer). A larger one reads a batch of frames in
	// one syscall, which makes a big fleet much cheaper to run.
	ConsumerReadBuffer int
	// Timeouts; zero values take the defaults above.
	ConnectTimeout time.Duration
	WarmupTimeout  time.Duration
	Drain          time.Duration
	// SkipWarmup skips the one-commit-per-account warmup (the target then
	// resolves identities during the timed phase).
	SkipWarmup bool
	// Faults mixes fault events into the timed phase.
	Faults FaultOptions
	// Live, when set, is called once a second during the timed phase and
	// the drain with a snapshot (for a progress line).
	Live func(Live)
}

// Live is a once-a-second snapshot of a running scenario.
type Live struct {
	// Elapsed since the timed phase started.
	Elapsed time.Duration
	// Emitted valid events so far, and the pregenerated total.
	Emitted, Total int64
	// Fleet is the consumer fleet so far (cumulative).
	Fleet FleetStats
	// Second is the last complete second of the probe consumers' series.
	Second SecondStat
	// Observed is the target's latest Observe sample (nil without one).
	Observed map[string]float64
}

// Result is what one scenario measured.
type Result struct {
	Scenario  string    `json:"scenario"`
	Target    string    `json:"target"`
	Profile   string    `json:"profile"`
	Started   time.Time `json:"started"`
	Hosts     int       `json:"hosts"`
	Accounts  int       `json:"accounts"`
	Consumers int       `json:"consumers"`

	PregenEvents   int           `json:"pregen_events"`
	PregenBytes    int64         `json:"pregen_bytes"`
	PregenDuration time.Duration `json:"pregen_ns"`
	WarmupDuration time.Duration `json:"warmup_ns"`

	Emit  EmitStats  `json:"emit"`
	Fleet FleetStats `json:"fleet"`
	// Delivered is the fewest timed-phase commits any fast consumer got;
	// DeliveredRatio is Delivered / Emit.Emitted.
	Delivered      int64   `json:"delivered"`
	DeliveredRatio float64 `json:"delivered_ratio"`
	// Throughput is Delivered over the time from the first emit to the
	// last delivery progress seen (events per second).
	Throughput float64         `json:"throughput"`
	DrainTime  time.Duration   `json:"drain_ns"`
	Timeline   []SecondStat    `json:"timeline"`
	Observed   []ObservedPoint `json:"observed,omitempty"`
	// Replay, when measured, is one consumer reading the target's log
	// from cursor 0 after the run.
	Replay *ReplayStats `json:"replay,omitempty"`
	// Extra holds figures a caller adds (e.g. the CPU split of an
	// in-process run); the Markdown report lists them.
	Extra map[string]float64 `json:"extra,omitempty"`
	Notes []string           `json:"notes,omitempty"`
}

// ObservedPoint is one Target.Observe sample.
type ObservedPoint struct {
	Second int                `json:"second"`
	Values map[string]float64 `json:"values"`
}

// Run starts the scenario's network, has the target crawl it, warms up,
// pregenerates, starts the consumer fleet, emits at the profile's rate,
// waits for delivery and returns the measurements. The network is closed
// when Run returns.
func Run(ctx context.Context, target Target, sc Scenario) (*Result, error) {
	n, err := StartNetwork(sc.Network)
	if err != nil {
		return nil, err
	}
	defer n.Close()
	return RunOn(ctx, target, sc, n)
}

// RunOn is Run on an existing network (sc.Network is ignored), for callers
// that need the PLC URL before the target starts.
func RunOn(ctx context.Context, target Target, sc Scenario, n *Network) (*Result, error) {
	res := &Result{
		Scenario:  sc.Name,
		Target:    target.Name,
		Profile:   sc.Profile.Name,
		Started:   time.Now(),
		Hosts:     len(n.Hosts),
		Accounts:  len(n.Accounts),
		Consumers: sc.Consumers,
	}
	connectTimeout := orDefault(sc.ConnectTimeout, DefaultConnectTimeout)
	warmupTimeout := orDefault(sc.WarmupTimeout, DefaultWarmupTimeout)
	drain := orDefault(sc.Drain, DefaultDrain)

	if err := CrawlAll(ctx, target.RequestCrawlURL, n.Hosts); err != nil {
		return nil, err
	}
	if err := WaitSubscribed(ctx, n.Hosts, connectTimeout); err != nil {
		return nil, err
	}
	if target.Prepare != nil {
		if err := target.Prepare(ctx, n.Hosts); err != nil {
			return nil, fmt.Errorf("perf: target prepare: %w", err)
		}
	}

	if !sc.SkipWarmup {
		start := time.Now()
		got, err := warmup(ctx, target, n, warmupTimeout)
		res.WarmupDuration = time.Since(start)
		if err != nil {
			return nil, err
		}
		if got < int64(len(n.Accounts)) {
			res.Notes = append(res.Notes, fmt.Sprintf("warmup: %d of %d commits came through in %s", got, len(n.Accounts), warmupTimeout))
		}
	}

	start := time.Now()
	pre, err := n.Pregenerate(PregenOptions{Events: sc.Events, Ops: sc.Ops, Faults: sc.Faults})
	if err != nil {
		return nil, err
	}
	res.PregenDuration = time.Since(start)
	res.PregenEvents = len(pre.Frames)
	res.PregenBytes = pre.Bytes

	fleet, err := StartFleet(ctx, FleetOptions{
		URL:            target.FirehoseURL,
		Consumers:      sc.Consumers,
		Cursor:         -1,
		SlowFraction:   sc.SlowFraction,
		SlowDelay:      sc.SlowDelay,
		Table:          pre.Table,
		TLS:            target.TLS,
		ReadBufferSize: sc.ConsumerReadBuffer,
	})
	if err != nil {
		return nil, err
	}
	defer fleet.Close()

	em := NewEmitter(pre, sc.Profile)
	emitStart := time.Now()
	obsCtx, stopObs := context.WithCancel(ctx)
	obsDone := make(chan []ObservedPoint, 1)
	go func() {
		obsDone <- observe(obsCtx, target.Observe, func(obs map[string]float64) {
			if sc.Live == nil {
				return
			}
			l := Live{Elapsed: time.Since(emitStart), Emitted: em.Emitted(), Total: int64(pre.Valid), Fleet: fleet.Stats(), Observed: obs}
			if tl := fleet.Timeline(); len(tl) >= 2 {
				l.Second = tl[len(tl)-2]
			}
			sc.Live(l)
		})
	}()

	res.Emit = em.Run(ctx, sc.Duration)
	emitted := res.Emit.Emitted

	// Drain: wait until every fast consumer has every emitted commit, or
	// until progress stops for the drain period.
	drainStart := time.Now()
	lastProgress, lastMin := time.Now(), int64(-1)
	for {
		st := fleet.Stats()
		if st.MinCommits >= emitted || ctx.Err() != nil {
			lastProgress = time.Now()
			break
		}
		if st.MinCommits != lastMin {
			lastMin, lastProgress = st.MinCommits, time.Now()
		}
		if time.Since(lastProgress) > drain {
			res.Notes = append(res.Notes, fmt.Sprintf("drain: no progress for %s", drain))
			break
		}
		if st.Ended == st.Consumers {
			res.Notes = append(res.Notes, "drain: every consumer stream ended")
			break
		}
		time.Sleep(drainPoll)
	}
	res.DrainTime = lastProgress.Sub(drainStart)
	stopObs()
	res.Observed = <-obsDone

	res.Fleet = fleet.Stats()
	res.Timeline = fleet.Timeline()
	res.Delivered = res.Fleet.MinCommits
	if emitted > 0 {
		res.DeliveredRatio = float64(res.Delivered) / float64(emitted)
	}
	if el := lastProgress.Sub(emitStart); el > 0 {
		res.Throughput = float64(res.Delivered) / el.Seconds()
	}
	if res.Fleet.Gaps > 0 || res.Fleet.Duplicates > 0 {
		res.Notes = append(res.Notes, fmt.Sprintf("ordering: %d gaps (%d missing), %d duplicates", res.Fleet.Gaps, res.Fleet.Missing, res.Fleet.Duplicates))
	}
	if res.Fleet.FaultsDelivered > 0 {
		res.Notes = append(res.Notes, fmt.Sprintf("validation: %d fault events reached consumers", res.Fleet.FaultsDelivered))
	}
	return res, nil
}

func orDefault(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}

// warmup emits one commit per account and waits until a probe consumer of
// the target has seen them; it returns how many it saw.
func warmup(ctx context.Context, target Target, n *Network, timeout time.Duration) (int64, error) {
	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	probe, err := StartFleet(wctx, FleetOptions{URL: target.FirehoseURL, Consumers: 1, Cursor: -1, TLS: target.TLS})
	if err != nil {
		return 0, err
	}
	defer probe.Close()
	for _, a := range n.Accounts {
		c, err := a.Commit(1)
		if err != nil {
			return 0, err
		}
		a.PDS().Emit(Event{Commit: c})
	}
	want := int64(len(n.Accounts))
	_ = probe.Wait(wctx, func(s FleetStats) bool { return s.Commits >= want || s.Ended > 0 })
	return probe.Stats().Commits, nil
}

// observe samples fn once a second until ctx ends, passing each sample
// (nil without fn) to each, when set.
func observe(ctx context.Context, fn func() map[string]float64, each func(map[string]float64)) []ObservedPoint {
	var out []ObservedPoint
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for sec := 0; ; sec++ {
		var v map[string]float64
		if fn != nil {
			v = fn()
			out = append(out, ObservedPoint{Second: sec, Values: v})
		}
		if each != nil {
			each(v)
		}
		select {
		case <-ctx.Done():
			return out
		case <-t.C:
		}
	}
}

// CrawlAll asks the target to crawl every host (POST {"hostname": host}).
func CrawlAll(ctx context.Context, requestCrawlURL string, hosts []*PDS) error {
	client := &http.Client{Timeout: crawlRequestTimeout}
	for _, h := range hosts {
		body, _ := json.Marshal(map[string]string{"hostname": h.Host()})
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, requestCrawlURL, bytes.NewReader(body))
		if err != nil {
			return err
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, maxCrawlResponse))
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("%w: %s: %d %s", ErrCrawl, h.Host(), resp.StatusCode, bytes.TrimSpace(msg))
		}
	}
	return nil
}

// WaitSubscribed waits until every host has at least one subscriber.
func WaitSubscribed(ctx context.Context, hosts []*PDS, timeout time.Duration) error {
	const poll = 20 * time.Millisecond
	deadline := time.Now().Add(timeout)
	for {
		missing := 0
		for _, h := range hosts {
			if h.Subscribers() == 0 {
				missing++
			}
		}
		if missing == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%w: %d of %d hosts not connected after %s", ErrNotSubscribed, missing, len(hosts), timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(poll):
		}
	}
}
