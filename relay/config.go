// Package relay is the domain of the AT Protocol relay: ingest from PDS hosts,
// validation, sequencing, durable broadcast to firehose consumers, and the
// HTTP API. It builds on loop (sockets), wsframe (frames) and persist (storage).
package relay

import (
	"runtime"
	"time"
)

// Config is the whole configuration of a relay. Every field has an
// environment variable and a flag of `relay serve` (see cmd/relay).
type Config struct {
	// Listen is the address of the firehose and HTTP API (RELAY_PORT).
	Listen string
	// MetricsListen is the address of /metrics and the health probes
	// (RELAY_METRICS_PORT). Empty disables the metrics listener.
	MetricsListen string
	// DataDir holds the event log and the embedded store (RELAY_DATA_DIR).
	DataDir string
	// DatabaseURL selects the Postgres metadata store; empty = embedded Pebble.
	DatabaseURL string
	// Upstream is the seed relay for listHosts bootstrap; "none" or "" disables.
	Upstream string
	// PLCHost is the did:plc directory URL.
	PLCHost string
	// AdminPassword enables the admin API; empty = admin disabled (403).
	AdminPassword string
	// AllowInsecureHosts allows localhost:PORT, ws:// and http:// hosts and
	// private addresses (development and tests only).
	AllowInsecureHosts bool
	// Retention is how long events stay in the log (RELAY_RETENTION_HOURS).
	Retention time.Duration
	// MaxEventsBytes caps the event log's total size (RELAY_MAX_EVENTS_GB).
	MaxEventsBytes int64
	// FrameWorkers is the number of validation workers (FRAME_WORKERS).
	FrameWorkers int
	// LenientSyncValidation accepts pre-sync-1.1 commits (no prevData).
	LenientSyncValidation bool

	// EventLoops is the number of gnet event loops (default GOMAXPROCS).
	EventLoops int
	// RingSize is the most recent frames kept in memory for fan-out.
	RingSize int
	// RingBytes bounds the frame bytes the ring holds (0: DefaultRingBytes).
	// The ring only serves the live tip: consumers behind it read the event
	// log, whose recent segments are in the page cache.
	RingBytes int64
	// ConsumerMaxLag is how many events a live consumer may fall behind the
	// head before it is sent ConsumerTooSlow and closed.
	ConsumerMaxLag int64
	// MaxConsumers bounds firehose connections; past it subscribeRepos
	// answers 503 TooManyConsumers before the upgrade. 0 = no limit.
	MaxConsumers int
	// ConsumerOutboundCap bounds the bytes queued on one consumer socket.
	ConsumerOutboundCap int
	// FsyncInterval is the longest the sequencer waits to group events into
	// one fsync; 0 means sync as soon as the previous sync finished.
	FsyncInterval time.Duration
	// IngestStallTimeout: readiness fails when hosts are connected but
	// nothing was ingested for this long.
	IngestStallTimeout time.Duration
	// NewHostsPerDay limits requestCrawl additions of unknown hosts (admin exempt).
	NewHostsPerDay int
	// DefaultAccountLimit is a new host's account limit.
	DefaultAccountLimit int64
	// SegmentEvents is the number of events per event log segment (0: the
	// event log's default). Small values make retention finer-grained.
	SegmentEvents int
	// CacheBytes bounds the validation workers' account and identity
	// caches (half each), by the measured bytes per entry (0: default).
	CacheBytes int64
	// InversionEnforced drops commits whose MST inversion fails (else counted only).
	InversionEnforced bool
}

// Defaults for Config. Each is the documented default of its variable.
const (
	DefaultListen              = ":3000"
	DefaultMetricsListen       = ":3001"
	DefaultDataDir             = "data"
	DefaultUpstream            = "bsky.network"
	DefaultPLCHost             = "https://plc.directory"
	DefaultRetention           = 72 * time.Hour
	DefaultMaxEventsBytes      = 100 << 30
	DefaultRingSize            = 1 << 15  // 32,768 slots at most (8 bytes each): the byte bound is the one that binds
	DefaultRingBytes           = 64 << 20 // at most 64 MiB of frames (~24,000 of ~2.7 KB), held only while a consumer needs them
	DefaultConsumerMaxLag      = 1 << 20  // about 30 minutes at 600 ev/s
	DefaultConsumerOutboundCap = 4 << 20  // 4 MiB queued per consumer socket
	DefaultMaxConsumers        = 20_000   // ~1-2 KiB heap each when idle, up to the outbound cap while lagging
	DefaultFsyncInterval       = 0
	DefaultIngestStallTimeout  = 5 * time.Minute
	DefaultNewHostsPerDay      = 50
	DefaultAccountLimit        = 100
	DefaultCacheBytes          = 256 << 20 // ~335,000 accounts and ~262,000 identities
)

// DefaultConfig returns the configuration used when nothing is set.
func DefaultConfig() Config {
	return Config{
		Listen:              DefaultListen,
		MetricsListen:       DefaultMetricsListen,
		DataDir:             DefaultDataDir,
		Upstream:            DefaultUpstream,
		PLCHost:             DefaultPLCHost,
		Retention:           DefaultRetention,
		MaxEventsBytes:      DefaultMaxEventsBytes,
		FrameWorkers:        runtime.GOMAXPROCS(0),
		EventLoops:          runtime.GOMAXPROCS(0),
		RingSize:            DefaultRingSize,
		RingBytes:           DefaultRingBytes,
		ConsumerMaxLag:      DefaultConsumerMaxLag,
		ConsumerOutboundCap: DefaultConsumerOutboundCap,
		MaxConsumers:        DefaultMaxConsumers,
		FsyncInterval:       DefaultFsyncInterval,
		IngestStallTimeout:  DefaultIngestStallTimeout,
		NewHostsPerDay:      DefaultNewHostsPerDay,
		DefaultAccountLimit: DefaultAccountLimit,
		InversionEnforced:   true,
		CacheBytes:          DefaultCacheBytes,
	}
}
