package relay

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

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
	// maxPausedHosts bounds hosts paused at once, and so the memory their
	// unread socket buffers hold (each up to the loop's 16 MiB inbound
	// bound: 1 GiB in all). Past it a host that must pause is disconnected
	// and resumed later from its cursor.
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

func (h *hostConn) accountLimitReached() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return !h.rec.Trusted && h.rec.AccountLimit > 0 && h.rec.AccountCount >= h.rec.AccountLimit
}

func (h *hostConn) accountCreated() {
	h.mu.Lock()
	h.rec.AccountCount++
	h.mu.Unlock()
}

// accountRemoved counts an account that moved to another host.
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
	return HostInfo{Host: rec, Connected: h.connected.Load(), Inflight: h.tracker.inflight(), Received: h.received.Load(), Drops: drops}
}

// HostManager owns the hosts: connecting, reconnecting, status, cursors.
type HostManager struct {
	r      *Relay
	store  meta.Store
	engine *loop.Engine
	ing    *Ingester
	logger *slog.Logger
	client *http.Client
	dialer func(ctx context.Context, network, addr string) (net.Conn, error)
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
	pausedMu       sync.Mutex
	paused         map[*hostConn]*partition // paused hosts and the worker each waits for
	lastIngest     atomic.Int64
	closing        atomic.Bool
	stop           chan struct{}
	wg             sync.WaitGroup
}

