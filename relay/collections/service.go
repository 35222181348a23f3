// Package collections keeps the relay's collection index (persist/collection)
// up to date and answers from it: a follower applies the durable event
// log to the index, a resyncer rebuilds accounts from their PDS's
// getRepo, a backfiller fills the index from a source relay, a cleaner
// removes accounts the relay no longer has.
//
// The package knows nothing of the relay's internals: it reads the event
// log, and takes an HTTP client (the relay's SSRF-safe one), a function
// returning a DID's PDS endpoint and one telling whether the relay has an
// account.
package collections

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/VictoriaMetrics/metrics"
	comatproto "github.com/bluesky-social/indigo/api/atproto"

	"github.com/relay/relay/persist/collection"
	"github.com/relay/relay/persist/eventlog"
	"github.com/relay/relay/wsframe"
)

// Event log record kinds (relay.KindCommit ...; repeated here so the
// package does not import relay).
const (
	kindCommit  = 1
	kindSync    = 2
	kindAccount = 4
)

// Follower limits.
const (
	// followReadBytes bounds the log bytes read for one batch; a batch is
	// applied in one index batch, so this also bounds its memory.
	followReadBytes = 4 << 20
	// followPoll is how often the follower looks at the log without a wake.
	followPoll = 50 * time.Millisecond
	// followRetry is the pause after a failed read or apply.
	followRetry = time.Second
)

// Options configure a Service.
type Options struct {
	Index   *collection.Index
	Log     *eventlog.Log
	Metrics *metrics.Set
	Logger  *slog.Logger

	// HTTPClient makes every outbound call (getRepo, backfill pages);
	// pass the relay's SSRF-safe client.
	HTTPClient *http.Client
	// PDSFor returns the base URL (scheme://host[:port]) of a DID's PDS.
	PDSFor func(ctx context.Context, did string) (string, error)
	// AccountExists tells the cleaner whether the relay still has the
	// account; nil disables the cleaner.
	AccountExists func(ctx context.Context, did string) (bool, error)

	// Resync: workers (global), per-host concurrency, queue length, largest
	// CAR accepted, timeout of one fetch. Zero values select the defaults.
	ResyncWorkers  int
	ResyncPerHost  int
	ResyncQueue    int
	MaxRepoBytes   int64
	ResyncTimeout  time.Duration
	ResyncRescan   time.Duration // how often the durable markers are rescanned
	CleanInterval  time.Duration // 0: default; < 0: no periodic pass
	BackfillSource string        // default source for a backfill started without one
}

// Defaults.
const (
	DefaultResyncWorkers = 4
	DefaultResyncPerHost = 2
	DefaultResyncQueue   = 4096
	DefaultMaxRepoBytes  = 128 << 20
	DefaultResyncTimeout = 2 * time.Minute
	DefaultResyncRescan  = 10 * time.Second
	DefaultCleanInterval = time.Hour
)

// Service runs the follower and the helpers.
type Service struct {
	opts   Options
	ix     *collection.Index
	log    *eventlog.Log
	logger *slog.Logger

	wake chan struct{}
	stop chan struct{}
	wg   sync.WaitGroup

	m  svcMetrics
	rs *resyncer
	bf *backfiller

	closeOnce sync.Once
}

type svcMetrics struct {
	applied      *metrics.Counter
	ops          *metrics.Counter
	decodeErrors *metrics.Counter
	applyErrors  *metrics.Counter
	gaps         *metrics.Counter
	cleaned      *metrics.Counter
	applySeconds *metrics.Histogram
}

