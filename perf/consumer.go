package perf

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gobwas/ws"
)

// Fleet defaults and limits.
const (
	// DefaultSlowDelay is how long a slow consumer pauses after each frame.
	DefaultSlowDelay = 5 * time.Millisecond
	// DefaultDialConcurrency bounds simultaneous handshakes while a fleet
	// connects, so thousands of consumers do not stampede the target.
	DefaultDialConcurrency = 16
	// DefaultTimelineConsumers is how many fast consumers record the
	// per-second throughput and latency series.
	DefaultTimelineConsumers = 4
	// DefaultTimelineSeconds bounds the per-second series; later seconds
	// are folded into the last slot.
	DefaultTimelineSeconds = 3600
	// fleetDialTimeout bounds one consumer's dial and handshake.
	fleetDialTimeout = 30 * time.Second
	// fleetErrorSamples is how many terminal errors FleetStats keeps.
	fleetErrorSamples = 8
	// clientKeepBuffer is the largest message buffer a consumer keeps
	// between frames; a larger one (an oversized frame) is released.
	clientKeepBuffer = 64 << 10
)

// Error and #info names a consumer tells apart.
const (
	ErrNameFutureCursor    = "FutureCursor"
	ErrNameConsumerTooSlow = "ConsumerTooSlow"
	InfoOutdatedCursor     = "OutdatedCursor"
)

// FleetOptions configures a consumer fleet.
type FleetOptions struct {
	// URL is the subscribeRepos URL (ws:// or wss://), without cursor.
	URL string
	// Consumers is the fleet size.
	Consumers int
	// Cursor, when >= 0, is sent as ?cursor=; -1 subscribes live.
	Cursor int64
	// SlowFraction of the consumers pause SlowDelay after every frame.
	SlowFraction float64
	SlowDelay    time.Duration
	// Table resolves (did, rev) to emit times for latency; nil: no latency.
	Table *EmitTable
	// TLS for wss:// targets.
	TLS *tls.Config
	// ReadBufferSize per consumer (default DefaultClientReadBuffer).
	ReadBufferSize int
	// DialConcurrency (default DefaultDialConcurrency).
	DialConcurrency int
	// TimelineConsumers and TimelineSeconds shape the per-second series.
	TimelineConsumers int
	TimelineSeconds   int
}

// fleetCounters are one consumer's counts. Only the consumer's goroutine
// writes them; snapshots read them atomically.
type fleetCounters struct {
	frames, commits, syncs, identities, accounts, infos, unknown atomic.Int64
	errorFrames, futureCursor, tooSlow, outdated                 atomic.Int64
	gaps, missing, duplicates, scanErrors, nonBinary             atomic.Int64
	firstSeq, lastSeq                                            atomic.Int64
	bytes, faults                                                atomic.Int64
}

// consumer is one firehose subscription.
type consumer struct {
	id     int
	slow   bool
	probe  bool // records the per-second series
	client *FirehoseClient
	c      fleetCounters
	lat    Histogram
	ended  atomic.Bool
	err    error // terminal error; read after ended
	seen   bool  // a seq was seen (goroutine-local)
}

// Fleet is K firehose consumers. Each costs one goroutine (stack 8 KiB
// initially), a read buffer (4 KiB default), a message buffer the size
// of the largest recent frame (released above 64 KiB) and a 2 KiB latency
// histogram.
type Fleet struct {
	opts      FleetOptions
	consumers []*consumer
	wg        sync.WaitGroup
	ctx       context.Context
	cancel    context.CancelFunc
	start     time.Time
	timeline  []atomic.Pointer[Histogram]
	probes    int
}

// ErrFleetShape is returned by StartFleet for a fleet without consumers or
// without a URL.
var ErrFleetShape = errors.New("perf: fleet needs a URL and at least one consumer")

