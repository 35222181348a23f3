package relay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/bluesky-social/indigo/atproto/identity"

	"github.com/relay/relay/loop"
	"github.com/relay/relay/persist/eventlog"
	"github.com/relay/relay/persist/meta"
	"github.com/relay/relay/persist/meta/pebblestore"
	"github.com/relay/relay/persist/meta/pgstore"
	"github.com/relay/relay/wsframe"
)

// Shutdown and service limits.
const (
	// drainTimeout bounds how long a graceful shutdown waits for consumers
	// to receive what was sequenced before their sockets are closed.
	drainTimeout = 5 * time.Second
	// retentionInterval is how often the event log's retention runs.
	retentionInterval = time.Minute
	// maxHeaderBytes bounds HTTP request headers on both listeners.
	maxHeaderBytes = 64 << 10
	// recoveryTimeout bounds replaying the event log into the store at
	// start (about a minute per few GB of log past the checkpoint).
	recoveryTimeout = time.Hour
)

// Relay is one running relay: storage, sequencer, event loops and the HTTP
// listeners.
type Relay struct {
	cfg     Config
	logger  *slog.Logger
	metrics *Metrics

	log    *eventlog.Log
	ring   *Ring
	seq    *Sequencer
	engine *loop.Engine
	bc     *Broadcaster

	store    meta.Store
	derived  *derivedState
	ckpt     *checkpointer
	coll     *collectionIndex // listReposByCollection (collections.go)
	resolver *Resolver
	ing      *Ingester
	hosts    *HostManager
	bans     domainBans

	ln, mln    net.Listener
	httpSrv    *http.Server
	metricsSrv *http.Server
	started    time.Time

	stopOnce sync.Once
	stop     chan struct{}
	wg       sync.WaitGroup
}

// New opens the relay's storage and starts its internal services; Start
// opens the listeners.
func New(cfg Config, logger *slog.Logger) (*Relay, error) {
	if logger == nil {
		logger = slog.Default()
	}
	if err := os.MkdirAll(cfg.DataDir, 0o755); err != nil {
		return nil, fmt.Errorf("data dir: %w", err)
	}
	r := &Relay{cfg: cfg, logger: logger, metrics: NewMetrics(), stop: make(chan struct{})}
	var err error
	r.log, err = eventlog.Open(eventlog.Options{
		Dir:              filepath.Join(cfg.DataDir, "events"),
		Retention:        cfg.Retention,
		SegmentMaxEvents: cfg.SegmentEvents,
		MaxBytes:         cfg.MaxEventsBytes,
		Logger:           logger, // the log adds its component key
		CheckPayload:     checkLoggedFrame,
		Metrics:          r.metrics.set,
	})
	if err != nil {
		return nil, fmt.Errorf("open event log: %w", err)
	}
	r.store, err = openStore(cfg)
	if err != nil {
		r.log.Close()
		return nil, err
	}
	// The store must reflect the whole durable log before anything reads
	// it: replay what follows the last checkpoint.
	rctx, rcancel := context.WithTimeout(context.Background(), recoveryTimeout)
	rec, err := recoverDerived(rctx, r.log, r.store, logger.With("component", "recovery"))
	rcancel()
	if err != nil {
		r.store.Close()
		r.log.Close()
		return nil, fmt.Errorf("recover derived state from the event log: %w", err)
	}
	r.derived = newDerivedState(rec.seq)
	r.ring = NewRing(cfg.RingSize, cfg.RingBytes)
	if err := r.openCollections(); err != nil {
		r.store.Close()
		r.log.Close()
		return nil, err
	}
	r.engine, err = loop.Start(loop.Options{Loops: cfg.EventLoops, Logger: logger})
	if err != nil {
		_ = r.closeCollections()
		r.store.Close()
		r.log.Close()
		return nil, fmt.Errorf("start event loops: %w", err)
	}
	r.bc = NewBroadcaster(r.engine, r.ring, r.log, r.metrics, cfg.ConsumerMaxLag, cfg.ConsumerOutboundCap, logger.With("component", "broadcast"))
	r.seq = NewSequencer(r.log, r.ring, r.derived, r.metrics, cfg.FsyncInterval, r.notifyDurable, logger.With("component", "sequencer"))
	dir := &identity.BaseDirectory{
		PLCURL:                 cfg.PLCHost,
		HTTPClient:             *loop.NewHTTPClient(cfg.AllowInsecureHosts, resolveTimeout),
		SkipHandleVerification: true,
		UserAgent:              userAgent,
	}
	r.resolver = NewResolver(dir, logger.With("component", "identity"))
	r.ing = newIngester(ingestDeps{
		store: r.store, derived: r.derived, resolver: r.resolver, submit: r.seq.Submit,
		// Late-bound: the host manager is built on the ingester.
		hostByID: func(id uint64) *hostConn { return r.hosts.byID(id) },
		checker:  newStatusChecker(loop.NewHTTPClient(cfg.AllowInsecureHosts, statusCheckTimeout), logger.With("component", "recheck")),
		metrics:  r.metrics, logger: logger.With("component", "ingest"),
		lenient: cfg.LenientSyncValidation, enforceInversion: cfg.InversionEnforced, workers: cfg.FrameWorkers, cacheBytes: cfg.CacheBytes,
	})
	r.hosts = newHostManager(hostDeps{
		store: r.store, engine: r.engine, ing: r.ing, bans: &r.bans,
		recovered: rec.hosts, downSince: rec.checkpointAt, sequencerErr: r.seq.Err,
		metrics: r.metrics, logger: logger.With("component", "hosts"),
		policy: hostPolicy{
			allowInsecure: cfg.AllowInsecureHosts, newHostsPerDay: cfg.NewHostsPerDay,
			defaultAccountLimit: cfg.DefaultAccountLimit,
			trusted:             parseTrustedDomains(cfg.TrustedDomains),
			lenientAll:          cfg.LenientSyncValidation,
			siblings:            splitList(cfg.SiblingRelays),
			maxCursorAge:        cfg.MaxCursorAge,
		},
	})
	r.hosts.resyncHost = r.resyncHostAccounts
	r.ckpt = newCheckpointer(r.store, r.derived, r.hosts, rec.seq, r.metrics, logger.With("component", "checkpoint"))
	r.hosts.checkpointSoon = r.ckpt.soon
	r.registerGauges()
	r.wg.Add(1)
	go r.retention()
	return r, nil
}

