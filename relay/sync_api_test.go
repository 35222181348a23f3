package relay

import (
	"github.com/bluesky-social/indigo/atproto/syntax"

	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	comatproto "github.com/bluesky-social/indigo/api/atproto"
	"github.com/bluesky-social/indigo/atproto/atclient"
	"github.com/gobwas/ws/wsutil"

	"github.com/relay/relay/perf"
	"github.com/relay/relay/persist/meta"
	"github.com/relay/relay/relay/lexicon"
	"github.com/relay/relay/wsframe"
)

// apiTimeout is how long a test waits for one API answer; a handler that
// hangs fails the test instead of stalling it.
const apiTimeout = 15 * time.Second

// apiResult is one HTTP answer as the tests inspect it.
type apiResult struct {
	status  int
	errName string // the "error" member of a JSON error body
	body    []byte
	header  http.Header
}

// apiDo sends one request (redirects are not followed) and decodes the
// error name of a JSON error body.
func apiDo(t *testing.T, method, u string, body io.Reader, header http.Header) apiResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), apiTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, u, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", method, u, err)
	}
	res := apiResult{status: resp.StatusCode, body: b, header: resp.Header}
	if resp.StatusCode >= 400 {
		var eb xrpcError
		if err := json.Unmarshal(b, &eb); err != nil {
			t.Fatalf("%s %s: status %d with a non-JSON error body %q", method, u, resp.StatusCode, b)
		}
		res.errName = eb.Error
	}
	return res
}

// xrpcClient is indigo's generated-code client pointed at the relay: what
// decodes here decodes for every indigo-based consumer.
func xrpcClient(r *Relay) *atclient.APIClient {
	c := atclient.NewAPIClient("http://" + r.Addr())
	c.Client = &http.Client{Timeout: apiTimeout}
	return c
}

