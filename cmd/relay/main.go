// Command relay runs the AT Protocol relay.
//
//	relay serve [flags]
//	relay admin [flags] <command> [args]   (admin.go)
//
// Every flag has an environment variable (see README); a flag given on the
// command line wins over the environment.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/relay/relay/relay"
	"github.com/relay/relay/relay/httpapi"
)

// shutdownTimeout bounds a graceful shutdown after SIGTERM or SIGINT.
const shutdownTimeout = 30 * time.Second

// relayGCPercent is the GC target used when GOGC is not set.
const relayGCPercent = 50

func main() {
	if len(os.Args) >= 2 && os.Args[1] == "admin" {
		os.Exit(adminMain(os.Args[2:], os.Stdout, os.Stderr, os.Getenv)) // admin.go
	}
	if len(os.Args) < 2 || os.Args[1] != "serve" {
		fmt.Fprintln(os.Stderr, "usage: relay serve [flags]   (relay serve -h lists the flags and their variables)")
		fmt.Fprintln(os.Stderr, "       relay admin <command>  (relay admin -h lists the commands)")
		os.Exit(2)
	}
	cfg, level, err := serveConfig(os.Args[2:], os.Getenv)
	if err != nil {
		fmt.Fprintln(os.Stderr, "relay:", err)
		os.Exit(2)
	}
	logger := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	slog.SetDefault(logger)
	if err := run(cfg, logger); err != nil {
		logger.Error("relay failed", "err", err)
		os.Exit(1)
	}
}

