package relay

import (
	"github.com/bluesky-social/indigo/atproto/syntax"

	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	comatproto "github.com/bluesky-social/indigo/api/atproto"

	"github.com/relay/relay/perf"
	"github.com/relay/relay/persist/eventlog"
	"github.com/relay/relay/persist/meta"
	"github.com/relay/relay/relay/lexicon"
)

const testAdminPassword = "correct horse battery staple"

var adminAuth = http.Header{"Authorization": {"Bearer " + testAdminPassword}}

// adminDo calls an admin endpoint with the password; body "" sends none.
func adminDo(t *testing.T, r *Relay, method, path, body string) apiResult {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	return apiDo(t, method, "http://"+r.Addr()+path, rd, adminAuth)
}

// adminOK calls an admin endpoint and requires a 200.
func adminOK(t *testing.T, r *Relay, method, path, body string) []byte {
	t.Helper()
	res := adminDo(t, r, method, path, body)
	if res.status != http.StatusOK {
		t.Fatalf("%s %s: %d %s", method, path, res.status, res.body)
	}
	return res.body
}

func adminHosts(t *testing.T, r *Relay) map[string]AdminHost {
	t.Helper()
	var out struct {
		Hosts []AdminHost `json:"hosts"`
	}
	if err := json.Unmarshal(adminOK(t, r, "GET", "/admin/hosts", ""), &out); err != nil {
		t.Fatal(err)
	}
	m := map[string]AdminHost{}
	for _, h := range out.Hosts {
		m[h.Hostname] = h
	}
	return m
}

func basic(user, pass string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pass))
}

func TestAdminAuth(t *testing.T) {
	disabled := startRelay(t, testConfig(t))
	cfg := testConfig(t)
	cfg.AdminPassword = testAdminPassword
	enabled := startRelay(t, cfg)
	endpoints := []struct{ method, path, body string }{
		{"GET", "/admin/hosts", ""},
		{"GET", "/admin/consumers", ""},
		{"GET", "/admin/domainBans", ""},
		{"POST", "/admin/domainBans/add", `{"domain":"example.com"}`},
		{"POST", "/admin/hosts/block", `{"hostname":"localhost:1"}`},
		{"GET", "/admin/nosuchthing", ""},
	}
	cases := []struct {
		name   string
		r      *Relay
		auth   string
		status int
		errNm  string
	}{
		{"disabled without credentials", disabled, "", 403, lexicon.Forbidden},
		{"disabled with credentials", disabled, "Bearer " + testAdminPassword, 403, lexicon.Forbidden},
		{"missing", enabled, "", 401, lexicon.AuthRequired},
		{"wrong bearer", enabled, "Bearer wrong", 401, lexicon.AuthRequired},
		{"empty bearer", enabled, "Bearer ", 401, lexicon.AuthRequired},
		{"bearer prefix of the password", enabled, "Bearer " + testAdminPassword[:5], 401, lexicon.AuthRequired},
		{"wrong basic password", enabled, basic("admin", "wrong"), 401, lexicon.AuthRequired},
		{"wrong basic user", enabled, basic("root", testAdminPassword), 401, lexicon.AuthRequired},
		{"unknown scheme", enabled, "Token " + testAdminPassword, 401, lexicon.AuthRequired},
		{"bearer", enabled, "Bearer " + testAdminPassword, 0, ""},
		{"bearer lower-case scheme", enabled, "bearer " + testAdminPassword, 0, ""},
		{"basic", enabled, basic("admin", testAdminPassword), 0, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for _, ep := range endpoints {
				var body io.Reader
				if ep.body != "" {
					body = strings.NewReader(ep.body)
				}
				h := http.Header{}
				if tc.auth != "" {
					h.Set("Authorization", tc.auth)
				}
				res := apiDo(t, ep.method, "http://"+tc.r.Addr()+ep.path, body, h)
				if tc.status != 0 {
					if res.status != tc.status || res.errName != tc.errNm {
						t.Errorf("%s %s: %d %q, want %d %q", ep.method, ep.path, res.status, res.errName, tc.status, tc.errNm)
					}
					continue
				}
				// Authorized: the endpoint's own answer, never an auth error.
				want := http.StatusOK
				switch ep.path {
				case "/admin/hosts/block":
					want = http.StatusBadRequest // unknown host
				case "/admin/nosuchthing":
					want = http.StatusNotFound
				}
				if res.status != want {
					t.Errorf("%s %s: %d %s, want %d", ep.method, ep.path, res.status, res.body, want)
				}
			}
		})
	}
}