// xrpcErrName is the XRPC error name inside an atclient error.
func xrpcErrName(err error) string {
	var ae *atclient.APIError
	if errors.As(err, &ae) {
		return ae.Name
	}
	return ""
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// hugeBody is a JSON object whose string member never ends within 10 MB.
func hugeBody() io.Reader {
	b := make([]byte, 10<<20)
	copy(b, `{"hostname":"`)
	for i := len(`{"hostname":"`); i < len(b); i++ {
		b[i] = 'a'
	}
	return bytes.NewReader(b)
}

func TestSyncAPIBadParameters(t *testing.T) {
	r := startRelay(t, testConfig(t))
	base := "http://" + r.Addr() + "/xrpc/com.atproto.sync."
	cases := []struct {
		name   string
		method string
		path   string
		body   io.Reader
		status int
		errNm  string
	}{
		{"listRepos limit 0", "GET", "listRepos?limit=0", nil, 400, lexicon.BadRequest},
		{"listRepos limit 5000", "GET", "listRepos?limit=5000", nil, 400, lexicon.BadRequest},
		{"listRepos limit not a number", "GET", "listRepos?limit=ten", nil, 400, lexicon.BadRequest},
		{"listRepos cursor not a number", "GET", "listRepos?cursor=abc", nil, 400, lexicon.BadRequest},
		{"listRepos negative cursor", "GET", "listRepos?cursor=-1", nil, 400, lexicon.BadRequest},
		{"listRepos POST", "POST", "listRepos", strings.NewReader("{}"), 405, lexicon.BadRequest},
		{"listHosts limit 0", "GET", "listHosts?limit=0", nil, 400, lexicon.BadRequest},
		{"listHosts limit 5000", "GET", "listHosts?limit=5000", nil, 400, lexicon.BadRequest},
		{"listHosts cursor not a number", "GET", "listHosts?cursor=x1", nil, 400, lexicon.BadRequest},
		{"getRepoStatus no did", "GET", "getRepoStatus", nil, 400, lexicon.BadRequest},
		{"getRepoStatus malformed did", "GET", "getRepoStatus?did=alice.test", nil, 400, lexicon.BadRequest},
		{"getRepoStatus truncated did", "GET", "getRepoStatus?did=did:plc:", nil, 400, lexicon.BadRequest},
		{"getRepoStatus unknown did", "GET", "getRepoStatus?did=did:plc:aaaaaaaaaaaaaaaaaaaaaaaa", nil, 400, lexicon.RepoNotFound},
		{"getLatestCommit malformed did", "GET", "getLatestCommit?did=did%20plc", nil, 400, lexicon.BadRequest},
		{"getLatestCommit unknown did", "GET", "getLatestCommit?did=did:web:nobody.example.com", nil, 400, lexicon.RepoNotFound},
		{"getRepo malformed did", "GET", "getRepo?did=x", nil, 400, lexicon.BadRequest},
		{"getRepo unknown did", "GET", "getRepo?did=did:plc:aaaaaaaaaaaaaaaaaaaaaaaa", nil, 400, lexicon.RepoNotFound},
		{"getRepo malformed since", "GET", "getRepo?did=did:plc:aaaaaaaaaaaaaaaaaaaaaaaa&since=yesterday", nil, 400, lexicon.BadRequest},
		{"getHostStatus no hostname", "GET", "getHostStatus", nil, 400, lexicon.BadRequest},
		{"getHostStatus malformed hostname", "GET", "getHostStatus?hostname=" + url.QueryEscape("not a host!"), nil, 400, lexicon.BadRequest},
		{"getHostStatus unknown hostname", "GET", "getHostStatus?hostname=localhost:1", nil, 400, lexicon.HostNotFound},
		{"requestCrawl malformed JSON", "POST", "requestCrawl", strings.NewReader(`{"hostname":`), 400, lexicon.BadRequest},
		{"requestCrawl not an object", "POST", "requestCrawl", strings.NewReader(`["localhost:1"]`), 400, lexicon.BadRequest},
		{"requestCrawl 10 MB body", "POST", "requestCrawl", hugeBody(), 400, lexicon.BadRequest},
		{"requestCrawl no hostname", "POST", "requestCrawl", strings.NewReader(`{}`), 400, lexicon.BadRequest},
		{"requestCrawl malformed hostname", "POST", "requestCrawl", strings.NewReader(`{"hostname":"ftp://x y"}`), 400, lexicon.BadRequest},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			res := apiDo(t, tc.method, base+tc.path, tc.body, http.Header{"Content-Type": {"application/json"}})
			if res.status != tc.status || res.errName != tc.errNm {
				t.Fatalf("got %d %q (%s), want %d %q", res.status, res.errName, res.body, tc.status, tc.errNm)
			}
		})
	}
}

// TestSyncAPIEmptyRelay: list endpoints answer empty arrays (not null)
// and no cursor when there is nothing.
func TestSyncAPIEmptyRelay(t *testing.T) {
	r := startRelay(t, testConfig(t))
	c := xrpcClient(r)
	ctx := context.Background()
	repos, err := comatproto.SyncListRepos(ctx, c, "", 0)
	if err != nil {
		t.Fatal(err)
	}
	if repos.Repos == nil || len(repos.Repos) != 0 || repos.Cursor != nil {
		t.Fatalf("listRepos on an empty relay: %+v", repos)
	}
	hosts, err := comatproto.SyncListHosts(ctx, c, "", 0)
	if err != nil {
		t.Fatal(err)
	}
	if hosts.Hosts == nil || len(hosts.Hosts) != 0 || hosts.Cursor != nil {
		t.Fatalf("listHosts on an empty relay: %+v", hosts)
	}
	for _, path := range []string{"listRepos", "listHosts"} {
		res := apiDo(t, "GET", "http://"+r.Addr()+"/xrpc/com.atproto.sync."+path, nil, nil)
		if !bytes.Contains(res.body, []byte(`[]`)) {
			t.Errorf("%s: body %s has no empty array", path, res.body)
		}
	}
}

