package relay

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/relay/relay/loop"
	"github.com/relay/relay/persist/meta"
)

// Host connection policy.
const (
	// maxHostFailures consecutive failed dials mark a host offline.
	maxHostFailures = 15
	// reconnectBase and reconnectMax bound the exponential backoff.
	reconnectBase = time.Second
	reconnectMax  = 5 * time.Minute
	// idleRetry is how long a host that answered FutureCursor waits.
	idleRetry = 10 * time.Minute
	// hostWriteTimeout bounds one store write of a host record.
	hostWriteTimeout = 5 * time.Second
	// dialTimeout bounds the TCP, TLS and WebSocket handshakes.
	dialTimeout = 30 * time.Second
	// resumeInterval is how often paused hosts are checked for room.
	resumeInterval = 10 * time.Millisecond
	// maxPausedHosts bounds hosts paused at once. Past it a host that must
	// pause is disconnected and resumed later from its cursor. The bytes
	// paused hosts keep receiving are bounded apart, by the loop engine's
	// MaxPausedBuffered (64 MiB for all of them together).
	maxPausedHosts = 64
	// startConnectsPerSecond staggers connections at start and bootstrap.
	startConnectsPerSecond = 200
	// relayLoopGuard is the Server header value of a relay: crawling one
	// would loop events back.
	relayLoopGuard = "atproto-relay"
	// userAgent identifies the relay to hosts.
	userAgent = "atproto-relay-go"
)

// Host errors.
var (
	ErrHostBlocked     = errors.New("relay: host is blocked")
	ErrHostIsRelay     = errors.New("relay: host is a relay (Server: atproto-relay)")
	ErrUpstreamFuture  = errors.New("relay: host says our cursor is in its future")
	ErrUpstreamError   = errors.New("relay: host sent an error frame")
	ErrHostUnavailable = errors.New("relay: host is not reachable")
	// ErrNotSequenced closes a host whose accepted event could not be made
	// durable: it resumes from its cursor.
	ErrNotSequenced = errors.New("relay: an accepted event of the host was not sequenced")
)

// hostConn is one PDS host: its record, its connection and its progress.
type hostConn struct {
	m     *HostManager
	id    uint64
	name  string
	noSSL bool

	mu        sync.Mutex // guards rec and drops
	writeMu   sync.Mutex // serializes store writes of rec (writeHost)
	rec       meta.Host
	drops     map[string]int64
	timer     *time.Timer
	dialing   bool
	connected atomic.Bool
	ready     atomic.Bool // headers checked; messages may be processed
	paused    atomic.Bool
	// subscribed: a connection to this host was established since the
	// relay started, so a redial resumes from a cursor even if it is 0.
	subscribed atomic.Bool
	conn       atomic.Pointer[loop.Conn]
	held       *ingestItem // (loop) decoded event a pause left unconsumed
	received   atomic.Int64
	lastEvent  atomic.Int64 // unix nanos of the last message
	lastErr    atomic.Pointer[hostError]

	tracker seqTracker
	rate    *hostRate                    // event rate limits (ratelimit.go)
	ident   atomic.Pointer[rate.Limiter] // identity lookup budget (ratelimit.go)
	// statusChecks is the host's account status re-check budget.
	statusChecks *rate.Limiter
	// syncV11: the host sent a valid sync-1.1 commit (with prevData and a
	// passing inversion), so it is validated strictly from then on.
	syncV11 atomic.Bool
	// resyncing: a resync pass over the host's accounts is running.
	resyncing atomic.Bool
}

func (h *hostConn) status() meta.HostStatus {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.rec.Status
}

func (h *hostConn) countDrop(reason string) {
	h.mu.Lock()
	h.drops[reason]++
	h.mu.Unlock()
}

func (h *hostConn) done(seq int64) { h.tracker.done(seq) }

// abandon handles an accepted event that will never be durable (the
// sequencer failed or closed): the tracker rewinds to the host's cursor
// and the connection is closed, so the host resends from there instead
// of its cursor waiting for the event forever.
func (h *hostConn) abandon(cause error) {
	h.tracker.rewind()
	if c := h.conn.Load(); c != nil {
		_ = c.Execute(func(c *loop.Conn) { c.Close(fmt.Errorf("%w: %w", ErrNotSequenced, cause)) })
	}
}

// reserveAccount counts a new account and reports whether it is past the
// host's account limit (so created throttled), in one step.
func (h *hostConn) reserveAccount() (throttled bool) {
	trusted := h.trusted()
	h.mu.Lock()
	defer h.mu.Unlock()
	throttled = !trusted && h.rec.AccountLimit > 0 && h.rec.AccountCount >= h.rec.AccountLimit
	h.rec.AccountCount++
	return throttled
}