func TestAdminBadParameters(t *testing.T) {
	n := startTestNet(t, 1, func(cfg *Config) { cfg.AdminPassword = testAdminPassword })
	n.crawl(t, n.hosts[0])
	cases := []struct {
		name   string
		method string
		path   string
		body   string
		status int
		errNm  string
	}{
		{"block malformed JSON", "POST", "/admin/hosts/block", `{"hostname"`, 400, lexicon.BadRequest},
		{"block no hostname", "POST", "/admin/hosts/block", `{}`, 400, lexicon.BadRequest},
		{"block malformed hostname", "POST", "/admin/hosts/block", `{"hostname":"a b"}`, 400, lexicon.BadRequest},
		{"block unknown hostname", "POST", "/admin/hosts/block", `{"hostname":"localhost:9"}`, 400, lexicon.HostNotFound},
		{"block GET", "GET", "/admin/hosts/block", "", 405, lexicon.BadRequest},
		{"unblock unknown hostname", "POST", "/admin/hosts/unblock", `{"hostname":"localhost:9"}`, 400, lexicon.HostNotFound},
		{"changeLimits no limits", "POST", "/admin/hosts/changeLimits", `{"hostname":"` + n.hosts[0].Host() + `"}`, 400, lexicon.BadRequest},
		{"changeLimits negative", "POST", "/admin/hosts/changeLimits", `{"hostname":"` + n.hosts[0].Host() + `","accountLimit":-1}`, 400, lexicon.BadRequest},
		{"changeLimits not a number", "POST", "/admin/hosts/changeLimits", `{"hostname":"` + n.hosts[0].Host() + `","accountLimit":"many"}`, 400, lexicon.BadRequest},
		{"changeLimits unknown hostname", "POST", "/admin/hosts/changeLimits", `{"hostname":"localhost:9","accountLimit":5}`, 400, lexicon.HostNotFound},
		{"takedown malformed JSON", "POST", "/admin/accounts/takedown", `did=x`, 400, lexicon.BadRequest},
		{"takedown no did", "POST", "/admin/accounts/takedown", `{"did":""}`, 400, lexicon.BadRequest},
		{"takedown malformed did", "POST", "/admin/accounts/takedown", `{"did":"did:nope"}`, 400, lexicon.BadRequest},
		{"takedown unknown did", "POST", "/admin/accounts/takedown", `{"did":"did:plc:aaaaaaaaaaaaaaaaaaaaaaaa"}`, 400, lexicon.RepoNotFound},
		{"reverseTakedown unknown did", "POST", "/admin/accounts/reverseTakedown", `{"did":"did:plc:aaaaaaaaaaaaaaaaaaaaaaaa"}`, 400, lexicon.RepoNotFound},
		{"ban malformed domain", "POST", "/admin/domainBans/add", `{"domain":"-bad-.com"}`, 400, lexicon.BadRequest},
		{"ban empty label", "POST", "/admin/domainBans/add", `{"domain":"a..com"}`, 400, lexicon.BadRequest},
		{"ban no domain", "POST", "/admin/domainBans/add", `{"domain":" "}`, 400, lexicon.BadRequest},
		{"unban not banned", "POST", "/admin/domainBans/remove", `{"domain":"example.com"}`, 400, lexicon.DomainNotBanned},
		{"consumers POST", "POST", "/admin/consumers", `{}`, 405, lexicon.BadRequest},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			res := adminDo(t, n.r, tc.method, tc.path, tc.body)
			if res.status != tc.status || res.errName != tc.errNm {
				t.Fatalf("got %d %q (%s), want %d %q", res.status, res.errName, res.body, tc.status, tc.errNm)
			}
		})
	}
	t.Run("10 MB body", func(t *testing.T) {
		for _, path := range []string{"/admin/hosts/block", "/admin/accounts/takedown", "/admin/domainBans/add"} {
			res := apiDo(t, "POST", "http://"+n.r.Addr()+path, hugeBody(), adminAuth)
			if res.status != 400 || res.errName != lexicon.BadRequest {
				t.Errorf("%s: %d %q, want 400 BadRequest", path, res.status, res.errName)
			}
		}
	})
	// None of the failures changed anything.
	if h := adminHosts(t, n.r)[n.hosts[0].Host()]; h.Status != "active" || h.AccountLimit != DefaultAccountLimit || !h.Connected {
		t.Fatalf("host after rejected requests: %+v", h)
	}
}