// syncNet is a relay crawling two fake hosts: alice and bob with commits
// on the first, carol (an #identity only, no commit) on it too, and dave
// with a commit on the second.
type syncNet struct {
	*testNet
	alice, bob, carol, dave *perf.Account
	// heads are the last commit (CID, rev) emitted per DID.
	heads map[string][2]string
	c     *testConsumer
}

func startSyncNet(t *testing.T, mutate func(*Config)) *syncNet {
	t.Helper()
	n := &syncNet{testNet: startTestNet(t, 2, mutate), heads: map[string][2]string{}}
	var err error
	mk := func(kt perf.KeyType, handle string, p *perf.PDS) *perf.Account {
		a, err2 := perf.NewAccount(kt, handle, n.plc, p)
		if err2 != nil {
			err = err2
		}
		return a
	}
	n.alice = mk(perf.K256, "alice.test", n.hosts[0])
	n.bob = mk(perf.P256, "bob.test", n.hosts[0])
	n.carol = mk(perf.K256, "carol.test", n.hosts[0])
	n.dave = mk(perf.K256, "dave.test", n.hosts[1])
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range n.hosts {
		n.crawl(t, p)
	}
	n.c = dialConsumer(t, n.r.Addr(), "")
	for i := 0; i < 2; i++ {
		n.commit(t, n.alice)
		n.commit(t, n.bob)
	}
	n.commit(t, n.dave)
	n.hosts[0].Emit(perf.Event{Identity: n.carol.Identity()})
	collect(t, n.c, 6, 30*time.Second)
	// Repo heads reach the store shortly after they are durable.
	for _, a := range []*perf.Account{n.alice, n.bob, n.dave} {
		n.waitHead(t, a)
	}
	return n
}

func (n *syncNet) commit(t *testing.T, a *perf.Account) {
	t.Helper()
	ev := mustCommit(t, a, 1)
	n.heads[a.DID] = [2]string{ev.Commit.Commit.String(), ev.Commit.Rev}
	a.PDS().Emit(ev)
}

// waitHead waits until getLatestCommit reports the last commit of a.
func (n *syncNet) waitHead(t *testing.T, a *perf.Account) {
	t.Helper()
	c := xrpcClient(n.r)
	eventually(t, 10*time.Second, "head of "+a.Handle, func() bool {
		out, err := comatproto.SyncGetLatestCommit(context.Background(), c, a.DID)
		return err == nil && out.Cid == n.heads[a.DID][0] && out.Rev == n.heads[a.DID][1]
	})
}

