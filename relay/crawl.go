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

	comatproto "github.com/bluesky-social/indigo/api/atproto"
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

// Default ports, removed from stored hostnames so that "host:443" and
// "https://host" name the same host.
const (
	defaultTLSPort   = "443"
	defaultPlainPort = "80"
)

// normalizeHostname turns requestCrawl or listHosts input into the
// host[:port] the relay stores and dials, and says whether the host is
// plain (ws:// and http://) rather than TLS.
//
// Input is a bare host[:port] or a URL with scheme http, https, ws or wss
// and nothing after the host but an optional "/". The result is
// lower-case, an IPv6 literal is in brackets, and the scheme's default
// port is removed.
//
// In production (allowInsecure false) only DNS names with an allowed TLD,
// over TLS, on the default port pass: no IP literal, no localhost, no
// other port, no plain scheme. Input is refused on its syntax alone,
// before any lookup or dial, so requestCrawl cannot make the relay send a
// packet to an internal address; the SSRF-safe dialer is a second line.
//
// With insecure hosts allowed (development, tests) IP literals, localhost
// and any port pass too. A bare IP literal or localhost means plain
// ws:// (local servers seldom have certificates); an explicit https:// or
// wss:// selects TLS. A bare DNS name means TLS in both modes.
func normalizeHostname(raw string, allowInsecure bool) (host string, noSSL bool, err error) {
	s := strings.TrimSpace(raw)
	if s == "" {
		return "", false, fmt.Errorf("%w: empty", ErrBadHostname)
	}
	hostport, noSSL, explicit, ok := splitScheme(s)
	if !ok {
		return "", false, fmt.Errorf("%w: %q is not a host or http(s)/ws(s) URL", ErrBadHostname, raw)
	}
	name, port, ok := splitHostPort(strings.ToLower(hostport))
	if !ok {
		return "", false, fmt.Errorf("%w: %q", ErrBadHostname, raw)
	}
	if port != "" {
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 || port[0] == '0' {
			return "", false, fmt.Errorf("%w: port %q", ErrBadHostname, port)
		}
	}
	ip, ipErr := netip.ParseAddr(name)
	isIP := ipErr == nil
	if isIP && ip.Zone() != "" {
		return "", false, fmt.Errorf("%w: IPv6 zones are not allowed: %q", ErrBadHostname, raw)
	}
	local := name == "localhost"
	if allowInsecure && (isIP || local) {
		if !explicit {
			noSSL = true
		}
		if isIP {
			name = ip.String()
		}
		return joinHostPort(name, stripDefaultPort(port, noSSL)), noSSL, nil
	}
	port = stripDefaultPort(port, noSSL)
	if !allowInsecure {
		switch {
		case noSSL:
			return "", false, fmt.Errorf("%w: plain http/ws hosts are not allowed: %q", ErrBadHostname, raw)
		case isIP:
			return "", false, fmt.Errorf("%w: IP addresses are not allowed: %q", ErrBadHostname, raw)
		case port != "":
			return "", false, fmt.Errorf("%w: ports are not allowed: %q", ErrBadHostname, raw)
		}
	}
	hdl, err := syntax.ParseHandle(name)
	if err != nil || (!allowInsecure && !hdl.AllowedTLD()) {
		return "", false, fmt.Errorf("%w: %q is not a public DNS name", ErrBadHostname, raw)
	}
	return joinHostPort(name, port), noSSL, nil
}

// splitScheme separates an optional URL scheme from s. explicit says a
// scheme was given; ok is false for anything but a bare host[:port] or a
// http(s)/ws(s) URL with no user, path, query or fragment.
func splitScheme(s string) (hostport string, noSSL, explicit, ok bool) {
	if !strings.Contains(s, "://") {
		s = strings.TrimSuffix(s, "/")
		if s == "" || strings.ContainsAny(s, "/?#@ \t") {
			return "", false, false, false
		}
		return s, false, false, true
	}
	u, err := url.Parse(s)
	if err != nil || u.Host == "" || u.User != nil || u.Opaque != "" || u.RawQuery != "" || u.Fragment != "" || (u.Path != "" && u.Path != "/") {
		return "", false, true, false
	}
	switch u.Scheme {
	case "https", "wss":
		return u.Host, false, true, true
	case "http", "ws":
		return u.Host, true, true, true
	}
	return "", false, true, false
}

// splitHostPort splits host[:port], where host may be a bracketed or a
// bare IPv6 literal. The port is "" when absent; ok is false for an empty
// host or an empty port after a colon.
func splitHostPort(hp string) (name, port string, ok bool) {
	switch {
	case strings.HasPrefix(hp, "["):
		if strings.HasSuffix(hp, "]") {
			name = hp[1 : len(hp)-1]
		} else {
			h, p, err := net.SplitHostPort(hp)
			if err != nil || p == "" {
				return "", "", false
			}
			name, port = h, p
		}
	case strings.Count(hp, ":") == 1:
		h, p, err := net.SplitHostPort(hp)
		if err != nil || p == "" {
			return "", "", false
		}
		name, port = h, p
	default: // no colon, or a bare IPv6 literal
		name = hp
	}
	return name, port, name != ""
}

// stripDefaultPort drops the scheme's default port.
func stripDefaultPort(port string, noSSL bool) string {
	if (noSSL && port == defaultPlainPort) || (!noSSL && port == defaultTLSPort) {
		return ""
	}
	return port
}

// joinHostPort is net.JoinHostPort that leaves out an empty port (and
// still brackets an IPv6 literal).
func joinHostPort(name, port string) string {
	if port != "" {
		return net.JoinHostPort(name, port)
	}
	if strings.Contains(name, ":") {
		return "[" + name + "]"
	}
	return name
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

// hostXRPC is the URL of an XRPC method on a host: https, or http for a
// plain (development) host.
func hostXRPC(host string, noSSL bool, method string) string {
	scheme := "https"
	if noSSL {
		scheme = "http"
	}
	return scheme + "://" + host + "/xrpc/" + method
}

// describeServer checks that a host answers as a PDS; it also refuses
// relays (loop guard).
func (m *HostManager) describeServer(ctx context.Context, host string, noSSL bool) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, hostXRPC(host, noSSL, "com.atproto.server.describeServer"), nil)
	if err != nil {
		return err
	}
	req.Header.Set("User-Agent", userAgent)
	// One probe per host: keeping the connection alive would only park a
	// transport goroutine per crawled host.
	req.Close = true
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
	var doc comatproto.ServerDescribeServer_Output
	if err := json.NewDecoder(io.LimitReader(resp.Body, describeServerLimit)).Decode(&doc); err != nil {
		return fmt.Errorf("%w: %w", ErrDescribeServer, err)
	}
	return nil
}

// AddHost is requestCrawl: validate, check bans and the daily budget
// (admin exempt), probe describeServer, store and connect. A known host is
// reconnected if it is not connected.
func (m *HostManager) AddHost(ctx context.Context, raw string, admin bool) (*meta.Host, error) {
	host, noSSL, err := normalizeHostname(raw, m.policy.allowInsecure)
	if err != nil {
		return nil, err
	}
	if m.bans.banned(host) {
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
	if !admin && !m.newHosts.take(m.policy.newHostsPerDay, time.Now()) {
		return nil, ErrNewHostLimit
	}
	rec := &meta.Host{Hostname: host, NoSSL: noSSL, Status: meta.HostActive, AccountLimit: m.policy.defaultAccountLimit}
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
