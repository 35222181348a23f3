package relay

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/relay/relay/perf"
	"github.com/relay/relay/persist/meta"
	"github.com/relay/relay/persist/meta/pebblestore"
	"github.com/relay/relay/relay/lexicon"
)

// errDialRecorded is what dialRecorder answers: no connection is made.
var errDialRecorded = errors.New("test: dial recorded and refused")

// dialRecorder stands in for every outbound connection of a relay under
// test: it records the address and refuses, so nothing leaves the machine.
type dialRecorder struct {
	mu    sync.Mutex
	addrs []string
}

func (d *dialRecorder) dial(_ context.Context, _, addr string) (net.Conn, error) {
	d.mu.Lock()
	d.addrs = append(d.addrs, addr)
	d.mu.Unlock()
	return nil, errDialRecorded
}

func (d *dialRecorder) dialed() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]string(nil), d.addrs...)
}

// install routes the relay's describeServer probes and upstream dials
// through the recorder.
func (d *dialRecorder) install(r *Relay) {
	r.hosts.client = &http.Client{Transport: &http.Transport{DialContext: d.dial, DialTLSContext: d.dial}}
	r.hosts.dialer = d.dial
}

// crawlResult posts requestCrawl and returns the status and error name.
func crawlResult(t *testing.T, r *Relay, hostname string) (int, string) {
	t.Helper()
	body := fmt.Sprintf(`{"hostname":%q}`, hostname)
	resp, err := http.Post("http://"+r.Addr()+"/xrpc/com.atproto.sync.requestCrawl", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var e xrpcError
	_ = json.NewDecoder(resp.Body).Decode(&e)
	return resp.StatusCode, e.Error
}

// In production mode requestCrawl refuses local, private, link-local and
// IP-literal hosts, plain schemes and non-hosts by syntax alone: no
// connection is even attempted. A public name is probed (the recorder
// proves the probe would have been the first packet).
func TestRequestCrawlProductionRefusesWithoutDialing(t *testing.T) {
	cfg := testConfig(t)
	cfg.AllowInsecureHosts = false
	rec := &dialRecorder{}
	r := startRelayHooked(t, cfg, rec.install)
	for _, host := range []string{
		"localhost", "localhost:2583", "127.0.0.1", "127.0.0.1:2583", "10.0.0.1",
		"169.254.169.254", "http://169.254.169.254/", "[::1]", "::1", "[::1]:443",
		"8.8.8.8", "https://8.8.8.8", "http://example.com", "ws://example.com",
		"example.com:8080", "pds.local", "pds.internal", "svc.localhost",
		"not a host", "", "https://user@example.com", "example.com/xrpc",
	} {
		status, name := crawlResult(t, r, host)
		if status != http.StatusBadRequest || name != lexicon.BadRequest {
			t.Errorf("requestCrawl %q: %d %q, want 400 BadRequest", host, status, name)
		}
	}
	if d := rec.dialed(); len(d) != 0 {
		t.Fatalf("refused hostnames caused dials: %v", d)
	}
	if hosts := r.hosts.Hosts(); len(hosts) != 0 {
		t.Fatalf("refused hostnames were added: %+v", hosts)
	}

	status, name := crawlResult(t, r, "PDS.Example.com")
	if status != http.StatusBadRequest || name != lexicon.BadRequest {
		t.Errorf("unreachable public host: %d %q, want 400 BadRequest", status, name)
	}
	if d := rec.dialed(); len(d) != 1 || d[0] != "pds.example.com:443" {
		t.Errorf("a public host was probed through %v, want one dial to pds.example.com:443", d)
	}
}

// The relay-loop guard: a host whose responses say Server: atproto-relay
// is refused by requestCrawl, a known host that starts answering so is
// banned when the relay redials it, or removed if it never relayed
// anything.
func TestRequestCrawlRefusesRelays(t *testing.T) {
	n := startTestNetHooked(t, 1, nil, func(r *Relay) {
		r.hosts.backoff = func(int) time.Duration { return 50 * time.Millisecond }
	})
	relayLike, err := perf.StartPDS(perf.PDSOptions{ServerHeader: "atproto-relay"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(relayLike.Close)
	if status, name := crawlResult(t, n.r, relayLike.Host()); status != http.StatusBadRequest || name != lexicon.HostBanned {
		t.Fatalf("requestCrawl of a relay: %d %q, want 400 HostBanned", status, name)
	}
	if n.r.hosts.byHostname(relayLike.Host()) != nil || relayLike.Subscribers() != 0 {
		t.Fatal("a relay was added or subscribed to")
	}

	// A PDS that is crawled, relays something, goes away, and comes back
	// as a relay: banned (its record has a cursor and an account).
	p := n.hosts[0]
	acct, err := perf.NewAccount(perf.K256, "wasapds.test", n.plc, p)
	if err != nil {
		t.Fatal(err)
	}
	n.crawl(t, p)
	emitCommit(t, acct, p, 1)
	waitUntil(t, 10*time.Second, "its event durable", func() bool { return n.r.hosts.byHostname(p.Host()).tracker.cursor() == 1 })
	addr := p.Host()
	p.Close()
	back, err := perf.StartPDS(perf.PDSOptions{Addr: addr, ServerHeader: "atproto-relay Go"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(back.Close)
	h := n.r.hosts.byHostname(addr)
	waitUntil(t, 10*time.Second, "host banned", func() bool { return h.status() == meta.HostBanned })
	stored, err := n.r.store.GetHostByName(context.Background(), addr)
	if err != nil {
		t.Fatal(err)
	}
	if stored.Status != meta.HostBanned {
		t.Errorf("stored status %s, want banned", stored.Status)
	}
	time.Sleep(200 * time.Millisecond) // four redial periods: none must happen
	if h.connected.Load() || back.Subscribers() != 0 || len(back.Cursors()) != 1 {
		t.Errorf("banned relay host: connected=%v subscribers=%d subscriptions=%v, want one refused subscription",
			h.connected.Load(), back.Subscribers(), back.Cursors())
	}
	if status, name := crawlResult(t, n.r, addr); status != http.StatusBadRequest || name != lexicon.HostBanned {
		t.Errorf("requestCrawl of the banned host: %d %q, want 400 HostBanned", status, name)
	}

	// A host recorded but never relaying anything that turns out to be a
	// relay: its record is removed, not kept banned.
	fresh, err := perf.StartPDS(perf.PDSOptions{})
	if err != nil {
		t.Fatal(err)
	}
	n.crawl(t, fresh)
	faddr := fresh.Host()
	fresh.Close()
	relayNow, err := perf.StartPDS(perf.PDSOptions{Addr: faddr, ServerHeader: "atproto-relay"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(relayNow.Close)
	waitUntil(t, 10*time.Second, "relay host removed", func() bool { return n.r.hosts.byHostname(faddr) == nil })
	if _, err := n.r.store.GetHostByName(context.Background(), faddr); !errors.Is(err, meta.ErrNotFound) {
		t.Errorf("removed host still stored: %v", err)
	}
	if got := n.r.metrics.hostsRemoved.with("relay").Get(); got != 1 {
		t.Errorf("relay_hosts_removed_total = %d, want 1", got)
	}
}

// A PDS that answers FutureCursor to the stored cursor was reset: once
// describeServer shows it is still a PDS, the relay resumes from its head
// (live), counts the reset, and relays what the reset PDS emits next.
func TestResetPDSResumesFromItsHead(t *testing.T) {
	n := startTestNetHooked(t, 1, nil, fastRedial)
	p := n.hosts[0]
	a, err := perf.NewAccount(perf.K256, "reset.test", n.plc, p)
	if err != nil {
		t.Fatal(err)
	}
	n.crawl(t, p)
	c := dialConsumer(t, n.r.Addr(), "")
	for i := 0; i < 3; i++ {
		emitCommit(t, a, p, 1)
	}
	collectEvents(t, c, 3, 20*time.Second)
	h := n.r.hosts.byHostname(p.Host())
	waitUntil(t, 20*time.Second, "3 events durable", func() bool { return h.tracker.cursor() == 3 })

	addr := p.Host()
	p.Close()
	fresh, err := perf.StartPDS(perf.PDSOptions{Addr: addr})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(fresh.Close)
	a.MoveTo(n.plc, fresh) // same host name: the account lives on the reset PDS
	waitUntil(t, 10*time.Second, "resubscribed live", func() bool {
		cs := fresh.Cursors()
		return len(cs) >= 2 && cs[0] == 3 && cs[len(cs)-1] == -1
	})
	if got := n.r.metrics.set.GetOrCreateCounter(`relay_host_cursor_resets_total{reason="future_cursor"}`).Get(); got != 1 {
		t.Fatalf("cursor resets %d, want 1", got)
	}
	rev := emitCommit(t, a, fresh, 1)
	if e := collectEvents(t, c, 1, 10*time.Second)[0]; e.did != a.DID || e.rev != rev {
		t.Fatalf("after the reset: %v, want rev %s", e, rev)
	}
	if s := h.status(); s != meta.HostActive {
		t.Fatalf("host status %s, want active", s)
	}
}

// A host whose retention no longer has our cursor (#info OutdatedCursor)
// is not replayed from its oldest event: the relay resumes live.
func TestOutdatedCursorResumesLive(t *testing.T) {
	n := startTestNetHooked(t, 1, nil, fastRedial)
	p := n.hosts[0]
	a, err := perf.NewAccount(perf.K256, "outdated.test", n.plc, p)
	if err != nil {
		t.Fatal(err)
	}
	n.crawl(t, p)
	c := dialConsumer(t, n.r.Addr(), "")
	emitCommit(t, a, p, 1)
	collectEvents(t, c, 1, 20*time.Second)
	h := n.r.hosts.byHostname(p.Host())
	waitUntil(t, 10*time.Second, "1 event durable", func() bool { return h.tracker.cursor() == 1 })
	if _, err := n.r.BlockHost(t.Context(), p.Host()); err != nil { // no redial meanwhile
		t.Fatal(err)
	}

	// Meanwhile the PDS moves on and trims what the relay's cursor needs.
	addr := p.Host()
	p.Close()
	small, err := perf.StartPDS(perf.PDSOptions{Addr: addr, MaxLogFrames: 4})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(small.Close)
	a.MoveTo(n.plc, small)
	for i := 0; i < 10; i++ {
		emitCommit(t, a, small, 1) // seqs 1..10; 1..6 trimmed
	}
	if _, err := n.r.UnblockHost(t.Context(), addr); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 10*time.Second, "resubscribed live", func() bool {
		cs := small.Cursors()
		return len(cs) >= 2 && cs[len(cs)-1] == -1
	})
	if got := n.r.metrics.set.GetOrCreateCounter(`relay_host_cursor_resets_total{reason="outdated_cursor"}`).Get(); got != 1 {
		t.Fatalf("cursor resets %d, want 1", got)
	}
	rev := emitCommit(t, a, small, 1)
	for {
		e, err := c.nextEvent(10 * time.Second)
		if err != nil {
			t.Fatalf("the live commit never arrived: %v", err)
		}
		if e.rev == rev {
			break
		}
	}
}

// An offline host is probed again (slowly), and comes back when it
// answers; requestCrawl brings an offline host back at once.
func TestOfflineHostIsProbedAndReturns(t *testing.T) {
	n := startTestNetHooked(t, 1, nil, func(r *Relay) {
		fastRedial(r)
		r.hosts.probeBackoff = func(int) time.Duration { return 50 * time.Millisecond }
	})
	p := n.hosts[0]
	a, err := perf.NewAccount(perf.K256, "offline.test", n.plc, p)
	if err != nil {
		t.Fatal(err)
	}
	n.crawl(t, p)
	h := n.r.hosts.byHostname(p.Host())
	addr := p.Host()
	p.Close()
	waitUntil(t, 10*time.Second, "host offline", func() bool { return h.status() == meta.HostOffline })
	back, err := perf.StartPDS(perf.PDSOptions{Addr: addr})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(back.Close)
	a.MoveTo(n.plc, back)
	waitUntil(t, 10*time.Second, "probed back to active", func() bool { return h.status() == meta.HostActive && h.connected.Load() })
	c := dialConsumer(t, n.r.Addr(), "")
	waitConsumers(t, n.r, 1) // a live consumer starts at the head when it registers
	rev := emitCommit(t, a, back, 1)
	if e := collectEvents(t, c, 1, 10*time.Second)[0]; e.rev != rev {
		t.Fatalf("after the probe: %v", e)
	}
	// Offline again, with probes far away: requestCrawl brings it back now.
	n.r.hosts.probeBackoff = offlineProbe
	back.Close()
	waitUntil(t, 10*time.Second, "host offline again", func() bool { return h.status() == meta.HostOffline })
	again, err := perf.StartPDS(perf.PDSOptions{Addr: addr})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(again.Close)
	requestCrawl(t, n.r, addr, http.StatusOK)
	waitUntil(t, 10*time.Second, "back after requestCrawl", func() bool { return h.status() == meta.HostActive && h.connected.Load() })
}

// Admin resetCursor forgets a host's cursor and resubscribes it live.
func TestAdminResetCursor(t *testing.T) {
	n := startTestNetHooked(t, 1, nil, fastRedial)
	p := n.hosts[0]
	a, err := perf.NewAccount(perf.K256, "admreset.test", n.plc, p)
	if err != nil {
		t.Fatal(err)
	}
	n.crawl(t, p)
	emitCommit(t, a, p, 1)
	h := n.r.hosts.byHostname(p.Host())
	waitUntil(t, 10*time.Second, "1 event durable", func() bool { return h.tracker.cursor() == 1 })
	if _, err := n.r.ResetHostCursor(t.Context(), p.Host()); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 10*time.Second, "resubscribed live", func() bool {
		cs := p.Cursors()
		return len(cs) >= 2 && cs[len(cs)-1] == -1
	})
}

// Fifteen consecutive failed dials mark a host offline, and the relay
// stops dialing it.
func TestHostOfflineAfterFailedDials(t *testing.T) {
	n := startTestNetHooked(t, 1, nil, fastRedial)
	p := n.hosts[0]
	n.crawl(t, p)
	h := n.r.hosts.byHostname(p.Host())
	p.Close() // the port is closed: every redial is refused
	waitUntil(t, 10*time.Second, "host offline", func() bool { return h.status() == meta.HostOffline })
	failures := n.r.metrics.hostDialFailures
	time.Sleep(100 * time.Millisecond) // twenty redial periods: none must happen
	if got := failures.Get(); got != maxHostFailures {
		t.Errorf("%d failed dials, want exactly %d", got, maxHostFailures)
	}
	if f := hostRecord(t, n.r, p.Host()).Failures; f != maxHostFailures {
		t.Errorf("host failures %d, want %d", f, maxHostFailures)
	}
	stored, err := n.r.store.GetHostByName(context.Background(), p.Host())
	if err != nil {
		t.Fatal(err)
	}
	if stored.Status != meta.HostOffline {
		t.Errorf("stored status %s, want offline", stored.Status)
	}
}

func TestBackoffBounds(t *testing.T) {
	cases := []struct {
		failures int
		lo, hi   time.Duration
	}{
		{0, 500 * time.Millisecond, time.Second},
		{1, time.Second, 2 * time.Second},
		{4, 8 * time.Second, 16 * time.Second},
		{8, 128 * time.Second, 256 * time.Second},
		{9, reconnectMax / 2, reconnectMax}, // 512 s is past the cap
		{15, reconnectMax / 2, reconnectMax},
		{64, reconnectMax / 2, reconnectMax}, // no shift overflow
	}
	for _, c := range cases {
		seen := map[time.Duration]bool{}
		for i := 0; i < 50; i++ {
			got := backoff(c.failures)
			if got < c.lo || got > c.hi {
				t.Fatalf("backoff(%d) = %v, want within [%v, %v]", c.failures, got, c.lo, c.hi)
			}
			seen[got] = true
		}
		if len(seen) < 2 {
			t.Errorf("backoff(%d) has no jitter: always %v", c.failures, seen)
		}
	}
}

// A relay that comes back after being down longer than the maximum
// cursor age does not replay its hosts from their old cursors: each
// resumes live (and its accounts are queued for resync).
func TestStaleCursorAfterLongDowntime(t *testing.T) {
	plc, err := perf.StartPLC()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(plc.Close)
	p, err := perf.StartPDS(perf.PDSOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	a, err := perf.NewAccount(perf.K256, "stale.test", plc, p)
	if err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(t)
	cfg.PLCHost = plc.URL()
	r1, err := New(cfg, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	if err := r1.Start(testHandlers(r1)); err != nil {
		t.Fatal(err)
	}
	requestCrawl(t, r1, p.Host(), http.StatusOK)
	waitUntil(t, 10*time.Second, "subscribed", func() bool { return p.Subscribers() == 1 }) // live: emit after
	emitCommit(t, a, p, 1)
	waitUntil(t, 10*time.Second, "event durable", func() bool {
		h := r1.hosts.byHostname(p.Host())
		return h != nil && h.tracker.cursor() == 1
	})
	if err := r1.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	// Age the last checkpoint by two days, as if the relay had been down.
	store, err := pebblestore.Open(filepath.Join(cfg.DataDir, "meta"))
	if err != nil {
		t.Fatal(err)
	}
	seq, blob, err := store.ReadCheckpoint(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	points, _, err := decodeResume(blob)
	if err != nil {
		t.Fatal(err)
	}
	if err := store.WriteCheckpoint(context.Background(), &meta.Checkpoint{Seq: seq, Resume: encodeResume(points, time.Now().Add(-48*time.Hour))}); err != nil {
		t.Fatal(err)
	}
	store.Close()
	emitCommit(t, a, p, 1) // emitted while the relay is down: too old to replay

	cfg.Listen, cfg.MetricsListen = "127.0.0.1:0", "127.0.0.1:0"
	r2 := startRelay(t, cfg)
	waitUntil(t, 10*time.Second, "resubscribed live", func() bool {
		cs := p.Cursors()
		return len(cs) >= 2 && cs[len(cs)-1] == -1
	})
	if got := r2.metrics.cursorResets.with("stale_cursor").Get(); got != 1 {
		t.Fatalf("stale cursor resets %d, want 1", got)
	}
}
