package relay

import (
	"encoding/json"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/relay/relay/perf"
)

func TestLimitsFor(t *testing.T) {
	if l := limitsFor(100, false); l.PerSecond != 50.1 || l.PerHour != 2600 || l.PerDay != 21000 {
		t.Fatalf("untrusted limits %+v", l)
	}
	if l := limitsFor(100, true); l.PerSecond != 5000 || l.PerHour != 50e6 || l.PerDay != 500e6 {
		t.Fatalf("trusted limits %+v", l)
	}
	td := parseTrustedDomains(" Example.com, .pds.dev ,")
	for host, want := range map[string]bool{
		"example.com": true, "a.example.com": true, "a.example.com:2583": true, "x.pds.dev": true,
		"badexample.com": false, "example.com.evil": false, "localhost:3000": false,
	} {
		if td.trusts(host) != want {
			t.Errorf("trusts(%q) = %v", host, !want)
		}
	}
	if !parseTrustedDomains("*").trusts("127.0.0.1:4000") {
		t.Error("* does not trust everything")
	}
}

// A host flooding past its event rate limit is held at it (its events
// wait; none is dropped) while another host's events keep flowing; the
// hold is counted, and raising the limit live ends it.
func TestFloodHostHeldAtItsLimit(t *testing.T) {
	n := startTestNet(t, 2, func(c *Config) {
		c.TrustedDomains = ""
		c.DefaultAccountLimit = 0 // 50 events/s, 2,500/h, 20,000/day
	})
	flood, calm := n.hosts[0], n.hosts[1]
	var floodAccts []*perf.Account
	for i := 0; i < 4; i++ {
		a, err := perf.NewAccount(perf.K256, "flood"+string(rune('a'+i))+".test", n.plc, flood)
		if err != nil {
			t.Fatal(err)
		}
		floodAccts = append(floodAccts, a)
	}
	calmAcct, err := perf.NewAccount(perf.K256, "calm.test", n.plc, calm)
	if err != nil {
		t.Fatal(err)
	}
	n.crawl(t, flood)
	n.crawl(t, calm)
	c := dialConsumer(t, n.r.Addr(), "")
	const floodN = 200
	var lastFlood string
	for i := 0; i < floodN; i++ {
		lastFlood = emitCommit(t, floodAccts[i%len(floodAccts)], flood, 1)
	}
	time.Sleep(200 * time.Millisecond) // the flood is now past its burst and held
	var calmRevs []string
	for i := 0; i < 5; i++ {
		calmRevs = append(calmRevs, emitCommit(t, calmAcct, calm, 1))
	}
	got := collectEvents(t, c, floodN+5, 30*time.Second)
	calmAt, floodLastAt := -1, -1
	for i, e := range got {
		if e.did == calmAcct.DID && e.rev == calmRevs[4] {
			calmAt = i
		}
		if e.rev == lastFlood {
			floodLastAt = i
		}
	}
	if calmAt < 0 || floodLastAt < 0 {
		t.Fatalf("missing events: calm at %d, last flood at %d", calmAt, floodLastAt)
	}
	if calmAt > floodLastAt {
		t.Fatalf("the calm host's events waited behind the flood (calm done at %d, flood at %d)", calmAt, floodLastAt)
	}
	info := hostRecord(t, n.r, flood.Host())
	if info.ThrottledSeconds <= 0 || len(info.Drops) != 0 {
		t.Fatalf("flood host: throttled %.2fs, drops %v; want a counted hold and no drops", info.ThrottledSeconds, info.Drops)
	}
	if info.Limits.PerSecond != 50 {
		t.Fatalf("flood host limits %+v", info.Limits)
	}
	if calmInfo := hostRecord(t, n.r, calm.Host()); calmInfo.ThrottledSeconds != 0 {
		t.Fatalf("calm host throttled %.2fs", calmInfo.ThrottledSeconds)
	}
	// Trusting the host takes effect live: a second flood is not held.
	trusted := true
	if _, err := n.r.ChangeHostLimits(t.Context(), flood.Host(), nil, &trusted); err != nil {
		t.Fatal(err)
	}
	before := info.ThrottledSeconds
	for i := 0; i < floodN; i++ {
		emitCommit(t, floodAccts[i%len(floodAccts)], flood, 1)
	}
	collectEvents(t, c, floodN, 10*time.Second)
	if after := hostRecord(t, n.r, flood.Host()); after.ThrottledSeconds != before || after.Limits.PerSecond != trustedPerSecond {
		t.Fatalf("after trusting: throttled %.2fs (was %.2fs), limits %+v", after.ThrottledSeconds, before, after.Limits)
	}
}