// StartFleet connects every consumer (a bounded number at a time) and
// starts reading. It fails if any consumer cannot connect; those already
// connected are closed.
func StartFleet(ctx context.Context, opts FleetOptions) (*Fleet, error) {
	if opts.Consumers < 1 || opts.URL == "" {
		return nil, ErrFleetShape
	}
	if opts.SlowDelay <= 0 {
		opts.SlowDelay = DefaultSlowDelay
	}
	if opts.DialConcurrency <= 0 {
		opts.DialConcurrency = DefaultDialConcurrency
	}
	if opts.TimelineConsumers <= 0 {
		opts.TimelineConsumers = DefaultTimelineConsumers
	}
	if opts.TimelineSeconds <= 0 {
		opts.TimelineSeconds = DefaultTimelineSeconds
	}
	u := opts.URL
	if opts.Cursor >= 0 {
		pu, err := url.Parse(u)
		if err != nil {
			return nil, err
		}
		q := pu.Query()
		q.Set("cursor", strconv.FormatInt(opts.Cursor, 10))
		pu.RawQuery = q.Encode()
		u = pu.String()
	}

	f := &Fleet{opts: opts, timeline: make([]atomic.Pointer[Histogram], opts.TimelineSeconds)}
	f.ctx, f.cancel = context.WithCancel(context.Background())
	nSlow := int(float64(opts.Consumers)*opts.SlowFraction + 0.5)
	for i := range opts.Consumers {
		// Spread the slow consumers evenly over the fleet.
		slow := (i+1)*nSlow/opts.Consumers > i*nSlow/opts.Consumers
		c := &consumer{id: i, slow: slow}
		c.c.firstSeq.Store(-1)
		c.c.lastSeq.Store(-1)
		if !slow && f.probes < opts.TimelineConsumers {
			c.probe = true
			f.probes++
		}
		f.consumers = append(f.consumers, c)
	}

	sem := make(chan struct{}, opts.DialConcurrency)
	var dialErr error
	var mu sync.Mutex
	var dials sync.WaitGroup
	for _, c := range f.consumers {
		sem <- struct{}{}
		dials.Add(1)
		go func() {
			defer dials.Done()
			defer func() { <-sem }()
			dctx, cancel := context.WithTimeout(ctx, fleetDialTimeout)
			defer cancel()
			cl, err := DialFirehose(dctx, u, DialOptions{TLS: opts.TLS, ReadBufferSize: opts.ReadBufferSize})
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				if dialErr == nil {
					dialErr = fmt.Errorf("perf: consumer %d: %w", c.id, err)
				}
				return
			}
			c.client = cl
		}()
	}
	dials.Wait()
	if dialErr != nil {
		for _, c := range f.consumers {
			if c.client != nil {
				_ = c.client.Close()
			}
		}
		f.cancel()
		return nil, dialErr
	}
	f.start = time.Now()
	for _, c := range f.consumers {
		f.wg.Add(1)
		go f.run(c)
	}
	return f, nil
}

// run reads c's stream until it ends or the fleet closes.
func (f *Fleet) run(c *consumer) {
	defer f.wg.Done()
	defer c.ended.Store(true)
	var pause *time.Timer
	if c.slow {
		pause = time.NewTimer(f.opts.SlowDelay)
		defer pause.Stop()
	}
	for {
		op, p, err := c.client.Next()
		if err != nil {
			if f.ctx.Err() == nil {
				c.err = err
			}
			return
		}
		c.c.frames.Add(1)
		c.c.bytes.Add(int64(len(p)))
		if op != ws.OpBinary {
			c.c.nonBinary.Add(1)
		} else {
			f.observe(c, p)
		}
		if cap(p) > clientKeepBuffer {
			c.client.msg = nil
		}
		if c.slow {
			pause.Reset(f.opts.SlowDelay)
			select {
			case <-pause.C:
			case <-f.ctx.Done():
				return
			}
		}
	}
}