func (r *Relay) registerGauges() {
	r.metrics.Gauge("relay_ring_events", func() float64 { return float64(r.ring.Len()) })
	r.metrics.Gauge("relay_ring_bytes", func() float64 { return float64(r.ring.Bytes()) })
	r.metrics.Gauge("relay_head_seq", func() float64 { return float64(r.ring.Head()) })
	r.metrics.Gauge("relay_sequencer_queue", func() float64 { return float64(r.seq.QueueLen()) })
	r.metrics.Gauge("relay_eventlog_bytes", func() float64 { return float64(r.log.Stats().Bytes) })
	r.metrics.Gauge("relay_eventlog_segments", func() float64 { return float64(r.log.Stats().Segments) })
	r.metrics.Gauge("relay_derived_pending", func() float64 { return float64(r.derived.pending()) })
}

// Handlers are what the relay's two listeners serve (relay/httpapi builds
// them over the relay's exported surface).
type Handlers struct {
	// API is served on RELAY_PORT: firehose, sync API, admin, stats.
	API http.Handler
	// Metrics is served on RELAY_METRICS_PORT: metrics, health, dashboard.
	Metrics http.Handler
}

// Start opens the API and metrics listeners, serves h on them in the
// background, and connects the hosts.
func (r *Relay) Start(h Handlers) error {
	if h.API == nil || (r.cfg.MetricsListen != "" && h.Metrics == nil) {
		return errors.New("relay: Start needs the API handler, and the metrics handler when the metrics listener is on (httpapi.Handlers)")
	}
	var err error
	r.ln, err = net.Listen("tcp", r.cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen %s: %w", r.cfg.Listen, err)
	}
	r.httpSrv = &http.Server{
		Handler: h.API, MaxHeaderBytes: maxHeaderBytes,
		// A slow client cannot hold a handler goroutine: headers in 10 s,
		// the whole request in 30 s, an idle keep-alive for 2 minutes.
		// Firehose sockets leave net/http at the upgrade.
		ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second, IdleTimeout: 2 * time.Minute,
	}
	r.started = time.Now()
	r.serve(r.httpSrv, r.ln)
	if r.cfg.MetricsListen != "" {
		r.mln, err = net.Listen("tcp", r.cfg.MetricsListen)
		if err != nil {
			r.ln.Close()
			return fmt.Errorf("listen %s: %w", r.cfg.MetricsListen, err)
		}
		r.metricsSrv = &http.Server{Handler: h.Metrics, ReadHeaderTimeout: 10 * time.Second, MaxHeaderBytes: maxHeaderBytes}
		r.serve(r.metricsSrv, r.mln)
	}
	r.logger.Info("relay listening", "api", r.ln.Addr().String(), "metrics", r.MetricsAddr())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	bans, err := r.store.ListDomainBans(ctx)
	if err != nil {
		return fmt.Errorf("load domain bans: %w", err)
	}
	r.bans.set(bans)
	if err := r.hosts.start(ctx); err != nil {
		return err
	}
	var seeds []string
	if r.cfg.Upstream != "" {
		seeds = append(seeds, r.cfg.Upstream)
	}
	seeds = append(seeds, splitList(r.cfg.SeedRelays)...)
	if len(seeds) > 0 {
		r.hosts.wg.Add(1)
		go r.hosts.discover(seeds, r.cfg.DiscoveryInterval)
	}
	return nil
}

