package relay

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	comatproto "github.com/bluesky-social/indigo/api/atproto"

	"github.com/relay/relay/perf"
)

// Discovery pages a seed relay's listHosts and adds only the hosts that
// pass requestCrawl's checks: never a relay (Server header), never a
// banned domain, never one that does not answer describeServer.
func TestDiscoveryAddsOnlyAcceptableHosts(t *testing.T) {
	var good []*perf.PDS
	for i := 0; i < 2; i++ {
		p, err := perf.StartPDS(perf.PDSOptions{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(p.Close)
		good = append(good, p)
	}
	relayish, err := perf.StartPDS(perf.PDSOptions{ServerHeader: "atproto-relay"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(relayish.Close)
	banned, err := perf.StartPDS(perf.PDSOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(banned.Close)
	bannedName := "localhost:" + banned.Host()[strings.LastIndexByte(banned.Host(), ':')+1:]
	dead := "127.0.0.1:1" // refuses connections: no describeServer
	listed := []string{good[0].Host(), relayish.Host(), bannedName, dead, good[1].Host()}
	seed := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/xrpc/com.atproto.sync.listHosts" {
			http.NotFound(w, r)
			return
		}
		// Two pages, to follow the cursor.
		page, next := listed[:3], "p2"
		if r.URL.Query().Get("cursor") == "p2" {
			page, next = listed[3:], ""
		}
		out := comatproto.SyncListHosts_Output{}
		for _, h := range page {
			out.Hosts = append(out.Hosts, &comatproto.SyncListHosts_Host{Hostname: h})
		}
		if next != "" {
			out.Cursor = &next
		}
		_ = json.NewEncoder(w).Encode(out)
	}))
	t.Cleanup(seed.Close)

	cfg := testConfig(t)
	cfg.Upstream = seed.URL
	cfg.DiscoveryInterval = 0 // one pass
	r := startRelayHooked(t, cfg, func(r *Relay) {
		if err := r.store.AddDomainBan(t.Context(), "localhost"); err != nil {
			t.Fatal(err)
		}
	})
	waitUntil(t, 20*time.Second, "good hosts discovered", func() bool {
		return r.hosts.byHostname(good[0].Host()) != nil && r.hosts.byHostname(good[1].Host()) != nil
	})
	waitUntil(t, 20*time.Second, "discovery done", func() bool {
		return r.metrics.set.GetOrCreateCounter(`relay_discovery_refused_total{reason="relay"}`).Get() == 1 &&
			r.metrics.set.GetOrCreateCounter(`relay_discovery_refused_total{reason="banned"}`).Get() == 1 &&
			r.metrics.set.GetOrCreateCounter(`relay_discovery_refused_total{reason="describe_server"}`).Get() == 1
	})
	for _, h := range []string{relayish.Host(), bannedName, dead} {
		if r.hosts.byHostname(h) != nil {
			t.Errorf("%s was added", h)
		}
	}
	hosts, err := r.store.ListHosts(t.Context(), 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	if len(hosts) != 2 {
		t.Fatalf("stored hosts %d, want the 2 good ones", len(hosts))
	}
	for _, p := range good {
		waitUntil(t, 10*time.Second, "subscribed to "+p.Host(), func() bool { return p.Subscribers() == 1 })
	}
}

// An accepted requestCrawl is forwarded to every sibling relay, marked as
// forwarded; a forwarded one is not forwarded again (loop guard).
func TestRequestCrawlForwardedToSiblings(t *testing.T) {
	var mu sync.Mutex
	var got []string
	sibling := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		got = append(got, r.Header.Get(ForwardedHeader)+" "+string(b))
		mu.Unlock()
	}))
	t.Cleanup(sibling.Close)
	n := startTestNet(t, 2, func(c *Config) { c.SiblingRelays = sibling.URL })
	requestCrawl(t, n.r, n.hosts[0].Host(), http.StatusOK)
	waitUntil(t, 10*time.Second, "forwarded", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(got) == 1
	})
	mu.Lock()
	if !strings.HasPrefix(got[0], "1 ") || !strings.Contains(got[0], n.hosts[0].Host()) {
		t.Fatalf("forwarded request %q", got[0])
	}
	mu.Unlock()
	// A request that was itself forwarded stops here.
	req, _ := http.NewRequest(http.MethodPost, "http://"+n.r.Addr()+"/xrpc/com.atproto.sync.requestCrawl",
		strings.NewReader(`{"hostname":"`+n.hosts[1].Host()+`"}`))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(ForwardedHeader, "1")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("forwarded requestCrawl: %d", resp.StatusCode)
	}
	time.Sleep(200 * time.Millisecond) // a forward would be sent by now
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 1 {
		t.Fatalf("a forwarded requestCrawl was forwarded again: %v", got)
	}
}
