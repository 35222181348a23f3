package relay

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/bluesky-social/indigo/atproto/syntax"

	"github.com/relay/relay/persist/meta"
)

// Crawl policy limits.
const (
	// describeServerLimit bounds the describeServer response read.
	describeServerLimit = 1 << 20
	// listHostsPage is the page size of the upstream bootstrap.
	listHostsPage = 1000
	// bootstrapRetry is the first wait after a failed bootstrap; it doubles
	// up to bootstrapRetryMax.
	bootstrapRetry    = 10 * time.Second
	bootstrapRetryMax = 10 * time.Minute
)

// requestCrawl errors; the API maps them to lexicon error names.
var (
	ErrBadHostname      = errors.New("relay: hostname is not acceptable")
	ErrHostBanned       = errors.New("relay: host is banned")
	ErrNewHostLimit     = errors.New("relay: new host limit for today reached")
	ErrDescribeServer   = errors.New("relay: host did not answer describeServer")
	ErrHostBlockedCrawl = errors.New("relay: host is blocked")
)

// normalizeHostname turns user input (maybe with a scheme, path, or upper
// case) into the host[:port] the relay stores, and says whether it is
// plain (ws://). In production only DNS names without a port are allowed;
// with insecure hosts allowed, localhost:PORT and IP:PORT are too.
func normalizeHostname(raw string, allowInsecure bool) (host string, noSSL bool, err error) {
	s := strings.TrimSpace(raw)
	if s == "" {
		return "", false, fmt.Errorf("%w: empty", ErrBadHostname)
	}
	if strings.Contains(s, "://") {
		u, err := url.Parse(s)
		if err != nil || u.Host == "" {
			return "", false, fmt.Errorf("%w: %q", ErrBadHostname, raw)
		}
		noSSL = u.Scheme == "http" || u.Scheme == "ws"
		if u.Scheme != "http" && u.Scheme != "https" && u.Scheme != "ws" && u.Scheme != "wss" {
			return "", false, fmt.Errorf("%w: scheme %q", ErrBadHostname, u.Scheme)
		}
		s = u.Host
	}
	s = strings.ToLower(strings.TrimSuffix(s, "/"))
	name, port, hasPort := s, "", false
	if h, p, err := net.SplitHostPort(s); err == nil {
		name, port, hasPort = h, p, true
	}
	if hasPort {
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			return "", false, fmt.Errorf("%w: port %q", ErrBadHostname, port)
		}
	}
	if allowInsecure {
		if _, err := netip.ParseAddr(name); err == nil || name == "localhost" {
			if !hasPort && !strings.Contains(raw, "://") {
				noSSL = true
			}
			if strings.Contains(s, ":") && !hasPort {
				return "", false, fmt.Errorf("%w: %q", ErrBadHostname, raw)
			}
			if !strings.Contains(raw, "://") {
				noSSL = true
			}
			return s, noSSL, nil
		}
	} else {
		if hasPort {
			return "", false, fmt.Errorf("%w: ports are not allowed: %q", ErrBadHostname, raw)
		}
		if noSSL {
			return "", false, fmt.Errorf("%w: plain http/ws hosts are not allowed", ErrBadHostname)
		}
		if _, err := netip.ParseAddr(strings.Trim(name, "[]")); err == nil {
			return "", false, fmt.Errorf("%w: IP addresses are not allowed: %q", ErrBadHostname, raw)
		}
		if name == "localhost" || strings.HasSuffix(name, ".localhost") || strings.HasSuffix(name, ".local") || strings.HasSuffix(name, ".internal") {
			return "", false, fmt.Errorf("%w: %q is not a public name", ErrBadHostname, raw)
		}
	}
	hdl, err := syntax.ParseHandle(name)
	if err != nil || !hdl.AllowedTLD() {
		return "", false, fmt.Errorf("%w: %q is not a DNS name", ErrBadHostname, raw)
	}
	return s, noSSL, nil
}

// domainBans is the cached set of banned domain suffixes.
type domainBans struct {
	mu   sync.RWMutex
	list []string
}

func (d *domainBans) set(list []string) {
	d.mu.Lock()
	d.list = list
	d.mu.Unlock()
}

// banned reports whether host equals a banned domain or is under one.
func (d *domainBans) banned(host string) bool {
	name := host
	if h, _, err := net.SplitHostPort(host); err == nil {
		name = h
	}
	d.mu.RLock()
	defer d.mu.RUnlock()
	for _, b := range d.list {
		if name == b || strings.HasSuffix(name, "."+b) {
			return true
		}
	}
	return false
}

// newHostBudget counts hosts added by requestCrawl today.
type newHostBudget struct {
	mu    sync.Mutex
	day   string
	count int
}

func (b *newHostBudget) take(limit int, now time.Time) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	day := now.UTC().Format(time.DateOnly)
	if day != b.day {
		b.day, b.count = day, 0
	}
	if limit > 0 && b.count >= limit {
		return false
	}
	b.count++
	return true
}

