package relay

import (
	"github.com/bluesky-social/indigo/atproto/syntax"

	"cmp"
	"context"
	"errors"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/relay/relay/persist/collection"
	"github.com/relay/relay/persist/meta"
)

// The exported surface the HTTP package (relay/httpapi) is built on: read
// models and actions of the domain, each safe from any goroutine. The
// admin actions are in admin.go, the dashboard's view in
// dashboard_source.go.

// Config is the relay's configuration.
func (r *Relay) Config() Config { return r.cfg }

// Logger is the relay's logger.
func (r *Relay) Logger() *slog.Logger { return r.logger }

// Go runs f in the background until Close, which closes stop and waits
// for f to return (the dashboard's sampler).
func (r *Relay) Go(f func(stop <-chan struct{})) {
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		f(r.stop)
	}()
}

// Subscribe upgrades a subscribeRepos request and hands the connection to
// the event loops, replaying from cursor (-1: live). Past MaxConsumers it
// returns ErrTooManyConsumers (counted) without answering.
func (r *Relay) Subscribe(w http.ResponseWriter, req *http.Request, cursor int64) error {
	err := r.bc.Subscribe(w, req, cursor, r.cfg.MaxConsumers)
	if errors.Is(err, ErrTooManyConsumers) {
		r.metrics.consumersRefused.Inc()
	}
	return err
}

// RequestCrawl adds a host (requestCrawl): see HostManager.AddHost.
//
// forwarded says the request came from a sibling relay: it is not
// forwarded again (the loop guard); any other accepted request is passed
// on to RELAY_SIBLING_RELAYS.
func (r *Relay) RequestCrawl(ctx context.Context, hostname string, admin, forwarded bool) error {
	rec, err := r.hosts.AddHost(ctx, hostname, admin)
	if err == nil && !forwarded {
		r.hosts.fwd.forward(rec.Hostname)
	}
	return err
}

// Account is the account of did as a consumer may already know it (the
// store through the derived-state overlay); meta.ErrNotFound if unknown.
func (r *Relay) Account(ctx context.Context, did string) (*meta.Account, error) {
	a, err := r.store.GetAccountByDID(ctx, syntax.DID(did))
	if err != nil {
		return nil, err
	}
	r.derived.overlayAccount(a)
	return a, nil
}

// ListAccounts pages accounts by UID, through the derived-state overlay.
func (r *Relay) ListAccounts(ctx context.Context, afterUID uint64, limit int) ([]*meta.Account, error) {
	accts, err := r.store.ListAccounts(ctx, afterUID, limit)
	if err != nil {
		return nil, err
	}
	for _, a := range accts {
		r.derived.overlayAccount(a)
	}
	return accts, nil
}

// RepoHead is the account's durable repo head (through the overlay: what
// a consumer may already have received), or nil when none is known.
func (r *Relay) RepoHead(ctx context.Context, uid uint64) (*meta.RepoState, error) {
	if rs, ok := r.derived.repo(uid); ok {
		return &rs, nil
	}
	rs, err := r.store.GetRepoState(ctx, uid)
	if errors.Is(err, meta.ErrNotFound) {
		return nil, nil
	}
	return rs, err
}

// ListHosts pages the stored hosts by ID.
func (r *Relay) ListHosts(ctx context.Context, afterID uint64, limit int) ([]*meta.Host, error) {
	return r.store.ListHosts(ctx, afterID, limit)
}

// HostByName is the stored host a hostname parameter names, and the
// hostname it is stored under: ErrBadHostname for malformed input,
// meta.ErrNotFound for an unknown host.
func (r *Relay) HostByName(ctx context.Context, raw string) (*meta.Host, string, error) {
	host, err := r.hostKey(raw)
	if err != nil {
		return nil, "", err
	}
	rec, err := r.store.GetHostByName(ctx, host)
	return rec, host, err
}

// LiveHostStatus is a host's cursor and status: the live ones when the
// host is tracked (the stored cursor lags by up to a checkpoint), else
// the stored record's.
func (r *Relay) LiveHostStatus(rec *meta.Host) (cursor int64, status meta.HostStatus) {
	if h := r.hosts.byID(rec.ID); h != nil {
		info := h.info()
		return info.Cursor, info.Status
	}
	return rec.Cursor, rec.Status
}

// AccountHost is the hostname (and whether it is plain http) of the
// account's current PDS.
func (r *Relay) AccountHost(ctx context.Context, a *meta.Account) (hostname string, noSSL bool, err error) {
	if h := r.hosts.byID(a.HostID); h != nil {
		return h.name, h.noSSL, nil
	}
	rec, err := r.store.GetHost(ctx, a.HostID)
	if err != nil {
		return "", false, err
	}
	return rec.Hostname, rec.NoSSL, nil
}

// AdminHost is one host in GET /admin/hosts.
type AdminHost struct {
	ID           uint64           `json:"id"`
	Hostname     string           `json:"hostname"`
	Status       string           `json:"status"`
	NoSSL        bool             `json:"noSSL"`
	Trusted      bool             `json:"trusted"`
	Cursor       int64            `json:"cursor"`
	Failures     int              `json:"failures"`
	AccountCount int64            `json:"accountCount"`
	AccountLimit int64            `json:"accountLimit"`
	Connected    bool             `json:"connected"`
	Inflight     int              `json:"inflight"`
	Received     int64            `json:"received"`
	Drops        map[string]int64 `json:"drops"`
	CreatedAt    time.Time        `json:"createdAt"`
	// Limits are the event rate limits in force, Rate the current events/s,
	// ThrottledSeconds the time spent held at a limit; StrictSync says the
	// host is held to sync 1.1.
	Limits           HostLimits `json:"limits"`
	Rate             float64    `json:"rate"`
	ThrottledSeconds float64    `json:"throttledSeconds"`
	StrictSync       bool       `json:"strictSync"`
}

