package relay

import (
	"fmt"
	"io"
	"sync"

	"github.com/VictoriaMetrics/metrics"
)

// Metrics are the relay's Prometheus metrics, all prefixed relay_. Each
// relay instance has its own set, so in-process tests see their own counts.
type Metrics struct {
	set *metrics.Set

	// Labelled counters by label value. sync.Map: the per-event lookups
	// (events in and out by type) read without a lock.
	dropped sync.Map
	in      sync.Map
	out     sync.Map

	fsyncSeconds    *metrics.Histogram
	sequenceSeconds *metrics.Histogram
	sequencerBatch  *metrics.Histogram
	validateSeconds *metrics.Histogram
	// durableSeconds: from an event's arrival off the host's socket to its
	// fsync and publication to consumers (the relay's end-to-end latency).
	durableSeconds  *metrics.Histogram
	sequencerFailed *metrics.Counter

	checkpointSeconds   *metrics.Histogram
	checkpointFailures  *metrics.Counter
	storeRetries        *metrics.Counter
	notSequenced        *metrics.Counter
	replayReadErrors    *metrics.Counter
	consumersRefused    *metrics.Counter
	identityBudgetWaits *metrics.Counter

	consumersConnected *metrics.Counter
	consumersKicked    sync.Map
	framesDelivered    *metrics.Counter
	bytesDelivered     *metrics.Counter
	replayBytes        *metrics.Counter
}

// Drop reasons for relay_events_dropped_total that exist before any event
// was dropped, so a dashboard shows zeros rather than gaps.
var knownDropReasons = []string{
	"bad_signature", "wrong_host", "stale_rev", "future_rev", "too_many_ops",
	"blocks_too_big", "bad_cbor", "bad_frame", "text_frame", "unknown_type",
	"inactive_account", "identity_error", "invalid_commit", "inversion_failed",
	"duplicate_seq", "account_wrong_host", "host_blocked", "encode_error",
	"rate_limited", "oversized_frame", "already_durable",
}

// Consumer close reasons for relay_consumers_closed_total.
var knownKickReasons = []string{"too_slow", "future_cursor", "closed", "protocol", "shutdown", "dead", "replay_error"}

// NewMetrics creates a relay's metric set.
func NewMetrics() *Metrics {
	s := metrics.NewSet()
	m := &Metrics{
		set:             s,
		fsyncSeconds:    s.NewHistogram("relay_eventlog_fsync_seconds"),
		sequenceSeconds: s.NewHistogram("relay_sequencer_batch_seconds"),
		sequencerBatch:  s.NewHistogram("relay_sequencer_batch_events"),
		validateSeconds: s.NewHistogram("relay_validate_seconds"),
		durableSeconds:  s.NewHistogram("relay_event_durable_seconds"),
		sequencerFailed: s.NewCounter("relay_sequencer_failed"),
		framesDelivered: s.NewCounter("relay_consumer_frames_sent_total"),
		bytesDelivered:  s.NewCounter("relay_consumer_bytes_sent_total"),
		replayBytes:     s.NewCounter("relay_consumer_replay_bytes_total"),

		checkpointSeconds:   s.NewHistogram("relay_checkpoint_seconds"),
		checkpointFailures:  s.NewCounter("relay_checkpoint_failures_total"),
		storeRetries:        s.NewCounter("relay_ingest_store_retries_total"),
		notSequenced:        s.NewCounter("relay_events_not_sequenced_total"),
		replayReadErrors:    s.NewCounter("relay_consumer_replay_read_errors_total"),
		consumersRefused:    s.NewCounter("relay_consumers_refused_total"),
		identityBudgetWaits: s.NewCounter("relay_identity_budget_waits_total"),
	}
	for _, r := range knownDropReasons {
		m.Dropped(r)
	}
	for _, t := range []string{"#commit", "#sync", "#identity", "#account"} {
		m.EventsIn(t)
		m.EventsOut(t)
	}
	for _, r := range knownKickReasons {
		m.ConsumerClosed(r)
	}
	// Counters created where they are first counted, created here too so
	// that /metrics (and the Grafana board) show them at zero.
	for _, n := range []string{"relay_host_dial_failures_total", "relay_host_backpressure_closes_total", "relay_consumers_refused_total", "relay_consumers_connected_total"} {
		m.Counter(n)
	}
	return m
}

func (m *Metrics) labelled(cache *sync.Map, format, v string) *metrics.Counter {
	if c, ok := cache.Load(v); ok {
		return c.(*metrics.Counter)
	}
	c, _ := cache.LoadOrStore(v, m.set.GetOrCreateCounter(fmt.Sprintf(format, v)))
	return c.(*metrics.Counter)
}

// Dropped is relay_events_dropped_total{reason}.
func (m *Metrics) Dropped(reason string) *metrics.Counter {
	return m.labelled(&m.dropped, `relay_events_dropped_total{reason=%q}`, reason)
}

// EventsIn is relay_events_in_total{type}: events received from hosts.
func (m *Metrics) EventsIn(t string) *metrics.Counter {
	return m.labelled(&m.in, `relay_events_in_total{type=%q}`, t)
}

// EventsOut is relay_events_out_total{type}: events sequenced (durable).
func (m *Metrics) EventsOut(t string) *metrics.Counter {
	return m.labelled(&m.out, `relay_events_out_total{type=%q}`, t)
}

// ConsumerClosed is relay_consumers_closed_total{reason}.
func (m *Metrics) ConsumerClosed(reason string) *metrics.Counter {
	return m.labelled(&m.consumersKicked, `relay_consumers_closed_total{reason=%q}`, reason)
}

// Gauge registers a gauge computed at scrape time.
func (m *Metrics) Gauge(name string, f func() float64) { m.set.NewGauge(name, f) }

// Counter returns (creating once) a plain counter.
func (m *Metrics) Counter(name string) *metrics.Counter { return m.set.GetOrCreateCounter(name) }

// Histogram returns (creating once) a histogram.
func (m *Metrics) Histogram(name string) *metrics.Histogram {
	return m.set.GetOrCreateHistogram(name)
}

// WritePrometheus writes the relay's metrics, the process-wide ones of
// the default set (the event log's: takedowns, segments removed by
// reason, recovery) and the process metrics.
func (m *Metrics) WritePrometheus(w io.Writer) {
	m.set.WritePrometheus(w)
	metrics.WritePrometheus(w, true)
}