// describeServer checks that a host answers as a PDS; it also refuses
// relays (loop guard).
func (m *HostManager) describeServer(ctx context.Context, host string, noSSL bool) error {
	scheme := "https"
	if noSSL {
		scheme = "http"
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, scheme+"://"+host+"/xrpc/com.atproto.server.describeServer", nil)
	if err != nil {
		return err
	}
	req.Header.Set("User-Agent", userAgent)
	resp, err := m.client.Do(req)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrDescribeServer, err)
	}
	defer resp.Body.Close()
	if strings.Contains(strings.ToLower(resp.Header.Get("Server")), relayLoopGuard) {
		return ErrHostIsRelay
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%w: status %d", ErrDescribeServer, resp.StatusCode)
	}
	var doc struct {
		DID string `json:"did"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, describeServerLimit)).Decode(&doc); err != nil {
		return fmt.Errorf("%w: %w", ErrDescribeServer, err)
	}
	return nil
}

// AddHost is requestCrawl: validate, check bans and the daily budget
// (admin exempt), probe describeServer, store and connect. A known host is
// reconnected if it is not connected.
func (m *HostManager) AddHost(ctx context.Context, raw string, admin bool) (*meta.Host, error) {
	host, noSSL, err := normalizeHostname(raw, m.r.cfg.AllowInsecureHosts)
	if err != nil {
		return nil, err
	}
	if m.r.bans.banned(host) {
		return nil, fmt.Errorf("%w: %s", ErrHostBanned, host)
	}
	if h := m.byHostname(host); h != nil {
		switch h.status() {
		case meta.HostBlocked:
			return nil, fmt.Errorf("%w: %s", ErrHostBlockedCrawl, host)
		case meta.HostBanned:
			return nil, fmt.Errorf("%w: %s", ErrHostBanned, host)
		case meta.HostOffline, meta.HostIdle:
			h.mu.Lock()
			h.rec.Failures = 0
			h.mu.Unlock()
			m.setStatus(h, meta.HostActive)
		}
		m.connect(h)
		rec := h.info().Host
		return &rec, nil
	}
	if err := m.describeServer(ctx, host, noSSL); err != nil {
		return nil, err
	}
	if !admin && !m.r.newHosts.take(m.r.cfg.NewHostsPerDay, time.Now()) {
		return nil, ErrNewHostLimit
	}
	rec := &meta.Host{Hostname: host, NoSSL: noSSL, Status: meta.HostActive, AccountLimit: m.r.cfg.DefaultAccountLimit}
	if err := m.store.CreateHost(ctx, rec); err != nil {
		if errors.Is(err, meta.ErrExists) {
			if h := m.byHostname(host); h != nil {
				m.connect(h)
				r := h.info().Host
				return &r, nil
			}
		}
		return nil, err
	}
	m.logger.Info("host added", "host", host, "admin", admin)
	h := m.track(rec)
	m.connect(h)
	return rec, nil
}

// bootstrap adds hosts from the seed relay's listHosts, paginated, and
// keeps retrying while the seed is unreachable.
func (m *HostManager) bootstrap(seed string) {
	defer m.wg.Done()
	base := seed
	if !strings.Contains(base, "://") {
		base = "https://" + base
	}
	wait := bootstrapRetry
	for {
		n, err := m.bootstrapOnce(base)
		if err == nil {
			m.logger.Info("bootstrap from upstream done", "upstream", seed, "hosts", n)
			return
		}
		m.logger.Warn("bootstrap from upstream failed; retrying", "upstream", seed, "err", err, "retry_in", wait.String())
		select {
		case <-m.stop:
			return
		case <-time.After(wait):
		}
		wait = min(wait*2, bootstrapRetryMax)
	}
}

func (m *HostManager) bootstrapOnce(base string) (int, error) {
	cursor, added := "", 0
	for {
		u := base + "/xrpc/com.atproto.sync.listHosts?limit=" + strconv.Itoa(listHostsPage)
		if cursor != "" {
			u += "&cursor=" + url.QueryEscape(cursor)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
		req.Header.Set("User-Agent", userAgent)
		resp, err := m.client.Do(req)
		if err != nil {
			cancel()
			return added, err
		}
		var page struct {
			Cursor *string `json:"cursor"`
			Hosts  []struct {
				Hostname string `json:"hostname"`
				Status   string `json:"status"`
			} `json:"hosts"`
		}
		err = json.NewDecoder(io.LimitReader(resp.Body, 16<<20)).Decode(&page)
		resp.Body.Close()
		cancel()
		if err != nil {
			return added, fmt.Errorf("listHosts: %w", err)
		}
		var fresh []*hostConn
		for _, hs := range page.Hosts {
			if hs.Status != "" && hs.Status != "active" {
				continue
			}
			host, noSSL, err := normalizeHostname(hs.Hostname, m.r.cfg.AllowInsecureHosts)
			if err != nil || m.r.bans.banned(host) || m.byHostname(host) != nil {
				continue
			}
			rec := &meta.Host{Hostname: host, NoSSL: noSSL, Status: meta.HostActive, AccountLimit: m.r.cfg.DefaultAccountLimit}
			if err := m.store.CreateHost(context.Background(), rec); err != nil {
				continue
			}
			fresh = append(fresh, m.track(rec))
			added++
		}
		m.connectStaggered(fresh)
		if page.Cursor == nil || *page.Cursor == "" || len(page.Hosts) == 0 {
			return added, nil
		}
		cursor = *page.Cursor
		select {
		case <-m.stop:
			return added, nil
		default:
		}
	}
}