// identityAllowed takes one identity lookup from the host's budget.
func (h *hostConn) identityAllowed() bool {
	b := h.ident.Load()
	return b == nil || b.Allow()
}

// trusted reports whether the host has the trusted tier: marked by an
// admin, or in RELAY_TRUSTED_DOMAINS.
func (h *hostConn) trusted() bool {
	h.mu.Lock()
	t := h.rec.Trusted
	h.mu.Unlock()
	return t || h.m.policy.trusted.trusts(h.name)
}

// limits are the host's event rate limits as its record says now.
func (h *hostConn) limits() HostLimits {
	trusted := h.trusted()
	h.mu.Lock()
	defer h.mu.Unlock()
	return limitsFor(h.rec.AccountLimit, trusted)
}

func (h *hostConn) accountCreated() {
	h.mu.Lock()
	h.rec.AccountCount++
	h.mu.Unlock()
}

// accountRemoved takes back one account count (an account that moved to
// another host, or a reservation whose account was not created).
func (h *hostConn) accountRemoved() {
	h.mu.Lock()
	if h.rec.AccountCount > 0 {
		h.rec.AccountCount--
	}
	h.mu.Unlock()
}

// HostInfo is a host as the API reports it.
type HostInfo struct {
	meta.Host
	Connected bool             `json:"connected"`
	Inflight  int              `json:"inflight"`
	Received  int64            `json:"received"`
	Drops     map[string]int64 `json:"drops,omitempty"`
	// Limits are the host's event rate limits, Rate its events/s over the
	// last 10 s, ThrottledSeconds the time it was held at a limit.
	Limits           HostLimits `json:"limits"`
	Rate             float64    `json:"rate"`
	ThrottledSeconds float64    `json:"throttledSeconds"`
	TrustedTier      bool       `json:"trustedTier"`
	// StrictSync: the host is held to sync 1.1 (it sent a valid sync-1.1
	// commit); until then its commits are validated leniently.
	StrictSync bool `json:"strictSync"`
}

func (h *hostConn) info() HostInfo {
	h.mu.Lock()
	defer h.mu.Unlock()
	rec := h.rec
	rec.Cursor = h.tracker.cursor()
	drops := make(map[string]int64, len(h.drops))
	for k, v := range h.drops {
		drops[k] = v
	}
	return HostInfo{
		Host: rec, Connected: h.connected.Load(), Inflight: h.tracker.inflight(), Received: h.received.Load(), Drops: drops,
		Limits: *h.rate.limits.Load(), Rate: h.rate.current(time.Now()),
		ThrottledSeconds: time.Duration(h.rate.throttledNanos.Load()).Seconds(),
		TrustedTier:      rec.Trusted || h.m.policy.trusted.trusts(h.name),
		StrictSync:       h.syncV11.Load() && !h.m.policy.lenientAll,
	}
}

// HostManager owns the hosts: connecting, reconnecting, status, cursors.
type HostManager struct {
	store   meta.Store
	engine  *loop.Engine
	ing     *Ingester
	metrics *Metrics
	logger  *slog.Logger
	policy  hostPolicy
	bans    *domainBans
	// newHosts counts hosts requestCrawl added today (policy.newHostsPerDay).
	newHosts newHostBudget
	// recovered is where start-up recovery says each host resumes.
	recovered map[uint64]hostResume
	// downSince is when the relay last checkpointed before this start.
	downSince time.Time
	// sequencerErr reports a failed sequencer: hosts are not dialed then.
	sequencerErr func() error
	client       *http.Client
	dialer       func(ctx context.Context, network, addr string) (net.Conn, error)
	// tlsConfig, when set, is used for wss:// upstreams instead of the
	// system roots (tests with a self-signed PDS; see setUpstreamTLS).
	tlsConfig *tls.Config
	// backoff is the wait before redial number failures+1; it is a field
	// so that tests can make reconnection immediate.
	backoff func(failures int) time.Duration

	mu     sync.Mutex
	hosts  map[uint64]*hostConn
	byName map[string]*hostConn

	// checkpointSoon asks for a checkpoint now (a host's first events).
	checkpointSoon func()
	// probeBackoff is the wait before probe n of an offline host (a field
	// so tests can shorten it).
	probeBackoff func(n int) time.Duration
	// resyncHost schedules resyncs of a host's accounts (nil: none).
	resyncHost func(hostID uint64)
	// fwd forwards accepted requestCrawls to sibling relays.
	fwd      *forwarder
	pausedMu sync.Mutex
	paused   map[*hostConn]pauseCause // paused hosts and what each waits for
	closing  atomic.Bool
	stop     chan struct{}
	wg       sync.WaitGroup
}