func run(cfg relay.Config, logger *slog.Logger) error {
	startPprof(logger)
	if os.Getenv("GOGC") == "" {
		// The live heap is small (~15-20 MB at 2,000 ev/s) and most
		// allocation is short-lived validation garbage: collecting at 50%
		// growth instead of 100% keeps RSS ~10-15 MB lower for ~1% of a
		// core. GOGC and GOMEMLIMIT override it.
		debug.SetGCPercent(relayGCPercent)
	}
	r, err := relay.New(cfg, logger)
	if err != nil {
		return err
	}
	if err := r.Start(httpapi.Handlers(r)); err != nil {
		_ = r.Close(context.Background())
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	<-ctx.Done()
	logger.Info("shutting down")
	sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	if err := r.Close(sctx); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	logger.Info("stopped cleanly")
	return nil
}

// serveConfig is the configuration of `relay serve`: parsed, then
// validated, before anything starts.
func serveConfig(args []string, getenv func(string) string) (relay.Config, slog.Level, error) {
	cfg, level, err := parseConfig(args, getenv)
	if err != nil {
		return cfg, level, err
	}
	return cfg, level, cfg.Validate()
}

// parseConfig reads the environment, then flags over it.
func parseConfig(args []string, getenv func(string) string) (relay.Config, slog.Level, error) {
	cfg := relay.DefaultConfig()
	fs := flag.NewFlagSet("relay serve", flag.ContinueOnError)
	env := func(name string) string { return getenv(name) }
	var errs []error
	str := func(p *string, flagName, envName, usage string) {
		if v := env(envName); v != "" {
			*p = v
		}
		fs.StringVar(p, flagName, *p, usage+" ($"+envName+")")
	}
	boolean := func(p *bool, flagName, envName, usage string) {
		if v := env(envName); v != "" {
			b, err := strconv.ParseBool(v)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", envName, err))
			}
			*p = b
		}
		fs.BoolVar(p, flagName, *p, usage+" ($"+envName+")")
	}
	integer := func(p *int, flagName, envName, usage string) {
		if v := env(envName); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", envName, err))
			}
			*p = n
		}
		fs.IntVar(p, flagName, *p, usage+" ($"+envName+")")
	}
	port := func(p *string, flagName, envName, usage string) {
		if v := env(envName); v != "" {
			*p = listenAddr(v)
		}
		fs.Func(flagName, usage+" ($"+envName+")", func(v string) error { *p = listenAddr(v); return nil })
	}
	port(&cfg.Listen, "port", "RELAY_PORT", "firehose and HTTP API port or address")
	port(&cfg.MetricsListen, "metrics-port", "RELAY_METRICS_PORT", "metrics and health port or address")
	str(&cfg.DataDir, "data-dir", "RELAY_DATA_DIR", "event log and embedded store directory")
	str(&cfg.DatabaseURL, "database-url", "DATABASE_URL", "Postgres metadata store (empty: embedded Pebble)")
	str(&cfg.Upstream, "upstream", "RELAY_UPSTREAM", "seed relay whose listHosts is paged for new hosts; none disables")
	str(&cfg.SeedRelays, "seed-relays", "RELAY_SEED_RELAYS", "more comma-separated seed relays for host discovery")
	str(&cfg.SiblingRelays, "sibling-relays", "RELAY_SIBLING_RELAYS", "comma-separated relays that accepted requestCrawls are forwarded to")
	cursorAgeHours := int(cfg.MaxCursorAge / time.Hour)
	integer(&cursorAgeHours, "max-cursor-age-hours", "RELAY_MAX_CURSOR_AGE_HOURS", "a host cursor older than this is not replayed from: resume live and resync (0: no limit)")
	discoveryMinutes := int(cfg.DiscoveryInterval / time.Minute)
	integer(&discoveryMinutes, "discovery-interval-minutes", "RELAY_DISCOVERY_INTERVAL_MINUTES", "minutes between host discovery passes over the seed relays (0: only at start)")
	str(&cfg.PLCHost, "plc-host", "RELAY_PLC_HOST", "did:plc directory URL")
	str(&cfg.AdminPassword, "admin-password", "RELAY_ADMIN_PASSWORD", "admin API password (empty: admin disabled)")
	boolean(&cfg.AllowInsecureHosts, "allow-insecure-hosts", "RELAY_ALLOW_INSECURE_HOSTS", "allow localhost:PORT, ws:// and private addresses (development only)")
	retentionHours := int(cfg.Retention / time.Hour)
	integer(&retentionHours, "retention-hours", "RELAY_RETENTION_HOURS", "event log retention in hours")
	maxGB := int(cfg.MaxEventsBytes >> 30)
	integer(&maxGB, "max-events-gb", "RELAY_MAX_EVENTS_GB", "event log size cap in GiB")
	integer(&cfg.FrameWorkers, "frame-workers", "FRAME_WORKERS", "validation workers")
	boolean(&cfg.LenientSyncValidation, "lenient-sync-validation", "RELAY_LENIENT_SYNC_VALIDATION", "accept pre-sync-1.1 commits without prevData")
	integer(&cfg.EventLoops, "event-loops", "RELAY_EVENT_LOOPS", "gnet event loops")
	integer(&cfg.RingSize, "ring-size", "RELAY_RING_SIZE", "most recent frames kept in memory for fan-out")
	ringBytes := int(cfg.RingBytes)
	integer(&ringBytes, "ring-bytes", "RELAY_RING_BYTES", "bytes of recent frames kept in memory for fan-out (consumers behind read the event log)")
	maxLag := int(cfg.ConsumerMaxLag)
	integer(&maxLag, "consumer-max-lag", "RELAY_CONSUMER_MAX_LAG", "events a live consumer may lag before ConsumerTooSlow")
	integer(&cfg.MaxConsumers, "max-consumers", "RELAY_MAX_CONSUMERS", "firehose connections served at once (0: no limit)")
	integer(&cfg.ConsumerOutboundCap, "consumer-outbound-bytes", "RELAY_CONSUMER_OUTBOUND_BYTES", "bytes queued per consumer socket")
	integer(&cfg.NewHostsPerDay, "new-hosts-per-day", "RELAY_NEW_HOSTS_PER_DAY", "requestCrawl limit on new hosts per day")
	str(&cfg.TrustedDomains, "trusted-domains", "RELAY_TRUSTED_DOMAINS", "comma-separated host suffixes given the trusted limits tier; * trusts every host")
	boolean(&cfg.InversionEnforced, "enforce-inversion", "RELAY_ENFORCE_INVERSION", "drop commits whose MST inversion fails (false: count them only)")
	str(&cfg.CollectionsBackfillFrom, "collections-backfill-from", "RELAY_COLLECTIONS_BACKFILL_FROM", "source relay for the collection index backfill; none disables")
	str(&cfg.CollectionsBackfillCollections, "collections-backfill-collections", "RELAY_COLLECTIONS_BACKFILL_COLLECTIONS", "comma-separated collections to backfill at the first start")
	cacheMB := int(cfg.CacheBytes >> 20)
	integer(&cacheMB, "cache-mb", "RELAY_CACHE_MB", "MiB for the account and identity caches (about 400 bytes per account, 512 per identity)")
	storeCacheMB := int(cfg.StoreCacheBytes >> 20)
	integer(&storeCacheMB, "store-cache-mb", "RELAY_STORE_CACHE_MB", "MiB of Pebble block cache, half for the metadata store and half for the collection index")
	logLevel := "info"
	str(&logLevel, "log-level", "RELAY_LOG_LEVEL", "debug, info, warn or error")
	if err := fs.Parse(args); err != nil {
		return cfg, 0, err
	}
	if len(errs) > 0 {
		return cfg, 0, errors.Join(errs...)
	}
	cfg.Retention = time.Duration(retentionHours) * time.Hour
	cfg.MaxEventsBytes = int64(maxGB) << 30
	cfg.ConsumerMaxLag = int64(maxLag)
	cfg.DiscoveryInterval = time.Duration(discoveryMinutes) * time.Minute
	cfg.MaxCursorAge = time.Duration(cursorAgeHours) * time.Hour
	cfg.RingBytes = int64(ringBytes)
	cfg.CacheBytes = int64(cacheMB) << 20
	cfg.StoreCacheBytes = int64(storeCacheMB) << 20
	if strings.EqualFold(cfg.Upstream, "none") {
		cfg.Upstream = ""
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(logLevel)); err != nil {
		return cfg, 0, fmt.Errorf("log level: %w", err)
	}
	return cfg, level, nil
}

// listenAddr turns a bare port ("3000") into ":3000"; addresses pass through.
func listenAddr(v string) string {
	if _, err := strconv.Atoi(v); err == nil {
		return ":" + v
	}
	return v
}