func TestSyncAPIReadsAccountsAndHosts(t *testing.T) {
	n := startSyncNet(t, nil)
	ctx := context.Background()
	c := xrpcClient(n.r)

	// listRepos: every account with a head, one per page, following cursors.
	seen := map[string]*comatproto.SyncListRepos_Repo{}
	cursor, pages := "", 0
	for {
		out, err := comatproto.SyncListRepos(ctx, c, cursor, 1)
		if err != nil {
			t.Fatal(err)
		}
		pages++
		for _, r := range out.Repos {
			if seen[r.Did] != nil {
				t.Fatalf("listRepos returned %s twice", r.Did)
			}
			seen[r.Did] = r
		}
		if out.Cursor == nil {
			break
		}
		if pages > 10 {
			t.Fatal("listRepos cursor does not end")
		}
		cursor = *out.Cursor
	}
	if len(seen) != 3 || seen[n.carol.DID] != nil {
		t.Fatalf("listRepos: %d repos %v; want alice, bob and dave (carol has no commit)", len(seen), seen)
	}
	for _, a := range []*perf.Account{n.alice, n.bob, n.dave} {
		r := seen[a.DID]
		if r == nil || r.Head != n.heads[a.DID][0] || r.Rev != n.heads[a.DID][1] || r.Active == nil || !*r.Active || r.Status != nil {
			t.Errorf("listRepos %s: %+v, want head %v active", a.Handle, r, n.heads[a.DID])
		}
	}
	all, err := comatproto.SyncListRepos(ctx, c, "", 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(all.Repos) != 3 || all.Cursor != nil {
		t.Fatalf("listRepos default limit: %d repos, cursor %v", len(all.Repos), all.Cursor)
	}

	// getRepoStatus: carol is known and active, without a rev.
	st, err := comatproto.SyncGetRepoStatus(ctx, c, n.alice.DID)
	if err != nil {
		t.Fatal(err)
	}
	if st.Did != n.alice.DID || !st.Active || st.Status != nil || st.Rev == nil || *st.Rev != n.heads[n.alice.DID][1] {
		t.Fatalf("getRepoStatus alice: %+v", st)
	}
	st, err = comatproto.SyncGetRepoStatus(ctx, c, n.carol.DID)
	if err != nil {
		t.Fatal(err)
	}
	if !st.Active || st.Rev != nil {
		t.Fatalf("getRepoStatus carol: %+v", st)
	}
	if _, err := comatproto.SyncGetLatestCommit(ctx, c, n.carol.DID); xrpcErrName(err) != lexicon.RepoNotFound {
		t.Fatalf("getLatestCommit carol (no commit): %v, want RepoNotFound", err)
	}

	// listHosts and getHostStatus.
	var hosts []*comatproto.SyncListHosts_Host
	cursor = ""
	for i := 0; ; i++ {
		out, err := comatproto.SyncListHosts(ctx, c, cursor, 1)
		if err != nil {
			t.Fatal(err)
		}
		hosts = append(hosts, out.Hosts...)
		if out.Cursor == nil || i > 5 {
			break
		}
		cursor = *out.Cursor
	}
	if len(hosts) != 2 || hosts[0].Hostname != n.hosts[0].Host() || hosts[1].Hostname != n.hosts[1].Host() {
		t.Fatalf("listHosts: %+v", hosts)
	}
	wantCount := map[string]int64{n.hosts[0].Host(): 3, n.hosts[1].Host(): 1}
	for _, h := range hosts {
		if h.Status == nil || *h.Status != "active" || h.AccountCount == nil || *h.AccountCount != wantCount[h.Hostname] || h.Seq == nil {
			t.Errorf("listHosts %s: %+v", h.Hostname, h)
		}
	}
	eventually(t, 10*time.Second, "host cursor", func() bool {
		hs, err := comatproto.SyncGetHostStatus(ctx, c, n.hosts[0].Host())
		return err == nil && hs.Seq != nil && *hs.Seq == n.hosts[0].LastSeq()
	})
	hs, err := comatproto.SyncGetHostStatus(ctx, c, "http://"+strings.ToUpper(n.hosts[1].Host()))
	if err != nil {
		t.Fatal(err)
	}
	if hs.Hostname != n.hosts[1].Host() || *hs.Status != "active" || *hs.AccountCount != 1 {
		t.Fatalf("getHostStatus: %+v", hs)
	}
	if _, err := comatproto.SyncGetHostStatus(ctx, c, "localhost:9"); xrpcErrName(err) != lexicon.HostNotFound {
		t.Fatalf("getHostStatus unknown: %v", err)
	}

	// getRepo: a 302 to the account's PDS (plain http: crawled without TLS).
	res := apiDo(t, "GET", "http://"+n.r.Addr()+"/xrpc/com.atproto.sync.getRepo?did="+url.QueryEscape(n.dave.DID)+"&since=3kabcdefghijk", nil, nil)
	want := "http://" + n.hosts[1].Host() + "/xrpc/com.atproto.sync.getRepo?did=" + url.QueryEscape(n.dave.DID) + "&since=3kabcdefghijk"
	if res.status != http.StatusFound || res.header.Get("Location") != want {
		t.Fatalf("getRepo: %d Location %q, want 302 %q", res.status, res.header.Get("Location"), want)
	}
}

// accountFrameOf reads frames until an #account frame arrives and decodes it.
func accountFrameOf(t *testing.T, c *testConsumer, timeout time.Duration) *comatproto.SyncSubscribeRepos_Account {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		_ = c.conn.SetReadDeadline(deadline)
		msg, err := wsutil.ReadServerBinary(c.rd)
		if err != nil {
			t.Fatalf("waiting for #account: %v", err)
		}
		f, err := parseFrame(msg)
		if err != nil {
			t.Fatal(err)
		}
		if f.t != "#account" {
			continue
		}
		_, _, body, err := wsframe.ParseEventHeader(msg)
		if err != nil {
			t.Fatal(err)
		}
		var ev comatproto.SyncSubscribeRepos_Account
		if err := ev.UnmarshalCBOR(bytes.NewReader(body)); err != nil {
			t.Fatal(err)
		}
		ev.Seq = f.seq
		return &ev
	}
}