// New creates the service; Start runs it.
func New(opts Options) *Service {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Metrics == nil {
		opts.Metrics = metrics.NewSet()
	}
	if opts.HTTPClient == nil {
		opts.HTTPClient = http.DefaultClient
	}
	setDefault(&opts.ResyncWorkers, DefaultResyncWorkers)
	setDefault(&opts.ResyncPerHost, DefaultResyncPerHost)
	setDefault(&opts.ResyncQueue, DefaultResyncQueue)
	setDefault(&opts.MaxRepoBytes, DefaultMaxRepoBytes)
	setDefault(&opts.ResyncTimeout, DefaultResyncTimeout)
	setDefault(&opts.ResyncRescan, DefaultResyncRescan)
	setDefault(&opts.CleanInterval, DefaultCleanInterval)
	s := &Service{
		opts: opts, ix: opts.Index, log: opts.Log, logger: opts.Logger,
		wake: make(chan struct{}, 1), stop: make(chan struct{}),
	}
	set := opts.Metrics
	s.m = svcMetrics{
		applied:      set.NewCounter("relay_collection_records_applied_total"),
		ops:          set.NewCounter("relay_collection_ops_applied_total"),
		decodeErrors: set.NewCounter("relay_collection_decode_errors_total"),
		applyErrors:  set.NewCounter("relay_collection_apply_errors_total"),
		gaps:         set.NewCounter("relay_collection_log_gaps_total"),
		cleaned:      set.NewCounter("relay_collection_cleaned_total"),
		applySeconds: set.NewHistogram("relay_collection_apply_seconds"),
	}
	set.NewGauge("relay_collection_entries", func() float64 { return float64(s.ix.Stats().Entries) })
	set.NewGauge("relay_collection_collections", func() float64 { return float64(s.ix.Stats().Collections) })
	set.NewGauge("relay_collection_resync_pending", func() float64 { return float64(s.ix.Stats().ResyncPending) })
	set.NewGauge("relay_collection_applied_seq", func() float64 { return float64(s.ix.Applied()) })
	set.NewGauge("relay_collection_lag_events", func() float64 {
		return float64(max(0, s.log.DurableSeq()-s.ix.Applied()))
	})
	s.rs = newResyncer(s)
	s.bf = newBackfiller(s)
	return s
}

func setDefault[T int | int64 | time.Duration](v *T, d T) {
	if *v == 0 {
		*v = d
	}
}

// Start runs the follower, the resyncer, the cleaner, and resumes a
// backfill that was running.
func (s *Service) Start() {
	s.wg.Add(1)
	go s.follow()
	s.rs.start()
	if s.opts.AccountExists != nil && s.opts.CleanInterval > 0 {
		s.wg.Add(1)
		go s.cleanLoop()
	}
	s.bf.resume()
}

// Close stops everything and waits. The index is the caller's to close.
func (s *Service) Close() {
	s.closeOnce.Do(func() {
		close(s.stop)
		s.bf.cancelRun()
		s.rs.close()
		s.wg.Wait()
	})
}

// Wake tells the follower that the log has new durable records. It never
// blocks (a pending wake absorbs the next ones).
func (s *Service) Wake() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// Index is the index the service maintains.
func (s *Service) Index() *collection.Index { return s.ix }

// ErrBehind: the index did not catch up with the log in time.
var ErrBehind = errors.New("collections: index is behind the event log")

// WaitApplied waits until the index has applied the log through seq, or
// ctx ends (ErrBehind).
func (s *Service) WaitApplied(ctx context.Context, seq int64) error {
	for {
		c := s.ix.AppliedC()
		if s.ix.Applied() >= seq {
			return nil
		}
		s.Wake()
		select {
		case <-c:
		case <-ctx.Done():
			return ErrBehind
		case <-s.stop:
			return ErrBehind
		}
	}
}

func (s *Service) follow() {
	defer s.wg.Done()
	t := time.NewTicker(followPoll)
	defer t.Stop()
	var changes []collection.Change
	for {
		caughtUp, err := s.step(&changes)
		if err != nil {
			s.m.applyErrors.Inc()
			s.logger.Error("collection index: follow step failed", "applied", s.ix.Applied(), "err", err)
			select {
			case <-s.stop:
				return
			case <-time.After(followRetry):
			}
			continue
		}
		if !caughtUp {
			select {
			case <-s.stop:
				return
			default:
			}
			continue
		}
		select {
		case <-s.stop:
			return
		case <-s.wake:
		case <-t.C:
		}
	}
}

// step applies one batch of the log past the checkpoint. caughtUp: the
// index has applied through the durable seq read at the start.
func (s *Service) step(buf *[]collection.Change) (caughtUp bool, err error) {
	from := s.ix.Applied()
	durable := s.log.DurableSeq()
	if from >= durable {
		return true, nil
	}
	if oldest := s.log.OldestSeq(); from > 0 && oldest > from+1 {
		// Retention removed records the index never applied (the relay ran
		// without the index, or it fell this far behind): counts of the
		// accounts they touched may be wrong until a resync. Counted.
		s.m.gaps.Inc()
		s.logger.Warn("collection index: event log records were removed before the index applied them", "applied", from, "oldest", oldest)
	}
	changes := (*buf)[:0]
	nrec := 0
	last, err := s.log.ReadAfter(from, followReadBytes, func(r eventlog.Record) error {
		nrec++
		if ch, ok := s.decode(r); ok {
			changes = append(changes, ch)
		}
		return nil
	})
	*buf = changes[:0]
	if err != nil && last <= from {
		return false, fmt.Errorf("read event log after %d: %w", from, err)
	}
	if last <= from {
		return true, nil
	}
	t0 := time.Now()
	res, aerr := s.ix.Apply(changes, last)
	if aerr != nil {
		return false, aerr
	}
	s.m.applySeconds.UpdateDuration(t0)
	s.m.applied.Add(nrec)
	for i := range changes {
		s.m.ops.Add(len(changes[i].Ops))
	}
	for i, did := range res.Resync {
		s.rs.enqueueReason(did, res.Reasons[i])
	}
	return last >= durable, err
}