// observe accounts for one binary frame.
func (f *Fleet) observe(c *consumer, p []byte) {
	fi, err := ScanFrame(p)
	if err != nil {
		c.c.scanErrors.Add(1)
		return
	}
	if fi.Op != 1 {
		c.c.errorFrames.Add(1)
		switch string(fi.Error) {
		case ErrNameFutureCursor:
			c.c.futureCursor.Add(1)
		case ErrNameConsumerTooSlow:
			c.c.tooSlow.Add(1)
		}
		return
	}
	if fi.Type == TypeInfo {
		c.c.infos.Add(1)
		if string(fi.Name) == InfoOutdatedCursor {
			c.c.outdated.Add(1)
		}
		return
	}
	var (
		lat          time.Duration
		fault, known bool
	)
	if len(fi.Rev) > 0 {
		lat, fault, known = f.opts.Table.Lookup(fi.DID, fi.Rev)
	}
	switch {
	case fault:
		// A fault event came through: the target failed to drop it. It is
		// not counted as a commit, so delivery figures stay honest.
		c.c.faults.Add(1)
	case fi.Type == TypeCommit:
		c.c.commits.Add(1)
	case fi.Type == TypeSync:
		c.c.syncs.Add(1)
	case fi.Type == TypeIdentity:
		c.c.identities.Add(1)
	case fi.Type == TypeAccount:
		c.c.accounts.Add(1)
	default:
		c.c.unknown.Add(1)
	}
	if fi.HasSeq {
		last := c.c.lastSeq.Load()
		switch {
		case !c.seen:
			c.seen = true
			c.c.firstSeq.Store(fi.Seq)
			last = fi.Seq - 1
		case fi.Seq <= last:
			c.c.duplicates.Add(1)
		case fi.Seq > last+1:
			c.c.gaps.Add(1)
			c.c.missing.Add(fi.Seq - last - 1)
		}
		if fi.Seq > last {
			c.c.lastSeq.Store(fi.Seq)
		}
	}
	if !known || fault {
		return
	}
	c.lat.Record(lat)
	if c.probe {
		sec := int(time.Since(f.start) / time.Second)
		if sec >= len(f.timeline) {
			sec = len(f.timeline) - 1
		}
		h := f.timeline[sec].Load()
		if h == nil {
			h = new(Histogram)
			if !f.timeline[sec].CompareAndSwap(nil, h) {
				h = f.timeline[sec].Load()
			}
		}
		h.Record(lat)
	}
}

// Close stops every consumer and waits for them.
func (f *Fleet) Close() {
	f.cancel()
	for _, c := range f.consumers {
		_ = c.client.Close()
	}
	f.wg.Wait()
}

// FleetStats is a snapshot of a fleet.
type FleetStats struct {
	Consumers int `json:"consumers"`
	Slow      int `json:"slow"`
	Ended     int `json:"ended"` // streams that ended (closed, error)

	Frames     int64 `json:"frames"`
	Commits    int64 `json:"commits"`
	Syncs      int64 `json:"syncs"`
	Identities int64 `json:"identities"`
	Accounts   int64 `json:"accounts"`
	Infos      int64 `json:"infos"`
	Unknown    int64 `json:"unknown"`
	NonBinary  int64 `json:"non_binary"`
	ScanErrors int64 `json:"scan_errors"`
	// Bytes is the payload bytes of every message received.
	Bytes int64 `json:"bytes"`
	// FaultsDelivered counts fault events (bad signature, stale rev, wrong
	// host) that reached a consumer: a correct target delivers none.
	FaultsDelivered int64 `json:"faults_delivered"`

	ErrorFrames     int64 `json:"error_frames"`
	FutureCursor    int64 `json:"future_cursor"`
	ConsumerTooSlow int64 `json:"consumer_too_slow"`
	OutdatedCursor  int64 `json:"outdated_cursor"`

	// Gaps counts seq jumps, Missing the seqs skipped, Duplicates frames
	// whose seq was not above the previous one. All three must be 0.
	Gaps       int64 `json:"gaps"`
	Missing    int64 `json:"missing"`
	Duplicates int64 `json:"duplicates"`

	// MinLastSeq and MaxLastSeq span the consumers' last seen seq.
	MinLastSeq int64 `json:"min_last_seq"`
	MaxLastSeq int64 `json:"max_last_seq"`
	// MinCommits is the fewest commits any fast consumer received (any
	// consumer, when all are slow).
	MinCommits int64 `json:"min_commits"`

	// Latency is emit-to-receive over fast consumers, SlowLatency over slow.
	Latency     LatencySummary `json:"latency"`
	SlowLatency LatencySummary `json:"slow_latency"`

	Errors []string `json:"errors,omitempty"`
}