func TestSyncAPIStatusErrors(t *testing.T) {
	n := startSyncNet(t, nil)
	ctx := context.Background()
	c := xrpcClient(n.r)
	cases := []struct {
		upstream string // status sent by bob's PDS in an #account (active=false)
		errName  string
	}{
		{"deactivated", lexicon.RepoDeactivated},
		{"deleted", lexicon.RepoDeleted},
		{"suspended", lexicon.RepoSuspended},
		{"takendown", lexicon.RepoTakendown},
		{"desynchronized", lexicon.RepoInactive},
	}
	getRepoURL := "http://" + n.r.Addr() + "/xrpc/com.atproto.sync.getRepo?did=" + url.QueryEscape(n.bob.DID)
	for _, tc := range cases {
		t.Run(tc.upstream, func(t *testing.T) {
			n.hosts[0].Emit(perf.Event{Account: n.bob.AccountEvent(false, tc.upstream)})
			ev := accountFrameOf(t, n.c, 10*time.Second)
			if ev.Did != n.bob.DID || ev.Active || ev.Status == nil || *ev.Status != tc.upstream {
				t.Fatalf("#account relayed as %+v", ev)
			}
			_, err := comatproto.SyncGetLatestCommit(ctx, c, n.bob.DID)
			if xrpcErrName(err) != tc.errName {
				t.Fatalf("getLatestCommit: %v, want %s", err, tc.errName)
			}
			if res := apiDo(t, "GET", getRepoURL, nil, nil); res.status != 400 || res.errName != tc.errName {
				t.Fatalf("getRepo: %d %q, want 400 %s", res.status, res.errName, tc.errName)
			}
			st, err := comatproto.SyncGetRepoStatus(ctx, c, n.bob.DID)
			if err != nil {
				t.Fatal(err)
			}
			if st.Active || st.Status == nil || *st.Status != tc.upstream || st.Rev != nil {
				t.Fatalf("getRepoStatus: %+v", st)
			}
			page, err := comatproto.SyncListRepos(ctx, c, "", 0)
			if err != nil {
				t.Fatal(err)
			}
			found := false
			for _, r := range page.Repos {
				if r.Did == n.bob.DID {
					found = true
					if *r.Active || r.Status == nil || *r.Status != tc.upstream {
						t.Fatalf("listRepos bob: active %v status %v", *r.Active, r.Status)
					}
				}
			}
			if !found {
				t.Fatal("listRepos lost bob")
			}
		})
	}
	// Back to active upstream: served again.
	n.hosts[0].Emit(perf.Event{Account: n.bob.AccountEvent(true, "")})
	if ev := accountFrameOf(t, n.c, 10*time.Second); !ev.Active || ev.Status != nil {
		t.Fatalf("reactivation relayed as %+v", ev)
	}
	if _, err := comatproto.SyncGetLatestCommit(ctx, c, n.bob.DID); err != nil {
		t.Fatalf("getLatestCommit after reactivation: %v", err)
	}
}

