package relay

import (
	"fmt"
	"io"
	"sync"

	"github.com/VictoriaMetrics/metrics"
)

// Metrics are the relay's Prometheus metrics, all prefixed relay_. Each
// relay instance has its own set, so in-process tests see their own counts.
//
// One pattern for every package: a component's metrics are created once,
// at construction, into fields (*metrics.Counter, *metrics.Histogram) of
// the set it is given; an event or a request only increments a field.
// Families labelled by a closed set of values (drop reasons, event types,
// admin actions) are a counterVec, created for every known value up front
// and read without a lock. GetOrCreate is left for labels that are truly
// dynamic, such as a value outside the known set.
type Metrics struct {
	set *metrics.Set

	dropped             *counterVec // relay_events_dropped_total{reason}
	in                  *counterVec // relay_events_in_total{type}
	out                 *counterVec // relay_events_out_total{type}
	consumersKicked     *counterVec // relay_consumers_closed_total{reason}
	adminActions        *counterVec // relay_admin_actions_total{action}
	cursorResets        *counterVec // relay_host_cursor_resets_total{reason}
	discoveryRefused    *counterVec // relay_discovery_refused_total{reason}
	crawlForwards       *counterVec // relay_crawl_forwards_total{result}
	statusRechecks      *counterVec // relay_account_status_rechecks_total{result}
	discoveryAdded      *metrics.Counter
	identityBudgetWaits *metrics.Counter
	hostsRemoved        *counterVec // relay_hosts_removed_total{reason}

	fsyncSeconds    *metrics.Histogram
	sequenceSeconds *metrics.Histogram
	sequencerBatch  *metrics.Histogram
	validateSeconds *metrics.Histogram
	// durableSeconds: from an event's arrival off the host's socket to its
	// fsync and publication to consumers (the relay's end-to-end latency).
	durableSeconds  *metrics.Histogram
	sequencerFailed *metrics.Counter

	checkpointSeconds  *metrics.Histogram
	checkpointFailures *metrics.Counter
	storeRetries       *metrics.Counter
	notSequenced       *metrics.Counter
	replayReadErrors   *metrics.Counter
	consumersRefused   *metrics.Counter

	accountMigrations  *metrics.Counter
	inversionFailures  *metrics.Counter
	prevDataMismatch   *metrics.Counter
	hostDialFailures   *metrics.Counter
	backpressureCloses *metrics.Counter

	consumersConnected *metrics.Counter
	messagesIgnored    *metrics.Counter
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
	"rate_limited", "oversized_frame", "already_durable", "bad_did",
}

// Consumer close reasons for relay_consumers_closed_total.
var knownKickReasons = []string{"too_slow", "future_cursor", "closed", "protocol", "shutdown", "dead", "replay_error"}

// eventTypes are the event-stream message types the relay relays.
var eventTypes = []string{"#commit", "#sync", "#identity", "#account"}

// Admin actions for relay_admin_actions_total.
var knownAdminActions = []string{
	"block_host", "unblock_host", "change_limits", "takedown", "reverse_takedown",
	"add_domain_ban", "remove_domain_ban", "reset_cursor",
	"collections_resync", "collections_backfill_start", "collections_backfill_cancel",
}