// Stats snapshots the fleet. It can be called while consumers run.
func (f *Fleet) Stats() FleetStats {
	st := FleetStats{Consumers: len(f.consumers), MinLastSeq: -1, MinCommits: -1}
	var fast, slow Histogram
	for _, c := range f.consumers {
		if c.slow {
			st.Slow++
			slow.Merge(&c.lat)
		} else {
			fast.Merge(&c.lat)
			if n := c.c.commits.Load(); st.MinCommits < 0 || n < st.MinCommits {
				st.MinCommits = n
			}
		}
		if c.ended.Load() {
			st.Ended++
			if c.err != nil && len(st.Errors) < fleetErrorSamples {
				st.Errors = append(st.Errors, fmt.Sprintf("consumer %d: %v", c.id, c.err))
			}
		}
		st.Frames += c.c.frames.Load()
		st.Commits += c.c.commits.Load()
		st.Syncs += c.c.syncs.Load()
		st.Identities += c.c.identities.Load()
		st.Accounts += c.c.accounts.Load()
		st.Infos += c.c.infos.Load()
		st.Unknown += c.c.unknown.Load()
		st.NonBinary += c.c.nonBinary.Load()
		st.ScanErrors += c.c.scanErrors.Load()
		st.Bytes += c.c.bytes.Load()
		st.FaultsDelivered += c.c.faults.Load()
		st.ErrorFrames += c.c.errorFrames.Load()
		st.FutureCursor += c.c.futureCursor.Load()
		st.ConsumerTooSlow += c.c.tooSlow.Load()
		st.OutdatedCursor += c.c.outdated.Load()
		st.Gaps += c.c.gaps.Load()
		st.Missing += c.c.missing.Load()
		st.Duplicates += c.c.duplicates.Load()
		last := c.c.lastSeq.Load()
		if st.MinLastSeq < 0 || last < st.MinLastSeq {
			st.MinLastSeq = last
		}
		st.MaxLastSeq = max(st.MaxLastSeq, last)
	}
	if st.MinCommits < 0 {
		// An all-slow fleet: the fewest commits of any consumer.
		for _, c := range f.consumers {
			if n := c.c.commits.Load(); st.MinCommits < 0 || n < st.MinCommits {
				st.MinCommits = n
			}
		}
	}
	st.MinCommits = max(st.MinCommits, 0)
	st.Latency = fast.Summary()
	st.SlowLatency = slow.Summary()
	return st
}

// SecondStat is one second of the probe consumers' view: frames with a
// known emit time received per second (averaged over the probes) and
// their latency.
type SecondStat struct {
	Second   int            `json:"second"`
	Received float64        `json:"received_per_sec"`
	Latency  LatencySummary `json:"latency"`
}

// Timeline returns the per-second series from the fleet's start to the
// last second with samples.
func (f *Fleet) Timeline() []SecondStat {
	last := -1
	for i := range f.timeline {
		if f.timeline[i].Load() != nil {
			last = i
		}
	}
	out := make([]SecondStat, 0, last+1)
	for i := 0; i <= last; i++ {
		s := SecondStat{Second: i}
		if h := f.timeline[i].Load(); h != nil && f.probes > 0 {
			s.Received = float64(h.Count()) / float64(f.probes)
			s.Latency = h.Summary()
		}
		out = append(out, s)
	}
	return out
}

// Wait polls the fleet until cond holds for its stats, or ctx ends.
func (f *Fleet) Wait(ctx context.Context, cond func(FleetStats) bool) error {
	const poll = 20 * time.Millisecond
	t := time.NewTicker(poll)
	defer t.Stop()
	for {
		if cond(f.Stats()) {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}