// AdminHosts lists every tracked host with its live state, by ID.
func (r *Relay) AdminHosts() []AdminHost {
	infos := r.hosts.Hosts()
	slices.SortFunc(infos, func(x, y HostInfo) int { return cmp.Compare(x.ID, y.ID) })
	out := make([]AdminHost, len(infos))
	for i, h := range infos {
		out[i] = AdminHost{
			ID: h.ID, Hostname: h.Hostname, Status: string(h.Status), NoSSL: h.NoSSL, Trusted: h.Trusted,
			Cursor: h.Cursor, Failures: h.Failures, AccountCount: h.AccountCount, AccountLimit: h.AccountLimit,
			Connected: h.Connected, Inflight: h.Inflight, Received: h.Received, Drops: h.Drops, CreatedAt: h.CreatedAt,
			Limits: h.Limits, Rate: h.Rate, ThrottledSeconds: h.ThrottledSeconds, StrictSync: h.StrictSync,
		}
	}
	return out
}

// DomainBans lists the banned domains.
func (r *Relay) DomainBans(ctx context.Context) ([]string, error) { return r.store.ListDomainBans(ctx) }

// Consumers lists the connected firehose consumers.
func (r *Relay) Consumers() []ConsumerInfo { return r.bc.Consumers() }

// DurableSeq is the last seq of the event log that is durable.
func (r *Relay) DurableSeq() int64 { return r.log.DurableSeq() }

// CollectionIndex is the collection index (nil when it is not open).
func (r *Relay) CollectionIndex() *collection.Index {
	if r.coll == nil {
		return nil
	}
	return r.coll.ix
}

// hostKey turns a hostname parameter into the form hosts are stored
// under; malformed input is ErrBadHostname.
func (r *Relay) hostKey(raw string) (string, error) {
	host, _, err := normalizeHostname(raw, r.cfg.AllowInsecureHosts)
	if err != nil {
		// A host stored under a policy that has since changed (insecure
		// hosts no longer allowed) can still be looked up and managed.
		s := strings.ToLower(strings.TrimSpace(raw))
		if s != "" && r.hosts.byHostname(s) != nil {
			return s, nil
		}
		return "", err
	}
	return host, nil
}

// Stats is the /_stats document.
type Stats struct {
	UptimeSeconds   float64 `json:"uptimeSeconds"`
	HeadSeq         int64   `json:"headSeq"`
	OldestSeq       int64   `json:"oldestSeq"`
	RingEvents      int64   `json:"ringEvents"`
	RingBytes       int64   `json:"ringBytes"`
	EventLogBytes   int64   `json:"eventLogBytes"`
	EventLogSegs    int     `json:"eventLogSegments"`
	SequencerQueue  int     `json:"sequencerQueue"`
	Consumers       int     `json:"consumers"`
	FramesDelivered uint64  `json:"framesDelivered"`
	Ingest          any     `json:"ingest,omitempty"`
	Collections     any     `json:"collections,omitempty"`
}

// Stats is a snapshot of the relay's counters.
func (r *Relay) Stats() Stats {
	ls := r.log.Stats()
	s := Stats{
		UptimeSeconds:   time.Since(r.started).Seconds(),
		HeadSeq:         r.ring.Head(),
		OldestSeq:       ls.OldestSeq,
		RingEvents:      r.ring.Len(),
		RingBytes:       r.ring.Bytes(),
		EventLogBytes:   ls.Bytes,
		EventLogSegs:    ls.Segments,
		SequencerQueue:  r.seq.QueueLen(),
		Consumers:       r.bc.Count(),
		FramesDelivered: r.metrics.framesDelivered.Get(),
		Ingest: map[string]any{
			"workerQueue":    r.ing.QueueLen(),
			"hostsConnected": r.hosts.connectedCount(),
			"hostsKnown":     r.hosts.hostCount(),
		},
	}
	if r.coll != nil {
		s.Collections = r.coll.svc.Stats()
	}
	return s
}

// Health reports why the relay is not ready, or "" when it is: the
// sequencer must be running, the store reachable, and ingest not stalled
// while hosts are connected (coverage is not health).
func (r *Relay) Health(ctx context.Context) string {
	if err := r.seq.Err(); err != nil {
		return "event log failed: " + err.Error()
	}
	if err := r.store.Ping(ctx); err != nil {
		return "metadata store unreachable: " + err.Error()
	}
	if r.hosts.connectedCount() > 0 {
		last := r.ing.lastIngest.Load()
		if last == 0 {
			last = r.started.UnixNano()
		}
		if idle := time.Since(time.Unix(0, last)); idle > r.cfg.IngestStallTimeout {
			return "ingest stalled: hosts connected but nothing ingested for " + idle.Round(time.Second).String()
		}
	}
	return ""
}

// AccountStatus is the status the relay reports for an account: the local
// status when the relay restricted the account, else the upstream one.
// It is the status of the #account frames the relay emits.
func AccountStatus(a *meta.Account) meta.AccountStatus {
	switch a.Status {
	case "", meta.AccountActive:
		if a.UpstreamStatus == "" {
			return meta.AccountActive
		}
		return a.UpstreamStatus
	}
	return a.Status
}

// StatusField is the lexicons' optional account status: absent for an
// active account.
func StatusField(a *meta.Account) *string {
	if a.IsActive() {
		return nil
	}
	s := string(AccountStatus(a))
	return &s
}
