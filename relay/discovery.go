package relay

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	comatproto "github.com/bluesky-social/indigo/api/atproto"
)

// Discovery and forwarding limits.
const (
	// DefaultDiscoveryInterval is how often the seed relays' listHosts are
	// paged for hosts the relay does not know (RELAY_DISCOVERY_INTERVAL).
	DefaultDiscoveryInterval = time.Hour
	// discoveryChecksPerSecond bounds how fast unknown hosts are checked
	// (describeServer each): a seed listing 3,000 hosts takes a minute,
	// and never makes the relay open thousands of probes at once.
	discoveryChecksPerSecond = 50
	// listHostsResponseLimit bounds one listHosts page read.
	listHostsResponseLimit = 16 << 20
	// forwardQueue bounds requestCrawls waiting to be forwarded to the
	// sibling relays; when full the forward is dropped and counted (the
	// host was added here; the siblings find it by their own discovery).
	forwardQueue = 256
	// forwardTimeout bounds one forwarded requestCrawl.
	forwardTimeout = 10 * time.Second
	// ForwardedHeader marks a requestCrawl forwarded by a relay: it is not
	// forwarded again (loop guard between siblings).
	ForwardedHeader = "X-Relay-Forwarded"
)

// splitList splits a comma-separated setting, dropping blanks and "none".
func splitList(s string) []string {
	var out []string
	for _, v := range strings.Split(s, ",") {
		if v = strings.TrimSpace(v); v != "" && v != "none" {
			out = append(out, v)
		}
	}
	return out
}

// baseURL turns a relay host setting into an https (or explicit) base URL.
func baseURL(s string) string {
	if !strings.Contains(s, "://") {
		return "https://" + s
	}
	return strings.TrimSuffix(s, "/")
}

// discover pages the seeds' listHosts now and then every interval, and
// adds each unknown host through requestCrawl's checks (hostname syntax,
// domain bans, SSRF-safe describeServer, the relay-loop guard) at a
// bounded rate. A seed that cannot be reached is retried with backoff.
func (m *HostManager) discover(seeds []string, interval time.Duration) {
	defer m.wg.Done()
	for {
		for _, seed := range seeds {
			wait := bootstrapRetry
			for {
				added, refused, err := m.discoverOnce(baseURL(seed))
				if err == nil {
					m.logger.Info("discovery pass done", "seed", seed, "added", added, "refused", refused)
					break
				}
				m.logger.Warn("discovery from seed failed; retrying", "seed", seed, "err", err, "retry_in", wait)
				select {
				case <-m.stop:
					return
				case <-time.After(wait):
				}
				wait = min(wait*2, bootstrapRetryMax)
				if wait >= interval {
					break // try again at the next pass
				}
			}
		}
		if interval <= 0 {
			return
		}
		select {
		case <-m.stop:
			return
		case <-time.After(interval):
		}
	}
}

// discoverOnce pages one seed's listHosts and checks every host it does
// not know. It returns how many it added and how many the checks refused.
func (m *HostManager) discoverOnce(base string) (added, refused int, err error) {
	tick := time.NewTicker(time.Second / discoveryChecksPerSecond)
	defer tick.Stop()
	cursor := ""
	for {
		page, err := m.listHostsPage(base, cursor)
		if err != nil {
			return added, refused, err
		}
		for _, hs := range page.Hosts {
			if hs.Status != nil && *hs.Status != "" && *hs.Status != "active" {
				continue
			}
			host, _, err := normalizeHostname(hs.Hostname, m.policy.allowInsecure)
			if err != nil || m.byHostname(host) != nil {
				continue
			}
			select {
			case <-m.stop:
				return added, refused, nil
			case <-tick.C:
			}
			ctx, cancel := context.WithTimeout(context.Background(), dialTimeout)
			_, err = m.AddHost(ctx, host, true)
			cancel()
			if err != nil {
				refused++
				m.metrics.discoveryRefused.with(crawlRefusal(err)).Inc()
				m.logger.Info("discovered host refused", "host", host, "err", err)
				continue
			}
			added++
			m.metrics.discoveryAdded.Inc()
		}
		if page.Cursor == nil || *page.Cursor == "" || len(page.Hosts) == 0 {
			return added, refused, nil
		}
		cursor = *page.Cursor
	}
}

// crawlRefusal is the metric label of a refused host.
func crawlRefusal(err error) string {
	switch {
	case errors.Is(err, ErrHostIsRelay):
		return "relay"
	case errors.Is(err, ErrHostBanned), errors.Is(err, ErrHostBlockedCrawl):
		return "banned"
	case errors.Is(err, ErrBadHostname):
		return "bad_hostname"
	case errors.Is(err, ErrDescribeServer):
		return "describe_server"
	}
	return "error"
}

// listHostsPage reads one page of a relay's listHosts.
func (m *HostManager) listHostsPage(base, cursor string) (*comatproto.SyncListHosts_Output, error) {
	u := base + "/xrpc/com.atproto.sync.listHosts?limit=" + strconv.Itoa(listHostsPage)
	if cursor != "" {
		u += "&cursor=" + url.QueryEscape(cursor)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("User-Agent", userAgent)
	resp, err := m.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("listHosts: status %d", resp.StatusCode)
	}
	var page comatproto.SyncListHosts_Output
	if err := json.NewDecoder(io.LimitReader(resp.Body, listHostsResponseLimit)).Decode(&page); err != nil {
		return nil, fmt.Errorf("listHosts: %w", err)
	}
	return &page, nil
}

// forwarder passes accepted requestCrawls on to sibling relays, from one
// goroutine with a bounded queue (see forwardQueue).
type forwarder struct {
	m        *HostManager
	siblings []string
	queue    chan string
}

func newForwarder(m *HostManager, siblings []string) *forwarder {
	f := &forwarder{m: m, siblings: siblings, queue: make(chan string, forwardQueue)}
	if len(siblings) > 0 {
		m.wg.Add(1)
		go f.run()
	}
	return f
}

// forward queues hostname for the siblings (never blocks).
func (f *forwarder) forward(hostname string) {
	if f == nil || len(f.siblings) == 0 {
		return
	}
	select {
	case f.queue <- hostname:
	default:
		f.m.metrics.crawlForwards.with("queue_full").Inc()
	}
}

func (f *forwarder) run() {
	defer f.m.wg.Done()
	for {
		select {
		case <-f.m.stop:
			return
		case host := <-f.queue:
			for _, s := range f.siblings {
				result := "ok"
				if err := f.send(baseURL(s), host); err != nil {
					result = "failed"
					f.m.logger.Info("requestCrawl forward failed", "sibling", s, "host", host, "err", err)
				}
				f.m.metrics.crawlForwards.with(result).Inc()
			}
		}
	}
}

func (f *forwarder) send(base, host string) error {
	body, _ := json.Marshal(map[string]string{"hostname": host})
	ctx, cancel := context.WithTimeout(context.Background(), forwardTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/xrpc/com.atproto.sync.requestCrawl", bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", userAgent)
	req.Header.Set(ForwardedHeader, "1")
	resp, err := f.m.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %d", resp.StatusCode)
	}
	return nil
}