func newHostManager(r *Relay, store meta.Store, engine *loop.Engine, ing *Ingester) *HostManager {
	m := &HostManager{
		r: r, store: store, engine: engine, ing: ing,
		logger: r.logger.With("component", "hosts"),
		client: loop.NewHTTPClient(r.cfg.AllowInsecureHosts, 20*time.Second),
		hosts:  map[uint64]*hostConn{}, byName: map[string]*hostConn{},
		paused:         map[*hostConn]*partition{},
		stop:           make(chan struct{}),
		backoff:        backoff,
		checkpointSoon: func() {},
	}
	if !r.cfg.AllowInsecureHosts {
		m.dialer = loop.SafeDialContext(&net.Dialer{Timeout: dialTimeout})
	}
	r.metrics.Gauge("relay_hosts_connected", func() float64 { return float64(m.connectedCount()) })
	for _, s := range []meta.HostStatus{meta.HostActive, meta.HostIdle, meta.HostOffline, meta.HostThrottled, meta.HostBanned, meta.HostBlocked} {
		s := s
		r.metrics.Gauge(fmt.Sprintf(`relay_hosts{status=%q}`, s), func() float64 { return float64(m.countStatus(s)) })
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
		if rec.Status == meta.HostActive || rec.Status == meta.HostIdle || rec.Status == meta.HostThrottled {
			toConnect = append(toConnect, h)
		}
	}
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
	h.tracker.reset(rec.Cursor)
	if rs := m.r.recovered; rs != nil {
		// Where recovery says the host resumes: never live once an event
		// of the host is durable, and never accepting one twice.
		if p, ok := rs.hosts[rec.ID]; ok && (p.known || p.cursor > 0 || len(p.done) > 0) {
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

func (m *HostManager) connectStaggered(hosts []*hostConn) {
	tick := time.NewTicker(time.Second / startConnectsPerSecond)
	defer tick.Stop()
	for _, h := range hosts {
		select {
		case <-m.stop:
			return
		case <-tick.C:
			m.connect(h)
		}
	}
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

// connect dials h in a short-lived goroutine unless it is already
// connected, dialing, or not allowed to connect.
func (m *HostManager) connect(h *hostConn) {
	if m.closing.Load() {
		return
	}
	if m.r.seq.Err() != nil {
		// Nothing can be made durable: do not take events from the host.
		m.retryLater(h, reconnectMax)
		return
	}
	h.mu.Lock()
	if h.dialing || h.connected.Load() || h.rec.Status == meta.HostBlocked || h.rec.Status == meta.HostBanned {
		h.mu.Unlock()
		return
	}
	h.dialing = true
	if h.timer != nil {
		h.timer.Stop()
		h.timer = nil
	}
	h.mu.Unlock()
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		m.dial(h)
	}()
}

func (m *HostManager) dial(h *hostConn) {
	scheme := "wss"
	if h.noSSL {
		scheme = "ws"
	}
	url := scheme + "://" + h.name + "/xrpc/com.atproto.sync.subscribeRepos"
	// A first subscription without a known cursor starts live. Once the
	// host has been subscribed, a reconnection always names a cursor, even
	// 0 (nothing received yet): events the host emitted between the two
	// connections are replayed instead of lost.
	if c := h.tracker.lastSeq(); c > 0 || h.subscribed.Load() {
		url += "?cursor=" + strconv.FormatInt(c, 10)
	}
	ctx, cancel := context.WithTimeout(context.Background(), dialTimeout)
	defer cancel()
	h.ready.Store(false)
	hdr := http.Header{}
	hdr.Set("User-Agent", userAgent)
	res, err := m.engine.Dial(ctx, url, loop.DialOptions{Timeout: dialTimeout, TLSConfig: m.tlsConfig, Header: hdr, NetDial: m.dialer}, m, h)
	if err != nil {
		h.mu.Lock()
		h.dialing = false // on success OnOpen cleared it
		h.mu.Unlock()
		m.dialFailed(h, err)
		return
	}
	if strings.Contains(strings.ToLower(res.ResponseHeader.Get("Server")), relayLoopGuard) {
		m.logger.Warn("host is a relay; banning to avoid a loop", "host", h.name)
		m.setStatus(h, meta.HostBanned)
		_ = res.Conn.Execute(func(c *loop.Conn) { c.Close(ErrHostIsRelay) })
		return
	}
	// The connection may already be closed (the host sent an error frame
	// and hung up, or an admin blocked it): OnClose then decided the
	// host's status, and it must not be undone here. The check and the
	// change are one step under h.mu, which OnClose also takes.
	h.mu.Lock()
	live := h.conn.Load() == res.Conn
	status := h.rec.Status
	if !live || status == meta.HostBlocked || status == meta.HostBanned {
		h.mu.Unlock()
		if live {
			_ = res.Conn.Execute(func(c *loop.Conn) { c.Close(ErrHostBlocked) })
		}
		return
	}
	h.rec.Failures = 0
	reactivated := status != meta.HostActive && status != meta.HostThrottled
	if reactivated {
		h.rec.Status = meta.HostActive
	}
	h.subscribed.Store(true)
	h.ready.Store(true)
	h.mu.Unlock()
	if reactivated {
		m.writeHost(h)
	}
	res.Conn.Resume()
	m.logger.Info("host connected", "host", h.name, "cursor", h.tracker.lastSeq())
}

func (m *HostManager) dialFailed(h *hostConn, err error) {
	h.noteError(err)
	h.mu.Lock()
	h.rec.Failures++
	failures := h.rec.Failures
	h.mu.Unlock()
	m.r.metrics.hostDialFailures.Inc()
	if failures >= maxHostFailures {
		m.logger.Warn("host offline after repeated failures", "host", h.name, "failures", failures, "err", err)
		m.setStatus(h, meta.HostOffline)
		return
	}
	m.logger.Info("host dial failed", "host", h.name, "failures", failures, "err", err)
	m.retryLater(h, m.backoff(failures))
}

// setUpstreamTLS makes wss:// dials and https:// describeServer probes
// trust cfg (e.g. a private CA) instead of the system roots. It must be
// called before Relay.Start; tests use it for self-signed PDS hosts.
func (m *HostManager) setUpstreamTLS(cfg *tls.Config) {
	m.tlsConfig = cfg
	if tr, ok := m.client.Transport.(*http.Transport); ok {
		tr.TLSClientConfig = cfg.Clone()
	}
}

// backoff is exponential with jitter in [d/2, d].
func backoff(failures int) time.Duration {
	d := reconnectBase << min(failures, 16)
	if d > reconnectMax || d <= 0 {
		d = reconnectMax
	}
	return d/2 + rand.N(d/2+1)
}

func (m *HostManager) retryLater(h *hostConn, d time.Duration) {
	if m.closing.Load() {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.timer != nil {
		h.timer.Stop()
	}
	h.timer = time.AfterFunc(d, func() { m.connect(h) })
}

// setStatus changes a host's status and persists it.
func (m *HostManager) setStatus(h *hostConn, s meta.HostStatus) {
	h.mu.Lock()
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

// OnOpen is the loop.Handler hook for upstream connections. It ends the
// dial: from here on OnClose schedules any redial, so a redial timer that
// fires while dial finishes its checks is not refused as "dialing".
func (m *HostManager) OnOpen(c *loop.Conn) {
	h := c.Context().(*hostConn)
	h.mu.Lock()
	h.dialing = false
	h.conn.Store(c)
	h.connected.Store(true)
	h.mu.Unlock()
}

// OnClose schedules a reconnect, unless the host must not be redialed.
func (m *HostManager) OnClose(c *loop.Conn, err error) {
	h, ok := c.Context().(*hostConn)
	if !ok {
		return
	}
	h.noteError(err)
	h.mu.Lock()
	if !h.conn.CompareAndSwap(c, nil) {
		// A newer connection of this host owns its state.
		h.mu.Unlock()
		return
	}
	h.connected.Store(false)
	h.ready.Store(false)
	h.held = nil // its dispatch was undone; the host resends it
	h.mu.Unlock()
	m.unmarkPaused(h)
	h.mu.Lock()
	status := h.rec.Status
	stay := status == meta.HostBlocked || status == meta.HostBanned || status == meta.HostOffline ||
		errors.Is(err, ErrHostIsRelay) || errors.Is(err, ErrHostBlocked)
	idle := !stay && errors.Is(err, ErrUpstreamFuture)
	if idle {
		h.rec.Status = meta.HostIdle
	}
	h.mu.Unlock()
	if m.closing.Load() || stay {
		return
	}
	if idle {
		m.logger.Warn("host says our cursor is in its future; idle", "host", h.name, "cursor", h.tracker.lastSeq(), "retry_in", idleRetry)
		// Persist off the event loop: a store write may block.
		m.wg.Add(1)
		go func() {
			defer m.wg.Done()
			m.writeHost(h)
		}()
		m.retryLater(h, idleRetry)
		return
	}
	m.logger.Info("host disconnected; reconnecting", "host", h.name, "err", err)
	m.retryLater(h, m.backoff(0))
}

// markPaused records h as paused, waiting for room in p (nil: waiting for
// the dialer's checks). It refuses when maxPausedHosts are already paused.
func (m *HostManager) markPaused(h *hostConn, p *partition) bool {
	m.pausedMu.Lock()
	defer m.pausedMu.Unlock()
	if _, ok := m.paused[h]; !ok && len(m.paused) >= maxPausedHosts {
		return false
	}
	m.paused[h] = p
	h.paused.Store(true)
	return true
}

func (m *HostManager) unmarkPaused(h *hostConn) {
	m.pausedMu.Lock()
	delete(m.paused, h)
	m.pausedMu.Unlock()
	h.paused.Store(false)
}

// resumeLoop resumes paused hosts once what stopped them has room: the
// worker that refused the held event has drained to half, and the host's
// in-flight budget is not full. Resuming earlier would make the loop
// re-read a large buffered backlog only to pause again.
func (m *HostManager) resumeLoop() {
	defer m.wg.Done()
	t := time.NewTicker(resumeInterval)
	defer t.Stop()
	var ready []*hostConn
	for {
		select {
		case <-m.stop:
			return
		case <-t.C:
			ready = ready[:0]
			m.pausedMu.Lock()
			for h, p := range m.paused {
				if h.tracker.full() {
					continue
				}
				if p == nil && !h.ready.Load() {
					continue
				}
				if p != nil && len(p.in) > partitionQueue/2 {
					continue
				}
				delete(m.paused, h)
				h.paused.Store(false)
				ready = append(ready, h)
			}
			m.pausedMu.Unlock()
			for _, h := range ready {
				if c := h.conn.Load(); c != nil {
					c.Resume()
				}
			}
		}
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