// A host whose events fail their signatures cannot make the relay hammer
// the PLC directory: its identity lookups stay within its budget (the
// events wait, then are dropped as bad signatures), while another host's
// events keep flowing.
func TestIdentityLookupBudgetUnderBadSignatureFlood(t *testing.T) {
	n := startTestNet(t, 2, func(c *Config) {
		c.TrustedDomains = ""
		c.DefaultAccountLimit = 0 // lookups: 10/s, bursts of 20
	})
	flood, calm := n.hosts[0], n.hosts[1]
	other, err := perf.NewAccount(perf.K256, "otherkey.test", n.plc, calm)
	if err != nil {
		t.Fatal(err)
	}
	const accounts = 30
	var bad []*perf.Account
	for i := 0; i < accounts; i++ {
		a, err := perf.NewAccount(perf.K256, "bad"+string(rune('a'+i%26))+string(rune('a'+i/26))+".test", n.plc, flood)
		if err != nil {
			t.Fatal(err)
		}
		// The directory names another key: every commit fails to verify.
		n.plc.Put(a.DID, a.Handle, other.PublicKey(), flood.URL())
		bad = append(bad, a)
	}
	calmAcct, err := perf.NewAccount(perf.K256, "calmid.test", n.plc, calm)
	if err != nil {
		t.Fatal(err)
	}
	n.crawl(t, flood)
	n.crawl(t, calm)
	c := dialConsumer(t, n.r.Addr(), "")
	start := time.Now()
	before := n.plc.Requests()
	for _, a := range bad {
		emitCommit(t, a, flood, 1)
	}
	rev := emitCommit(t, calmAcct, calm, 1)
	if e := collectEvents(t, c, 1, 10*time.Second)[0]; e.rev != rev {
		t.Fatalf("the calm host's event: %v", e)
	}
	// Each bad account costs two lookups (first sight, re-resolve after
	// the bad signature): 60 against a budget of 20 + 10/s.
	waitUntil(t, 30*time.Second, "every bad commit dropped", func() bool {
		return hostRecord(t, n.r, flood.Host()).Drops["bad_signature"] == accounts
	})
	elapsed := time.Since(start)
	lookups := n.plc.Requests() - before
	if allowed := int64(identityBurstBase + identityPerSecondBase*elapsed.Seconds() + 2); lookups > allowed+1 {
		t.Fatalf("%d PLC lookups in %v, over the budget of %d", lookups, elapsed.Round(time.Millisecond), allowed)
	}
	if n.r.metrics.identityBudgetWaits.Get() == 0 {
		t.Fatal("no lookup waited for the budget")
	}
}