func TestAdminListsHostsAndConsumers(t *testing.T) {
	n := startTestNet(t, 1, func(cfg *Config) { cfg.AdminPassword = testAdminPassword })
	p := n.hosts[0]
	a, err := perf.NewAccount(perf.K256, "alice.test", n.plc, p)
	if err != nil {
		t.Fatal(err)
	}
	n.crawl(t, p)
	c := dialConsumer(t, n.r.Addr(), "?cursor=0")
	p.Emit(mustCommit(t, a, 1))
	p.Emit(mustCommit(t, a, 1))
	collect(t, c, 2, 10*time.Second)

	var h AdminHost
	eventually(t, 10*time.Second, "host cursor in /admin/hosts", func() bool {
		h = adminHosts(t, n.r)[p.Host()]
		return h.Cursor == p.LastSeq()
	})
	if h.ID == 0 || h.Status != "active" || !h.Connected || h.AccountCount != 1 || h.AccountLimit != DefaultAccountLimit || h.Received != 2 || h.Failures != 0 || !h.NoSSL {
		t.Fatalf("/admin/hosts: %+v", h)
	}
	var out struct {
		Consumers []ConsumerInfo `json:"consumers"`
	}
	if err := json.Unmarshal(adminOK(t, n.r, "GET", "/admin/consumers", ""), &out); err != nil {
		t.Fatal(err)
	}
	if len(out.Consumers) != 1 {
		t.Fatalf("/admin/consumers: %+v", out.Consumers)
	}
	ci := out.Consumers[0]
	if ci.Cursor != 0 || ci.Position != 2 || ci.Lag != 0 || ci.EventsSent != 2 || ci.RemoteAddr != c.conn.LocalAddr().String() || ci.ConnectedSince.IsZero() {
		t.Fatalf("/admin/consumers: %+v", ci)
	}
}

func TestAdminBlockUnblock(t *testing.T) {
	n := startTestNet(t, 2, func(cfg *Config) { cfg.AdminPassword = testAdminPassword })
	blocked, other := n.hosts[0], n.hosts[1]
	a, err := perf.NewAccount(perf.K256, "alice.test", n.plc, blocked)
	if err != nil {
		t.Fatal(err)
	}
	b, err := perf.NewAccount(perf.P256, "bob.test", n.plc, other)
	if err != nil {
		t.Fatal(err)
	}
	n.crawl(t, blocked)
	n.crawl(t, other)
	c := dialConsumer(t, n.r.Addr(), "")
	blocked.Emit(mustCommit(t, a, 1))
	other.Emit(mustCommit(t, b, 1))
	collect(t, c, 2, 10*time.Second)

	adminOK(t, n.r, "POST", "/admin/hosts/block", `{"hostname":"`+blocked.Host()+`"}`)
	// Disconnected when the call returns.
	if h := adminHosts(t, n.r)[blocked.Host()]; h.Status != "blocked" || h.Connected {
		t.Fatalf("after block: %+v", h)
	}
	eventually(t, 5*time.Second, "the blocked host to lose its subscriber", func() bool { return blocked.Subscribers() == 0 })
	blocked.Emit(mustCommit(t, a, 1)) // held by the PDS while blocked
	other.Emit(mustCommit(t, b, 1))
	f := collect(t, c, 1, 10*time.Second)[0]
	if f.did != b.DID {
		t.Fatalf("after block got %+v, want bob's commit", f)
	}
	// Longer than the first reconnect backoff: the host is not redialed.
	expectQuiet(t, c, 1500*time.Millisecond)
	if blocked.Subscribers() != 0 {
		t.Fatal("the relay reconnected to a blocked host")
	}
	requestCrawl(t, n.r, blocked.Host(), http.StatusBadRequest)
	hs, err := comatproto.SyncGetHostStatus(context.Background(), xrpcClient(n.r), blocked.Host())
	if err != nil || *hs.Status != "banned" {
		t.Fatalf("getHostStatus of a blocked host: %+v %v (lexicon status is banned)", hs, err)
	}

	// Restart on the same data: still blocked, not dialed.
	cfg := n.r.cfg
	if err := n.r.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	n.r = startRelay(t, cfg)
	c = dialConsumer(t, n.r.Addr(), "")
	eventually(t, 10*time.Second, "the other host to be redialed", func() bool {
		h := n.r.hosts.byHostname(other.Host())
		return h != nil && h.ready.Load()
	})
	if h := adminHosts(t, n.r)[blocked.Host()]; h.Status != "blocked" || h.Connected {
		t.Fatalf("after restart: %+v", h)
	}
	if blocked.Subscribers() != 0 {
		t.Fatal("a blocked host was dialed after a restart")
	}

	// Unblock: it resumes from its cursor, so the commit held while it
	// was blocked arrives, then new ones.
	adminOK(t, n.r, "POST", "/admin/hosts/unblock", `{"hostname":"`+blocked.Host()+`"}`)
	eventually(t, 10*time.Second, "the unblocked host to be dialed", func() bool { return blocked.Subscribers() == 1 })
	f = collect(t, c, 1, 10*time.Second)[0]
	if f.did != a.DID || f.t != "#commit" {
		t.Fatalf("after unblock got %+v, want alice's held commit", f)
	}
	blocked.Emit(mustCommit(t, a, 1))
	if f := collect(t, c, 1, 10*time.Second)[0]; f.did != a.DID {
		t.Fatalf("new commit after unblock: %+v", f)
	}
	rec, err := n.r.store.GetHostByName(context.Background(), blocked.Host())
	if err != nil || rec.Status != meta.HostActive {
		t.Fatalf("stored host after unblock: %+v %v", rec, err)
	}
}