// NewMetrics creates a relay's metric set.
func NewMetrics() *Metrics {
	s := metrics.NewSet()
	return &Metrics{
		set:                 s,
		dropped:             newCounterVec(s, `relay_events_dropped_total{reason=%q}`, knownDropReasons),
		in:                  newCounterVec(s, `relay_events_in_total{type=%q}`, eventTypes),
		out:                 newCounterVec(s, `relay_events_out_total{type=%q}`, eventTypes),
		consumersKicked:     newCounterVec(s, `relay_consumers_closed_total{reason=%q}`, knownKickReasons),
		adminActions:        newCounterVec(s, `relay_admin_actions_total{action=%q}`, knownAdminActions),
		cursorResets:        newCounterVec(s, `relay_host_cursor_resets_total{reason=%q}`, []string{"future_cursor", "outdated_cursor", "stale_cursor", "admin"}),
		discoveryRefused:    newCounterVec(s, `relay_discovery_refused_total{reason=%q}`, []string{"relay", "banned", "bad_hostname", "describe_server", "error"}),
		crawlForwards:       newCounterVec(s, `relay_crawl_forwards_total{result=%q}`, []string{"ok", "failed", "queue_full"}),
		statusRechecks:      newCounterVec(s, `relay_account_status_rechecks_total{result=%q}`, []string{"asked", "fixed", "confirmed", "failed"}),
		discoveryAdded:      s.NewCounter("relay_discovery_added_total"),
		identityBudgetWaits: s.NewCounter("relay_identity_budget_waits_total"),
		hostsRemoved:        newCounterVec(s, `relay_hosts_removed_total{reason=%q}`, []string{"relay"}),

		fsyncSeconds:    s.NewHistogram("relay_eventlog_fsync_seconds"),
		sequenceSeconds: s.NewHistogram("relay_sequencer_batch_seconds"),
		sequencerBatch:  s.NewHistogram("relay_sequencer_batch_events"),
		validateSeconds: s.NewHistogram("relay_validate_seconds"),
		durableSeconds:  s.NewHistogram("relay_event_durable_seconds"),
		sequencerFailed: s.NewCounter("relay_sequencer_failed"),

		checkpointSeconds:  s.NewHistogram("relay_checkpoint_seconds"),
		checkpointFailures: s.NewCounter("relay_checkpoint_failures_total"),
		storeRetries:       s.NewCounter("relay_ingest_store_retries_total"),
		notSequenced:       s.NewCounter("relay_events_not_sequenced_total"),
		replayReadErrors:   s.NewCounter("relay_consumer_replay_read_errors_total"),
		consumersRefused:   s.NewCounter("relay_consumers_refused_total"),

		accountMigrations:  s.NewCounter("relay_account_migrations_total"),
		inversionFailures:  s.NewCounter("relay_inversion_failures_total"),
		prevDataMismatch:   s.NewCounter("relay_prevdata_mismatch_total"),
		hostDialFailures:   s.NewCounter("relay_host_dial_failures_total"),
		backpressureCloses: s.NewCounter("relay_host_backpressure_closes_total"),

		consumersConnected: s.NewCounter("relay_consumers_connected_total"),
		messagesIgnored:    s.NewCounter("relay_consumer_messages_ignored_total"),
		framesDelivered:    s.NewCounter("relay_consumer_frames_sent_total"),
		bytesDelivered:     s.NewCounter("relay_consumer_bytes_sent_total"),
		replayBytes:        s.NewCounter("relay_consumer_replay_bytes_total"),
	}
}

// counterVec is a counter family with one label. The known values are
// created at construction (so /metrics shows them at zero) in a map that is
// never written again, so a lookup takes no lock; a value outside them is
// dynamic and created on first use.
type counterVec struct {
	set    *metrics.Set
	format string
	known  map[string]*metrics.Counter
	extra  sync.Map // string -> *metrics.Counter
}

func newCounterVec(s *metrics.Set, format string, values []string) *counterVec {
	v := &counterVec{set: s, format: format, known: make(map[string]*metrics.Counter, len(values))}
	for _, val := range values {
		v.known[val] = s.NewCounter(fmt.Sprintf(format, val))
	}
	return v
}

// with returns the counter of one label value.
func (v *counterVec) with(val string) *metrics.Counter {
	if c, ok := v.known[val]; ok {
		return c
	}
	if c, ok := v.extra.Load(val); ok {
		return c.(*metrics.Counter)
	}
	c, _ := v.extra.LoadOrStore(val, v.set.GetOrCreateCounter(fmt.Sprintf(v.format, val)))
	return c.(*metrics.Counter)
}

// each calls f for every label value counted so far.
func (v *counterVec) each(f func(val string, c *metrics.Counter)) {
	for val, c := range v.known {
		f(val, c)
	}
	v.extra.Range(func(k, c any) bool {
		f(k.(string), c.(*metrics.Counter))
		return true
	})
}

// sum is the total over every label value.
func (v *counterVec) sum() uint64 {
	var n uint64
	v.each(func(_ string, c *metrics.Counter) { n += c.Get() })
	return n
}

// Dropped is relay_events_dropped_total{reason}.
func (m *Metrics) Dropped(reason string) *metrics.Counter { return m.dropped.with(reason) }

// EventsIn is relay_events_in_total{type}: events received from hosts.
func (m *Metrics) EventsIn(t string) *metrics.Counter { return m.in.with(t) }

// EventsOut is relay_events_out_total{type}: events sequenced (durable).
func (m *Metrics) EventsOut(t string) *metrics.Counter { return m.out.with(t) }

// ConsumerClosed is relay_consumers_closed_total{reason}.
func (m *Metrics) ConsumerClosed(reason string) *metrics.Counter {
	return m.consumersKicked.with(reason)
}

// AdminAction counts one admin action (relay_admin_actions_total{action}).
func (m *Metrics) AdminAction(action string) { m.adminActions.with(action).Inc() }

// Gauge registers a gauge computed at scrape time.
func (m *Metrics) Gauge(name string, f func() float64) { m.set.NewGauge(name, f) }

// Set is the metric set, for the components that register their own
// metrics in it (event log, collection index).
func (m *Metrics) Set() *metrics.Set { return m.set }

// WritePrometheus writes the relay's metrics (its own, and those of the
// event log and the collection index, registered in the same set) and the
// process metrics.
func (m *Metrics) WritePrometheus(w io.Writer) {
	m.set.WritePrometheus(w)
	metrics.WriteProcessMetrics(w)
}