// A commit for an account the relay believes deactivated upstream (it
// missed the host's #account) is not dropped at once: the host's
// getRepoStatus is asked, and when it says active the relay fixes the
// status (#account active) and relays the commit.
func TestMissedAccountEventRechecked(t *testing.T) {
	var active atomic.Bool
	var asked atomic.Int32
	plc, err := perf.StartPLC()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(plc.Close)
	var did string
	p, err := perf.StartPDS(perf.PDSOptions{Routes: map[string]http.HandlerFunc{
		"GET /xrpc/com.atproto.sync.getRepoStatus": func(w http.ResponseWriter, r *http.Request) {
			asked.Add(1)
			out := map[string]any{"did": r.URL.Query().Get("did"), "active": active.Load()}
			if !active.Load() {
				out["status"] = "deactivated"
			}
			_ = json.NewEncoder(w).Encode(out)
		},
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	cfg := testConfig(t)
	cfg.PLCHost = plc.URL()
	r := startRelay(t, cfg)
	a, err := perf.NewAccount(perf.K256, "missed.test", plc, p)
	if err != nil {
		t.Fatal(err)
	}
	did = a.DID
	requestCrawl(t, r, p.Host(), http.StatusOK)
	waitUntil(t, 10*time.Second, "subscribed", func() bool { return p.Subscribers() == 1 })
	c := dialConsumer(t, r.Addr(), "")
	emitCommit(t, a, p, 1)
	p.Emit(perf.Event{Account: a.AccountEvent(false, "deactivated")})
	collectEvents(t, c, 2, 10*time.Second)

	// The host reactivates the account but the relay misses the #account;
	// the host still says deactivated the first time it is asked.
	rev := emitCommit(t, a, p, 1)
	waitUntil(t, 10*time.Second, "dropped after a re-check", func() bool {
		return hostRecord(t, r, p.Host()).Drops["inactive_account"] == 1
	})
	if asked.Load() != 1 {
		t.Fatalf("host asked %d times, want 1", asked.Load())
	}
	expectNoEvent(t, c, 200*time.Millisecond)
	_ = rev

	// Now it is active at the host, and a new commit arrives: the cached
	// answer is not reused within the TTL, so clear it the way a later
	// commit after the TTL would find it.
	active.Store(true)
	purged := make(chan struct{})
	if err := r.ing.Exec(t.Context(), did, func(part *partition) { part.checked.Purge(); close(purged) }); err != nil {
		t.Fatal(err)
	}
	<-purged
	rev = emitCommit(t, a, p, 1)
	got := collectEvents(t, c, 2, 10*time.Second)
	if got[0].t != "#account" || got[0].did != did || !got[0].active {
		t.Fatalf("first frame %v, want #account active", got[0])
	}
	if got[1].t != "#commit" || got[1].rev != rev {
		t.Fatalf("second frame %v, want the commit %s", got[1], rev)
	}
	if n := r.metrics.statusRechecks.with("fixed").Get(); n != 1 {
		t.Fatalf("fixed re-checks %d, want 1", n)
	}
}

// An account deleted at its PDS no longer counts against the host's
// account limit: the next new account is not throttled.
func TestDeletedAccountFreesItsSlot(t *testing.T) {
	n := startTestNet(t, 1, func(c *Config) { c.TrustedDomains = ""; c.DefaultAccountLimit = 1 })
	p := n.hosts[0]
	n.crawl(t, p)
	c := dialConsumer(t, n.r.Addr(), "")
	first, err := perf.NewAccount(perf.K256, "gone.test", n.plc, p)
	if err != nil {
		t.Fatal(err)
	}
	emitCommit(t, first, p, 1)
	p.Emit(perf.Event{Account: first.AccountEvent(false, "deleted")})
	collectEvents(t, c, 2, 10*time.Second)
	if got := hostRecord(t, n.r, p.Host()).AccountCount; got != 0 {
		t.Fatalf("account count after the deletion %d, want 0", got)
	}
	second, err := perf.NewAccount(perf.K256, "next.test", n.plc, p)
	if err != nil {
		t.Fatal(err)
	}
	rev := emitCommit(t, second, p, 1)
	if e := collectEvents(t, c, 1, 10*time.Second)[0]; e.did != second.DID || e.rev != rev {
		t.Fatalf("the next account's commit: %v (throttled?)", e)
	}
	waitUntil(t, 5*time.Second, "stored count", func() bool {
		h, err := n.r.store.GetHostByName(t.Context(), p.Host())
		return err == nil && h.AccountCount == 1
	})
}