// hostPolicy is the configuration the host manager applies.
type hostPolicy struct {
	allowInsecure       bool  // RELAY_ALLOW_INSECURE_HOSTS
	newHostsPerDay      int   // requestCrawl additions a day (admin exempt)
	defaultAccountLimit int64 // a new host's account limit
	// trusted are RELAY_TRUSTED_DOMAINS: the trusted limits tier.
	trusted trustedDomains
	// lenientAll is RELAY_LENIENT_SYNC_VALIDATION.
	lenientAll bool
	// siblings get a copy of each accepted requestCrawl.
	siblings []string
	// maxCursorAge: older cursors are not replayed from (0: no limit).
	maxCursorAge time.Duration
}

// hostDeps is everything the host manager touches.
type hostDeps struct {
	store  meta.Store   // host records
	engine *loop.Engine // upstream sockets
	ing    *Ingester    // where upstream events go
	bans   *domainBans  // banned domains (the admin API keeps them)
	// recovered is where start-up recovery says each host resumes.
	recovered map[uint64]hostResume
	// downSince is when the relay last checkpointed before this start.
	downSince time.Time
	// sequencerErr reports a failed sequencer.
	sequencerErr func() error
	metrics      *Metrics
	logger       *slog.Logger
	policy       hostPolicy
}

func newHostManager(d hostDeps) *HostManager {
	m := &HostManager{
		store: d.store, engine: d.engine, ing: d.ing, metrics: d.metrics, logger: d.logger,
		policy: d.policy, bans: d.bans, recovered: d.recovered, downSince: d.downSince, sequencerErr: d.sequencerErr,
		client: loop.NewHTTPClient(d.policy.allowInsecure, 20*time.Second),
		hosts:  map[uint64]*hostConn{}, byName: map[string]*hostConn{},
		paused:         map[*hostConn]pauseCause{},
		stop:           make(chan struct{}),
		backoff:        backoff,
		probeBackoff:   offlineProbe,
		checkpointSoon: func() {},
	}
	if !d.policy.allowInsecure {
		m.dialer = loop.SafeDialContext(&net.Dialer{Timeout: dialTimeout})
	}
	d.metrics.Gauge("relay_hosts_connected", func() float64 { return float64(m.connectedCount()) })
	d.metrics.Gauge("relay_upstream_paused_bytes", func() float64 { return float64(d.engine.PausedBuffered()) })
	for _, s := range []meta.HostStatus{meta.HostActive, meta.HostIdle, meta.HostOffline, meta.HostThrottled, meta.HostBanned, meta.HostBlocked} {
		d.metrics.Gauge(fmt.Sprintf(`relay_hosts{status=%q}`, s), func() float64 { return float64(m.countStatus(s)) })
	}
	return m
}

func (m *HostManager) connectedCount() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := 0
	for _, h := range m.hosts {
		if h.connected.Load() {
			n++
		}
	}
	return n
}

func (m *HostManager) countStatus(s meta.HostStatus) int {
	n := 0
	for _, h := range m.allHosts() {
		if h.status() == s {
			n++
		}
	}
	return n
}

// start loads the known hosts and connects the active ones, staggered.
func (m *HostManager) start(ctx context.Context) error {
	var all []*meta.Host
	after := uint64(0)
	for {
		page, err := m.store.ListHosts(ctx, after, 1000)
		if err != nil {
			return fmt.Errorf("load hosts: %w", err)
		}
		all = append(all, page...)
		if len(page) < 1000 {
			break
		}
		after = page[len(page)-1].ID
	}
	var toConnect []*hostConn
	for _, rec := range all {
		h := m.track(rec)
		if m.staleCursor(h, m.downSince) {
			m.onStaleCursor(h)
		}
		switch rec.Status {
		case meta.HostActive, meta.HostIdle, meta.HostThrottled:
			toConnect = append(toConnect, h)
		case meta.HostOffline:
			m.retryLater(h, m.probeBackoff(max(rec.Failures-maxHostFailures+1, 1)))
		}
	}
	m.fwd = newForwarder(m, m.policy.siblings)
	m.wg.Add(2)
	go m.resumeLoop()
	go func() {
		defer m.wg.Done()
		m.connectStaggered(toConnect)
	}()
	return nil
}

