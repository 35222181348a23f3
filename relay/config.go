// Package relay is the domain of the AT Protocol relay: ingest from PDS hosts,
// validation, sequencing, durable broadcast to firehose consumers, hosts and
// accounts, and the exported surface (surface.go) that the HTTP package,
// relay/httpapi, serves. It builds on loop (sockets), wsframe (frames) and
// persist (storage).
package relay

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"runtime"
	"strconv"
	"strings"
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
	// TrustedDomains (RELAY_TRUSTED_DOMAINS, comma-separated host suffixes;
	// "*" for every host) get the trusted tier: high event rate limits and
	// no account limit.
	TrustedDomains string
	// SeedRelays (RELAY_SEED_RELAYS, comma-separated) are paged for hosts
	// along with Upstream, every DiscoveryInterval.
	SeedRelays string
	// DiscoveryInterval is the time between discovery passes (0: one pass
	// at start).
	DiscoveryInterval time.Duration
	// SiblingRelays (RELAY_SIBLING_RELAYS, comma-separated) get a copy of
	// every requestCrawl this relay accepts (not of forwarded ones).
	SiblingRelays string
	// MaxCursorAge (RELAY_MAX_CURSOR_AGE_HOURS): a host's cursor older than
	// this (the host was offline, or the relay down, that long) is not
	// replayed from: the host resumes live and its accounts are resynced.
	// 0 disables.
	MaxCursorAge time.Duration
	// SegmentEvents is the number of events per event log segment (0: the
	// event log's default). Small values make retention finer-grained.
	SegmentEvents int
	// CacheBytes bounds the validation workers' account and identity
	// caches (half each), by the measured bytes per entry (0: default).
	CacheBytes int64
	// StoreCacheBytes is the block cache of the embedded Pebble stores
	// (RELAY_STORE_CACHE_MB): half for the metadata store, half for the
	// collection index. Pebble allocates it outside the Go heap, and each
	// store also keeps up to 8 MiB of write buffers (0: default).
	StoreCacheBytes int64
	// InversionEnforced drops commits whose MST inversion fails (else counted only).
	InversionEnforced bool
	// CollectionsBackfillFrom is the source relay of the collection index's
	// backfill (RELAY_COLLECTIONS_BACKFILL_FROM); "" or "none": none.
	CollectionsBackfillFrom string
	// CollectionsBackfillCollections (comma-separated NSIDs) starts a
	// backfill from CollectionsBackfillFrom at the first start.
	CollectionsBackfillCollections string
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
	DefaultMaxCursorAge        = 24 * time.Hour
	DefaultCacheBytes          = 256 << 20 // ~335,000 accounts and ~262,000 identities
	DefaultStoreCacheBytes     = 32 << 20  // Pebble block caches, 16 MiB per store
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
		DiscoveryInterval:   DefaultDiscoveryInterval,
		MaxCursorAge:        DefaultMaxCursorAge,
		CacheBytes:          DefaultCacheBytes,
		StoreCacheBytes:     DefaultStoreCacheBytes,
	}
}

// ErrBadConfig wraps every error of Config.Validate.
var ErrBadConfig = errors.New("relay: invalid configuration")

// Validate checks the configuration before anything starts and reports
// every problem at once, each naming its setting. It refuses values the
// relay would run with but not work: a consumer outbound cap or maximum
// lag of 0 (nothing is ever written to a consumer, or every consumer is
// kicked at its first event of lag), negative sizes, counts and
// durations, and listen addresses that are not host:port.
func (c Config) Validate() error {
	var errs []error
	bad := func(setting, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: %s: %s", ErrBadConfig, setting, fmt.Sprintf(format, args...)))
	}
	checkAddr := func(setting, addr string) {
		_, port, err := net.SplitHostPort(addr)
		if err != nil {
			bad(setting, "%q is not a port or host:port (%v)", addr, err)
			return
		}
		if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
			bad(setting, "port %q is not a number from 0 to 65535", port)
		}
	}
	checkAddr("RELAY_PORT (-port)", c.Listen)
	if c.MetricsListen != "" {
		checkAddr("RELAY_METRICS_PORT (-metrics-port)", c.MetricsListen)
		if c.MetricsListen == c.Listen && !strings.HasSuffix(c.Listen, ":0") {
			bad("RELAY_METRICS_PORT (-metrics-port)", "%q is also the API address (RELAY_PORT)", c.MetricsListen)
		}
	}
	if c.DataDir == "" {
		bad("RELAY_DATA_DIR (-data-dir)", "must not be empty")
	}
	if u, err := url.Parse(c.PLCHost); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		bad("RELAY_PLC_HOST (-plc-host)", "%q is not an http(s) URL", c.PLCHost)
	}
	if c.Retention < 0 {
		bad("RELAY_RETENTION_HOURS (-retention-hours)", "must be >= 0 (0 keeps everything), got %s", c.Retention)
	}
	if c.MaxEventsBytes < 0 {
		bad("RELAY_MAX_EVENTS_GB (-max-events-gb)", "must be >= 0 (0: no cap), got %d bytes", c.MaxEventsBytes)
	}
	if c.FrameWorkers < 1 {
		bad("FRAME_WORKERS (-frame-workers)", "must be at least 1, got %d", c.FrameWorkers)
	}
	if c.EventLoops < 1 {
		bad("RELAY_EVENT_LOOPS (-event-loops)", "must be at least 1, got %d", c.EventLoops)
	}
	if c.RingSize < 1 {
		bad("RELAY_RING_SIZE (-ring-size)", "must be at least 1, got %d", c.RingSize)
	}
	if c.ConsumerMaxLag <= 0 {
		bad("RELAY_CONSUMER_MAX_LAG (-consumer-max-lag)", "must be > 0 (0 kicks every consumer at its first event of lag), got %d", c.ConsumerMaxLag)
	}
	if c.ConsumerOutboundCap <= 0 {
		bad("RELAY_CONSUMER_OUTBOUND_BYTES (-consumer-outbound-bytes)", "must be > 0 (0 never writes to a consumer), got %d", c.ConsumerOutboundCap)
	}
	if c.MaxConsumers < 0 {
		bad("RELAY_MAX_CONSUMERS (-max-consumers)", "must be >= 0 (0: no limit), got %d", c.MaxConsumers)
	}
	if c.FsyncInterval < 0 {
		bad("FsyncInterval", "must be >= 0, got %s", c.FsyncInterval)
	}
	if c.IngestStallTimeout <= 0 {
		bad("IngestStallTimeout", "must be > 0, got %s", c.IngestStallTimeout)
	}
	if c.NewHostsPerDay < 0 {
		bad("RELAY_NEW_HOSTS_PER_DAY (-new-hosts-per-day)", "must be >= 0 (0: no limit), got %d", c.NewHostsPerDay)
	}
	if c.DefaultAccountLimit < 0 {
		bad("DefaultAccountLimit", "must be >= 0 (0: no limit), got %d", c.DefaultAccountLimit)
	}
	if c.SegmentEvents < 0 {
		bad("SegmentEvents", "must be >= 0 (0: the event log's default), got %d", c.SegmentEvents)
	}
	return errors.Join(errs...)
}