// decode reduces a log record to a Change; ok=false for records the
// index ignores (#identity) and for records that do not decode (counted:
// the log is the truth, and a record that cannot be read cannot change
// what it says).
func (s *Service) decode(r eventlog.Record) (collection.Change, bool) {
	switch r.Kind {
	case kindCommit, kindSync, kindAccount:
	default:
		return collection.Change{}, false
	}
	_, _, body, err := wsframe.ParseEventHeader(r.Payload)
	if err != nil {
		s.m.decodeErrors.Inc()
		return collection.Change{}, false
	}
	ch, err := DecodeChange(r.Kind, body)
	if err != nil {
		s.m.decodeErrors.Inc()
		s.logger.Warn("collection index: undecodable log record", "seq", r.Seq, "kind", r.Kind, "err", err)
		return collection.Change{}, false
	}
	return ch, true
}

// DecodeChange decodes an event body (CBOR, after the frame header) of
// the given log kind into a Change.
func DecodeChange(kind uint32, body []byte) (collection.Change, error) {
	switch kind {
	case kindCommit:
		if ch, err := decodeCommitFast(body); err == nil {
			return ch, nil
		}
		// Fall back to the full decoder (it reports the error).
		var c comatproto.SyncSubscribeRepos_Commit
		if err := c.UnmarshalCBOR(bytes.NewReader(body)); err != nil {
			return collection.Change{}, err
		}
		ch := collection.Change{Kind: collection.KindCommit, DID: c.Repo, Rev: c.Rev, First: c.Since == nil}
		ch.Ops = make([]collection.Op, 0, len(c.Ops))
		for _, op := range c.Ops {
			if op == nil {
				continue
			}
			var a collection.Action
			switch op.Action {
			case "create":
				a = collection.Create
			case "update":
				a = collection.Update
			case "delete":
				a = collection.Delete
			default:
				continue
			}
			ch.Ops = append(ch.Ops, collection.Op{Action: a, Collection: collection.CollectionOf(op.Path)})
		}
		return ch, nil
	case kindSync:
		var c comatproto.SyncSubscribeRepos_Sync
		if err := c.UnmarshalCBOR(bytes.NewReader(body)); err != nil {
			return collection.Change{}, err
		}
		return collection.Change{Kind: collection.KindSync, DID: c.Did, Rev: c.Rev}, nil
	case kindAccount:
		var c comatproto.SyncSubscribeRepos_Account
		if err := c.UnmarshalCBOR(bytes.NewReader(body)); err != nil {
			return collection.Change{}, err
		}
		ch := collection.Change{Kind: collection.KindAccount, DID: c.Did, Active: c.Active}
		if c.Status != nil {
			ch.Status = *c.Status
		}
		return ch, nil
	}
	return collection.Change{}, fmt.Errorf("collections: kind %d", kind)
}

// Stats are the service's figures for /_stats.
type Stats struct {
	collection.Stats
	LagEvents   int64            `json:"lagEvents"`
	ResyncQueue int              `json:"resyncQueue"`
	Resyncing   int              `json:"resyncing"`
	Backfill    *BackfillStatus  `json:"backfill,omitempty"`
	Resyncs     map[string]int64 `json:"resyncs"`
}

// Stats returns the service's figures.
func (s *Service) Stats() Stats {
	st := Stats{Stats: s.ix.Stats(), LagEvents: max(0, s.log.DurableSeq()-s.ix.Applied())}
	st.ResyncQueue, st.Resyncing = s.rs.queueLen()
	st.Resyncs = s.rs.counts()
	if b, ok := s.bf.status(); ok {
		st.Backfill = &b
	}
	return st
}