func TestAdminChangeLimits(t *testing.T) {
	n := startTestNet(t, 1, func(cfg *Config) { cfg.AdminPassword = testAdminPassword; cfg.TrustedDomains = "" })
	p := n.hosts[0]
	n.crawl(t, p)
	adminOK(t, n.r, "POST", "/admin/hosts/changeLimits", `{"hostname":"`+p.Host()+`","accountLimit":1,"trusted":true}`)
	h := adminHosts(t, n.r)[p.Host()]
	if h.AccountLimit != 1 || !h.Trusted {
		t.Fatalf("after changeLimits: %+v", h)
	}
	rec, err := n.r.store.GetHostByName(context.Background(), p.Host())
	if err != nil || rec.AccountLimit != 1 || !rec.Trusted {
		t.Fatalf("stored: %+v %v", rec, err)
	}
	// Untrusted again, limit kept: the second new account is throttled.
	adminOK(t, n.r, "POST", "/admin/hosts/changeLimits", `{"hostname":"`+p.Host()+`","trusted":false}`)
	c := dialConsumer(t, n.r.Addr(), "")
	var accts []*perf.Account
	for _, handle := range []string{"first.test", "second.test"} {
		a, err := perf.NewAccount(perf.K256, handle, n.plc, p)
		if err != nil {
			t.Fatal(err)
		}
		accts = append(accts, a)
		p.Emit(mustCommit(t, a, 1))
		if len(accts) == 1 {
			// The first is relayed (created first, so within the limit).
			if f := collect(t, c, 1, 10*time.Second)[0]; f.did != accts[0].DID {
				t.Fatalf("relayed %+v, want the first account's commit", f)
			}
		}
	}
	// The throttled second is not relayed.
	waitUntil(t, 10*time.Second, "the throttled commit dropped", func() bool {
		return hostRecord(t, n.r, p.Host()).Drops["inactive_account"] == 1
	})
	expectQuiet(t, c, 300*time.Millisecond)
	want := []meta.AccountStatus{meta.AccountActive, meta.AccountThrottled}
	xc := xrpcClient(n.r)
	for i, a := range accts {
		got, err := n.r.store.GetAccountByDID(context.Background(), syntax.DID(a.DID))
		if err != nil || got.Status != want[i] {
			t.Errorf("%s: %+v %v, want status %s", a.Handle, got, err, want[i])
		}
	}
	rs, err := comatproto.SyncGetRepoStatus(context.Background(), xc, accts[1].DID)
	if err != nil || rs.Active || rs.Status == nil || *rs.Status != "throttled" {
		t.Fatalf("getRepoStatus of the throttled account: %+v %v", rs, err)
	}
	if h := adminHosts(t, n.r)[p.Host()]; h.AccountLimit != 1 || h.Trusted {
		t.Fatalf("after the second change: %+v", h)
	}
	// Raising the limit promotes it: #account active, then its commits flow.
	adminOK(t, n.r, "POST", "/admin/hosts/changeLimits", `{"hostname":"`+p.Host()+`","accountLimit":2}`)
	ev := accountFrameOf(t, c, 10*time.Second)
	if ev.Did != accts[1].DID || !ev.Active {
		t.Fatalf("promotion frame %+v", ev)
	}
	p.Emit(mustCommit(t, accts[1], 1))
	if f := collect(t, c, 1, 10*time.Second)[0]; f.did != accts[1].DID || f.t != "#commit" {
		t.Fatalf("after promotion: %+v", f)
	}
}