func (r *Relay) serve(srv *http.Server, ln net.Listener) {
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			r.logger.Error("http server failed", "addr", ln.Addr().String(), "err", err)
		}
	}()
}

// Addr is the API listener's address.
func (r *Relay) Addr() string { return r.ln.Addr().String() }

// MetricsAddr is the metrics listener's address ("" if disabled).
func (r *Relay) MetricsAddr() string {
	if r.mln == nil {
		return ""
	}
	return r.mln.Addr().String()
}

// Metrics exposes the relay's metrics (tests, perf harness).
func (r *Relay) Metrics() *Metrics { return r.metrics }

// Submit hands an accepted event to the sequencer.
func (r *Relay) Submit(ctx context.Context, ev Outgoing) error { return r.seq.Submit(ctx, ev) }

// Head is the last durable, published seq.
func (r *Relay) Head() int64 { return r.ring.Head() }

func (r *Relay) retention() {
	defer r.wg.Done()
	t := time.NewTicker(retentionInterval)
	defer t.Stop()
	for {
		select {
		case <-r.stop:
			return
		case now := <-t.C:
			if n, err := r.log.Trim(now); err != nil {
				r.logger.Error("event log retention failed", "err", err)
			} else if n > 0 {
				r.logger.Info("event log retention removed segments", "segments", n)
			}
		}
	}
}

// Close shuts down gracefully: stop accepting connections, sequence and
// fsync everything accepted, let consumers receive it (bounded by
// drainTimeout), close every socket, then close storage.
func (r *Relay) Close(ctx context.Context) error {
	var errs []error
	r.stopOnce.Do(func() {
		close(r.stop)
		if r.httpSrv != nil {
			// Shutdown stops the listener; hijacked firehose sockets belong to
			// the event loops and are unaffected.
			sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			_ = r.httpSrv.Shutdown(sctx)
			cancel()
		}
		// Upstream first: no new events; then validate what was queued,
		// sequence and fsync it, and persist heads and cursors.
		r.hosts.close()
		r.ing.CloseWorkers()
		if err := r.seq.Close(); err != nil {
			errs = append(errs, err)
		}
		r.derived.close()
		r.ckpt.close()
		r.resolver.Close()
		r.drainConsumers(ctx)
		r.bc.Close()
		if err := r.engine.Stop(ctx); err != nil {
			errs = append(errs, fmt.Errorf("stop loops: %w", err))
		}
		if r.metricsSrv != nil {
			_ = r.metricsSrv.Close()
		}
		r.wg.Wait()
		if err := r.closeCollections(); err != nil {
			errs = append(errs, fmt.Errorf("close collection index: %w", err))
		}
		if err := r.log.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close event log: %w", err))
		}
		if err := r.store.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close store: %w", err))
		}
	})
	return errors.Join(errs...)
}

// drainConsumers waits until every live consumer has been handed the head,
// or drainTimeout passes.
func (r *Relay) drainConsumers(ctx context.Context) {
	deadline := time.Now().Add(drainTimeout)
	head := r.ring.Head()
	for time.Now().Before(deadline) && ctx.Err() == nil {
		behind := false
		for _, c := range r.bc.Consumers() {
			if c.Position < head {
				behind = true
				break
			}
		}
		if !behind {
			return
		}
		r.bc.Notify()
		time.Sleep(10 * time.Millisecond)
	}
}

// openStore opens Postgres when DatabaseURL is set, else the embedded
// Pebble store under DataDir.
func openStore(cfg Config) (meta.Store, error) {
	if cfg.DatabaseURL != "" {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		s, err := pgstore.Open(ctx, cfg.DatabaseURL)
		if err != nil {
			return nil, fmt.Errorf("open postgres store: %w", err)
		}
		return s, nil
	}
	s, err := pebblestore.OpenCache(filepath.Join(cfg.DataDir, "meta"), cfg.StoreCacheBytes/2)
	if err != nil {
		return nil, fmt.Errorf("open embedded store: %w", err)
	}
	return s, nil
}

// ErrBadLoggedFrame: a record of the event log is not an event-stream
// message (a payload a crash did not persist).
var ErrBadLoggedFrame = errors.New("relay: event log record is not an event-stream message")

// checkLoggedFrame accepts a logged payload only if it is an event-stream
// message: a header with op 1 and a known type, then a CBOR map body.
func checkLoggedFrame(p []byte) error {
	op, t, body, err := wsframe.ParseEventHeader(p)
	if err != nil {
		return errors.Join(ErrBadLoggedFrame, err)
	}
	if op != wsframe.OpMessage || len(body) == 0 || body[0]>>5 != 5 { // major type 5: map
		return ErrBadLoggedFrame
	}
	switch t {
	case "#commit", "#sync", "#identity", "#account":
		return nil
	}
	return fmt.Errorf("%w: type %q", ErrBadLoggedFrame, t)
}