func (m *HostManager) track(rec *meta.Host) *hostConn {
	h := &hostConn{m: m, id: rec.ID, name: rec.Hostname, noSSL: rec.NoSSL, rec: *rec, drops: map[string]int64{}}
	trusted := rec.Trusted || m.policy.trusted.trusts(rec.Hostname)
	h.rate = newHostRate(limitsFor(rec.AccountLimit, trusted))
	h.ident.Store(identityLimiter(rec.AccountLimit, trusted))
	h.statusChecks = newStatusCheckBudget()
	h.tracker.reset(rec.Cursor)
	{
		// Where recovery says the host resumes: never live once an event
		// of the host is durable, and never accepting one twice.
		if p, ok := m.recovered[rec.ID]; ok && (p.known || p.cursor > 0 || len(p.done) > 0) {
			h.tracker.resume(max(p.cursor, rec.Cursor), p.done)
			h.subscribed.Store(true)
		}
	}
	m.mu.Lock()
	m.hosts[h.id] = h
	m.byName[h.name] = h
	m.mu.Unlock()
	return h
}

// byHostname returns a tracked host.
func (m *HostManager) byHostname(name string) *hostConn {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.byName[strings.ToLower(name)]
}

func (m *HostManager) byID(id uint64) *hostConn {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.hosts[id]
}

// setStatus changes a host's status and persists it.
func (m *HostManager) setStatus(h *hostConn, s meta.HostStatus) {
	h.mu.Lock()
	if h.rec.Status != s {
		h.rec.UpdatedAt = time.Now() // since when it has this status (staleCursor)
	}
	h.rec.Status = s
	h.mu.Unlock()
	m.writeHost(h)
}

// writeHost persists the host's record as it is now. Writes of one host
// are serialized and each reads the record after taking the turn, so when
// status changes race, the last one is what ends up stored.
func (m *HostManager) writeHost(h *hostConn) {
	h.writeMu.Lock()
	defer h.writeMu.Unlock()
	h.mu.Lock()
	rec := h.rec
	h.mu.Unlock()
	rec.Cursor = h.tracker.cursor()
	ctx, cancel := context.WithTimeout(context.Background(), hostWriteTimeout)
	defer cancel()
	if err := m.store.UpdateHost(ctx, &rec); err != nil {
		m.logger.Error("host update failed", "host", h.name, "status", rec.Status, "err", err)
	}
}

// resumePoints implements resumeSource for the checkpointer: every
// host's cursor and the done seqs above it.
func (m *HostManager) resumePoints() map[uint64]hostResume {
	hosts := m.allHosts()
	out := make(map[uint64]hostResume, len(hosts))
	for _, h := range hosts {
		c, done := h.tracker.resumePoint()
		out[h.id] = hostResume{cursor: c, done: done, known: h.subscribed.Load() || c > 0}
	}
	return out
}

// close stops dialing, closes every upstream connection and waits for
// them to close; cursors are checkpointed by the caller after the workers
// and the sequencer drained.
func (m *HostManager) close() {
	if m.closing.Swap(true) {
		return
	}
	close(m.stop)
	m.mu.Lock()
	for _, h := range m.hosts {
		h.mu.Lock()
		if h.timer != nil {
			h.timer.Stop()
		}
		h.mu.Unlock()
		if c := h.conn.Load(); c != nil {
			_ = c.Execute(func(c *loop.Conn) { c.Close(nil) })
		}
	}
	m.mu.Unlock()
	m.wg.Wait()
	deadline := time.Now().Add(2 * time.Second)
	for m.connectedCount() > 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
}

// hostCount is the number of tracked hosts.
func (m *HostManager) hostCount() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.hosts)
}

// Hosts lists hosts with their live state.
func (m *HostManager) Hosts() []HostInfo {
	hosts := m.allHosts()
	out := make([]HostInfo, 0, len(hosts))
	for _, h := range hosts {
		out = append(out, h.info())
	}
	return out
}

// allHosts is a snapshot of the tracked hosts.
func (m *HostManager) allHosts() []*hostConn {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]*hostConn, 0, len(m.hosts))
	for _, h := range m.hosts {
		out = append(out, h)
	}
	return out
}

// persistHost applies change to the host's record and writes it, returning
// the store's error (setStatus only logs it; an admin must see it).
func (m *HostManager) persistHost(ctx context.Context, h *hostConn, change func(rec *meta.Host)) (meta.Host, error) {
	h.mu.Lock()
	change(&h.rec)
	rec := h.rec
	h.mu.Unlock()
	rec.Cursor = h.tracker.cursor()
	if err := m.store.UpdateHost(ctx, &rec); err != nil {
		return rec, fmt.Errorf("persist host %s: %w", h.name, err)
	}
	return rec, nil
}