// logUIDs counts the records of each UID that replay from the log serves.
func logUIDs(t *testing.T, r *Relay) map[uint64]int {
	t.Helper()
	out := map[uint64]int{}
	var cursor int64
	for {
		last, err := r.log.ReadAfter(cursor, 1<<20, func(rec eventlog.Record) error {
			out[rec.UID]++
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if last == cursor {
			return out
		}
		cursor = last
	}
}

func TestAdminTakedown(t *testing.T) {
	for _, tc := range []struct {
		name     string
		ringSize int
	}{
		{"replay from the ring", DefaultRingSize},
		{"replay from the log", 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := startTestNet(t, 1, func(cfg *Config) {
				cfg.AdminPassword = testAdminPassword
				cfg.RingSize = tc.ringSize
			})
			p := n.hosts[0]
			a, err := perf.NewAccount(perf.K256, "alice.test", n.plc, p)
			if err != nil {
				t.Fatal(err)
			}
			b, err := perf.NewAccount(perf.P256, "bob.test", n.plc, p)
			if err != nil {
				t.Fatal(err)
			}
			n.crawl(t, p)
			live := dialConsumer(t, n.r.Addr(), "")
			for i := 0; i < 3; i++ {
				p.Emit(mustCommit(t, a, 1))
				if i < 2 {
					p.Emit(mustCommit(t, b, 1))
				}
			}
			collect(t, live, 5, 10*time.Second)
			acct, err := n.r.store.GetAccountByDID(context.Background(), syntax.DID(a.DID))
			if err != nil {
				t.Fatal(err)
			}

			var res TakedownResult
			if err := json.Unmarshal(adminOK(t, n.r, "POST", "/admin/accounts/takedown", `{"did":"`+a.DID+`"}`), &res); err != nil {
				t.Fatal(err)
			}
			if res.DID != a.DID || res.UID != acct.UID || res.Seq != 6 || res.Scrubbed != 3 || res.Status != meta.AccountTakendown {
				t.Fatalf("takedown result %+v", res)
			}
			ev := accountFrameOf(t, live, 10*time.Second)
			if ev.Did != a.DID || ev.Active || ev.Status == nil || *ev.Status != "takendown" || ev.Seq != 6 {
				t.Fatalf("#account frame %+v", ev)
			}

			// Replay from 0: bob's commits and the takedown notice only.
			replay := dialConsumer(t, n.r.Addr(), "?cursor=0")
			frames := collect(t, replay, 3, 10*time.Second)
			expectQuiet(t, replay, 300*time.Millisecond)
			for i, f := range frames[:2] {
				if f.t != "#commit" || f.did != b.DID {
					t.Fatalf("replayed frame %d: %+v", i, f)
				}
			}
			if f := frames[2]; f.t != "#account" || f.did != a.DID || f.seq != 6 {
				t.Fatalf("replayed frame 2: %+v", f)
			}
			if got := logUIDs(t, n.r)[acct.UID]; got != 0 {
				t.Fatalf("the log still serves %d records of the taken-down account", got)
			}

			// New commits of the account are refused; the API says so.
			dropped := n.r.metrics.Dropped("inactive_account").Get()
			p.Emit(mustCommit(t, a, 1))
			eventually(t, 10*time.Second, "the commit to be dropped", func() bool {
				return n.r.metrics.Dropped("inactive_account").Get() > dropped
			})
			// So are its identity changes.
			p.Emit(perf.Event{Identity: a.Identity()})
			eventually(t, 10*time.Second, "the #identity to be dropped", func() bool {
				return n.r.metrics.Dropped("inactive_account").Get() > dropped+1
			})
			expectQuiet(t, live, 200*time.Millisecond)
			c := xrpcClient(n.r)
			if _, err := comatproto.SyncGetLatestCommit(context.Background(), c, a.DID); xrpcErrName(err) != lexicon.RepoTakendown {
				t.Fatalf("getLatestCommit: %v, want RepoTakendown", err)
			}
			st, err := comatproto.SyncGetRepoStatus(context.Background(), c, a.DID)
			if err != nil || st.Active || st.Status == nil || *st.Status != "takendown" {
				t.Fatalf("getRepoStatus: %+v %v", st, err)
			}

			// A second takedown changes nothing and emits nothing.
			if err := json.Unmarshal(adminOK(t, n.r, "POST", "/admin/accounts/takedown", `{"did":"`+a.DID+`"}`), &res); err != nil {
				t.Fatal(err)
			}
			if res.Seq != 0 || res.Scrubbed != 0 {
				t.Fatalf("repeated takedown: %+v", res)
			}
			expectQuiet(t, live, 200*time.Millisecond)

			// Reverse: #account active, commits flow again (from the
			// PDS's head: the relay's stored head is older, which the
			// validator accepts as a counted prevData gap).
			if err := json.Unmarshal(adminOK(t, n.r, "POST", "/admin/accounts/reverseTakedown", `{"did":"`+a.DID+`"}`), &res); err != nil {
				t.Fatal(err)
			}
			ev = accountFrameOf(t, live, 10*time.Second)
			if ev.Did != a.DID || !ev.Active || ev.Status != nil || ev.Seq != res.Seq {
				t.Fatalf("reverse #account frame %+v (result %+v)", ev, res)
			}
			// The status reaches the store with the frame's checkpoint.
			waitUntil(t, 5*time.Second, "reversed status stored", func() bool {
				stored, err := n.r.store.GetAccountByDID(context.Background(), syntax.DID(a.DID))
				return err == nil && stored.Status == meta.AccountActive
			})
			p.Emit(mustCommit(t, a, 1))
			if f := collect(t, live, 1, 10*time.Second)[0]; f.t != "#commit" || f.did != a.DID {
				t.Fatalf("commit after reverse: %+v", f)
			}
		})
	}
}

func TestAdminDomainBans(t *testing.T) {
	n := startTestNet(t, 1, func(cfg *Config) { cfg.AdminPassword = testAdminPassword })
	p := n.hosts[0]
	n.crawl(t, p)
	list := func() []string {
		var out struct {
			Domains []string `json:"domains"`
		}
		if err := json.Unmarshal(adminOK(t, n.r, "GET", "/admin/domainBans", ""), &out); err != nil {
			t.Fatal(err)
		}
		return out.Domains
	}
	if got := list(); got == nil || len(got) != 0 {
		t.Fatalf("initial bans: %#v", got)
	}
	adminOK(t, n.r, "POST", "/admin/domainBans/add", `{"domain":"Evil.Example.COM."}`)
	adminOK(t, n.r, "POST", "/admin/domainBans/add", `{"domain":"evil.example.com"}`) // idempotent
	if got := list(); len(got) != 1 || got[0] != "evil.example.com" {
		t.Fatalf("bans: %v", got)
	}
	requestCrawl(t, n.r, "pds.evil.example.com", http.StatusBadRequest)

	// Banning the domain of a connected host bans and disconnects it.
	adminOK(t, n.r, "POST", "/admin/domainBans/add", `{"domain":"127.0.0.1"}`)
	if h := adminHosts(t, n.r)[p.Host()]; h.Status != "banned" || h.Connected {
		t.Fatalf("host under a new ban: %+v", h)
	}
	eventually(t, 5*time.Second, "the banned host to lose its subscriber", func() bool { return p.Subscribers() == 0 })
	requestCrawl(t, n.r, p.Host(), http.StatusBadRequest)

	// Lifting the ban restores it.
	adminOK(t, n.r, "POST", "/admin/domainBans/remove", `{"domain":"127.0.0.1"}`)
	eventually(t, 10*time.Second, "the host to be redialed", func() bool { return p.Subscribers() == 1 })
	if h := adminHosts(t, n.r)[p.Host()]; h.Status != "active" {
		t.Fatalf("host after the ban was lifted: %+v", h)
	}
	adminOK(t, n.r, "POST", "/admin/domainBans/remove", `{"domain":"evil.example.com"}`)
	if got := list(); len(got) != 0 {
		t.Fatalf("bans after removal: %v", got)
	}
	if n.r.bans.banned("pds.evil.example.com") {
		t.Fatal("the in-memory ban list was not updated")
	}
}