func TestRequestCrawlPolicy(t *testing.T) {
	n := startTestNet(t, 3, func(cfg *Config) {
		cfg.NewHostsPerDay = 1
		cfg.AdminPassword = "s3cret"
	})
	crawl := func(host string, header http.Header) apiResult {
		return apiDo(t, "POST", "http://"+n.r.Addr()+"/xrpc/com.atproto.sync.requestCrawl",
			strings.NewReader(fmt.Sprintf(`{"hostname":%q}`, host)), header)
	}
	if res := crawl(n.hosts[0].Host(), nil); res.status != 200 {
		t.Fatalf("first new host: %d %s", res.status, res.body)
	}
	if res := crawl(n.hosts[1].Host(), nil); res.status != http.StatusTooManyRequests || res.errName != "RateLimitExceeded" {
		t.Fatalf("second new host past the daily limit: %d %q", res.status, res.errName)
	}
	// A known host is not a new host: asking again is fine.
	if res := crawl(n.hosts[0].Host(), nil); res.status != 200 {
		t.Fatalf("known host again: %d %s", res.status, res.body)
	}
	// Admins are exempt from the daily limit; a wrong password is not admin.
	if res := crawl(n.hosts[1].Host(), http.Header{"Authorization": {"Bearer wrong"}}); res.status != http.StatusTooManyRequests {
		t.Fatalf("wrong admin password: %d %s", res.status, res.body)
	}
	if res := crawl(n.hosts[1].Host(), http.Header{"Authorization": {"Bearer s3cret"}}); res.status != 200 {
		t.Fatalf("admin past the daily limit: %d %s", res.status, res.body)
	}
	// Domain bans: the host and names under the domain are refused.
	if err := n.r.store.AddDomainBan(context.Background(), "banned.example.com"); err != nil {
		t.Fatal(err)
	}
	if err := n.r.reloadBans(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, h := range []string{"banned.example.com", "pds.BANNED.example.com", "https://x.banned.example.com/"} {
		if res := crawl(h, http.Header{"Authorization": {"Bearer s3cret"}}); res.status != 400 || res.errName != lexicon.HostBanned {
			t.Errorf("%s: %d %q, want 400 HostBanned", h, res.status, res.errName)
		}
	}
}

// BenchmarkListReposPage measures one full listRepos page (1,000 accounts,
// each with a repo head) on the embedded store, served in-process.
func BenchmarkListReposPage(b *testing.B) {
	r := startRelay(b, testConfig(b))
	ctx := context.Background()
	host := &meta.Host{Hostname: "pds.example.com", Status: meta.HostActive}
	if err := r.store.CreateHost(ctx, host); err != nil {
		b.Fatal(err)
	}
	var states []meta.RepoState
	for i := 0; i < maxListReposLimit; i++ {
		a := &meta.Account{DID: syntax.DID(fmt.Sprintf("did:plc:bench%019d", i)), HostID: host.ID, Status: meta.AccountActive, UpstreamStatus: meta.AccountActive}
		if err := r.store.CreateAccount(ctx, a); err != nil {
			b.Fatal(err)
		}
		states = append(states, meta.RepoState{UID: a.UID, Rev: "3kabcdefghijk", CommitCID: "bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm", DataCID: "bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm"})
	}
	if err := r.store.PutRepoStates(ctx, states); err != nil {
		b.Fatal(err)
	}
	h := r.apiHandler()
	req := httptest.NewRequest("GET", "/xrpc/com.atproto.sync.listRepos?limit=1000", nil)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		if w.Code != http.StatusOK {
			b.Fatalf("status %d: %s", w.Code, w.Body)
		}
	}
}
