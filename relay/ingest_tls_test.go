package relay

import (
	"net/http"
	"testing"
	"time"

	"github.com/relay/relay/perf"
)

// A wss:// upstream through a local TLS server with a self-signed
// certificate: requestCrawl with an https:// hostname selects TLS, the
// relay verifies the certificate against the roots it was given, and
// events (including multi-record commits spanning several TLS records)
// flow through the event loop's TLS adapter, across a reconnection too.
func TestIngestTLSUpstream(t *testing.T) {
	serverTLS, clientTLS, err := perf.SelfSignedTLS()
	if err != nil {
		t.Fatal(err)
	}
	plc, err := perf.StartPLC()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(plc.Close)
	p, err := perf.StartPDS(perf.PDSOptions{TLS: serverTLS})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	a, err := perf.NewAccount(perf.K256, "secure.test", plc, p)
	if err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(t)
	cfg.PLCHost = plc.URL()

	// Without the private root the certificate is refused: describeServer
	// fails and the host is not added.
	untrusting := startRelay(t, cfg)
	requestCrawl(t, untrusting, "https://"+p.Host(), http.StatusBadRequest)
	if untrusting.hosts.byHostname(p.Host()) != nil {
		t.Fatal("host with an untrusted certificate was added")
	}

	cfg.DataDir = t.TempDir()
	r := startRelayHooked(t, cfg, func(r *Relay) {
		r.hosts.setUpstreamTLS(clientTLS)
		r.hosts.backoff = func(int) time.Duration { return 10 * time.Millisecond }
	})
	requestCrawl(t, r, "https://"+p.Host(), http.StatusOK)
	h := r.hosts.byHostname(p.Host())
	if h == nil || h.noSSL {
		t.Fatalf("host %s not added as a TLS host: %+v", p.Host(), h)
	}
	waitUntil(t, 10*time.Second, "TLS subscription", func() bool { return p.Subscribers() == 1 && h.ready.Load() })
	c := dialConsumer(t, r.Addr(), "")

	var want []string
	for i := 0; i < 20; i++ {
		want = append(want, emitCommit(t, a, p, 1+i%8))
	}
	got := collectEvents(t, c, len(want), 30*time.Second)
	p.DropConnections()
	for i := 0; i < 10; i++ {
		want = append(want, emitCommit(t, a, p, 20))
	}
	got = append(got, collectEvents(t, c, 10, 30*time.Second)...)
	for i, e := range got {
		if e.t != "#commit" || e.did != a.DID || e.rev != want[i] || e.seq != int64(i+1) {
			t.Fatalf("event %d: %v, want commit rev %s at seq %d", i, e, want[i], i+1)
		}
	}
	expectNoEvent(t, c, 300*time.Millisecond)
	if cur := p.Cursors(); len(cur) != 2 || cur[0] != -1 || cur[1] != 20 {
		t.Errorf("PDS subscription cursors %v, want [-1 20]: live first, then resumed after seq 20", cur)
	}
}
