package relay

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	comatproto "github.com/bluesky-social/indigo/api/atproto"

	"github.com/relay/relay/perf"
	"github.com/relay/relay/persist/collection"
	"github.com/relay/relay/relay/lexicon"
)

// collModel is the generator's own record sets: did -> collection -> rkeys.
type collModel map[string]map[string]map[string]bool

func (m collModel) holders(coll string) []string {
	out := []string{}
	for did, cs := range m {
		if len(cs[coll]) > 0 {
			out = append(out, did)
		}
	}
	sort.Strings(out)
	return out
}

// listByCollection pages listReposByCollection over HTTP.
func listByCollection(t testing.TB, r *Relay, coll string, page int) []string {
	t.Helper()
	out := []string{}
	cursor := ""
	for i := 0; ; i++ {
		q := url.Values{"collection": {coll}, "limit": {fmt.Sprint(page)}}
		if cursor != "" {
			q.Set("cursor", cursor)
		}
		res, err := http.Get("http://" + r.Addr() + "/xrpc/com.atproto.sync.listReposByCollection?" + q.Encode())
		if err != nil {
			t.Fatal(err)
		}
		var body struct {
			Repos []struct {
				DID string `json:"did"`
			} `json:"repos"`
			Cursor string `json:"cursor"`
			Error  string `json:"error"`
		}
		err = json.NewDecoder(res.Body).Decode(&body)
		res.Body.Close()
		if err != nil || res.StatusCode != http.StatusOK {
			t.Fatalf("listReposByCollection %s: %d %v %s", coll, res.StatusCode, err, body.Error)
		}
		if len(body.Repos) > page {
			t.Fatalf("page of %d > limit %d", len(body.Repos), page)
		}
		for _, r := range body.Repos {
			out = append(out, r.DID)
		}
		if body.Cursor == "" {
			return out
		}
		cursor = body.Cursor
		if i > 100000 {
			t.Fatal("cursor loop")
		}
	}
}

// waitCommits reads the consumer until it has seen n more #commit frames.
func waitCommits(t *testing.T, c *testConsumer, n int) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for n > 0 {
		f, err := c.next(time.Until(deadline))
		if err != nil {
			t.Fatalf("%d #commit frames still expected: %v", n, err)
		}
		if f.t == "#commit" {
			n--
		}
	}
}

// TestCollectionIndexExact drives random creates, updates and deletes over
// 200 accounts and 30 collections through the real ingest path (signed
// sync-1.1 commits from the synthetic PDS fleet, validated, sequenced,
// fsynced), and after each step compares listReposByCollection with the
// generator's record sets; collections lose their last record often.
func TestCollectionIndexExact(t *testing.T) {
	n := startTestNet(t, 2, func(c *Config) { c.DefaultAccountLimit = 10_000 })
	for _, p := range n.hosts {
		n.crawl(t, p)
	}
	c := dialConsumer(t, n.r.Addr(), "")
	rng := rand.New(rand.NewPCG(7, 11))
	const nAcct, nColl, steps = 200, 30, 8
	colls := make([]string, nColl)
	for i := range colls {
		colls[i] = fmt.Sprintf("com.example.coll%02d.rec", i)
	}
	model := collModel{}
	accts := make([]*perf.Account, nAcct)
	next := 0
	rkey := func() string { next++; return fmt.Sprintf("k%06d", next) }
	for i := range accts {
		a, err := perf.NewAccount(perf.K256, fmt.Sprintf("u%d.test", i), n.plc, n.hosts[i%2])
		if err != nil {
			t.Fatal(err)
		}
		accts[i] = a
		// The first commit: an anchor record that is never deleted (a
		// repo is not emptied) and one record of a random collection.
		cl := colls[rng.IntN(nColl)]
		k := rkey()
		ev, err := a.CommitWrites([]perf.Write{pw("create", "app.test.anchor", "self"), pw("create", cl, k)})
		if err != nil {
			t.Fatal(err)
		}
		model[a.DID] = map[string]map[string]bool{"app.test.anchor": {"self": true}, cl: {k: true}}
		a.PDS().Emit(perf.Event{Commit: ev})
	}
	waitCommits(t, c, nAcct)
	check := func(step int) {
		t.Helper()
		for _, cl := range append(colls, "app.test.anchor") {
			got := listByCollection(t, n.r, cl, 37)
			if want := model.holders(cl); !slices.Equal(got, want) {
				t.Fatalf("step %d, %s: index lists %d DIDs, model %d\nindex %v\nmodel %v", step, cl, len(got), len(want), got, want)
			}
		}
	}
	check(0)
	lastDeletes := 0
	for step := 1; step <= steps; step++ {
		commits := 0
		for _, i := range rng.Perm(nAcct)[:120] {
			a := accts[i]
			cs := model[a.DID]
			var ws []perf.Write
			touched := map[string]bool{}
			for range 1 + rng.IntN(4) {
				cl := colls[rng.IntN(nColl)]
				keys := cs[cl]
				var live []string
				for k := range keys {
					if !touched[cl+"/"+k] {
						live = append(live, k)
					}
				}
				sort.Strings(live)
				switch x := rng.IntN(10); {
				case len(live) > 0 && x < 5: // delete, often the last one
					k := live[rng.IntN(len(live))]
					ws = append(ws, pw("delete", cl, k))
					touched[cl+"/"+k] = true
					delete(keys, k)
					if len(keys) == 0 {
						lastDeletes++
					}
				case len(live) > 0 && x < 7:
					k := live[rng.IntN(len(live))]
					ws = append(ws, pw("update", cl, k))
					touched[cl+"/"+k] = true
				default:
					k := rkey()
					if cs[cl] == nil {
						cs[cl] = map[string]bool{}
					}
					cs[cl][k] = true
					touched[cl+"/"+k] = true
					ws = append(ws, pw("create", cl, k))
				}
			}
			ev, err := a.CommitWrites(ws)
			if err != nil {
				t.Fatal(err)
			}
			a.PDS().Emit(perf.Event{Commit: ev})
			commits++
		}
		waitCommits(t, c, commits)
		check(step)
	}
	if lastDeletes < 50 {
		t.Fatalf("only %d last-record deletes: the test does not exercise them", lastDeletes)
	}
	st := n.r.Collections().Stats()
	var entries int64
	for _, cl := range append(colls, "app.test.anchor") {
		entries += int64(len(model.holders(cl)))
	}
	if st.Entries != entries || st.ResyncPending != 0 {
		t.Fatalf("stats %+v, model entries %d", st, entries)
	}
	// Every count is exact (all accounts were seen from their first commit).
	info, err := n.r.coll.ix.DID(accts[0].DID)
	if err != nil || !info.Born {
		t.Fatalf("DID info %+v %v", info, err)
	}
	for _, cnt := range info.Counts {
		if cnt.Unknown || cnt.N != int64(len(model[accts[0].DID][cnt.Collection])) {
			t.Fatalf("count %+v, model %d", cnt, len(model[accts[0].DID][cnt.Collection]))
		}
	}
	t.Logf("%d last-record deletes, %d entries, %d collections", lastDeletes, st.Entries, st.Collections)
}

// TestCollectionResyncMidLife: an account the relay first sees mid-life
// has unknown counts; a delete that would take one to zero triggers a
// resync from the synthetic PDS's getRepo (a real CAR walked with indigo's
// MST code), which makes the counts exact; a #sync to a new rev whose
// changes the relay never saw as ops triggers a resync too.
func TestCollectionResyncMidLife(t *testing.T) {
	n := startTestNet(t, 1, nil)
	p := n.hosts[0]
	a, err := perf.NewAccount(perf.K256, "mid.test", n.plc, p)
	if err != nil {
		t.Fatal(err)
	}
	// Before the relay crawls: 3 records in x, 1 in y (not seen).
	mustWrites := func(ws ...perf.Write) *comatproto.SyncSubscribeRepos_Commit {
		t.Helper()
		ev, err := a.CommitWrites(ws)
		if err != nil {
			t.Fatal(err)
		}
		return ev
	}
	const x, y, z = "com.example.x", "com.example.y", "com.example.z"
	mustWrites(pw("create", x, "1"), pw("create", x, "2"), pw("create", x, "3"), pw("create", y, "1"))
	n.crawl(t, p)
	c := dialConsumer(t, n.r.Addr(), "")
	// Seen: a create in z, a delete in y (unknown baseline: y's count
	// would reach zero -> resync).
	p.Emit(perf.Event{Commit: mustWrites(pw("create", z, "1"))})
	waitCommits(t, c, 1)
	syncIndex(t, n.r)
	info, _ := n.r.coll.ix.DID(a.DID)
	if info.Born || len(info.Counts) != 1 || !info.Counts[0].Unknown {
		t.Fatalf("mid-life DID: %+v", info)
	}
	if got := listByCollection(t, n.r, x, 10); len(got) != 0 {
		t.Fatalf("x is not known yet: %v", got)
	}
	p.Emit(perf.Event{Commit: mustWrites(pw("delete", y, "1"))})
	waitCommits(t, c, 1)
	svc := n.r.Collections()
	waitUntil(t, 20*time.Second, "resync after unknown count reached zero", func() bool {
		info, _ = n.r.coll.ix.DID(a.DID)
		return info.Born && info.Resync == ""
	})
	wantCounts := func(want map[string]int64) {
		t.Helper()
		info, _ := n.r.coll.ix.DID(a.DID)
		got := map[string]int64{}
		for _, c := range info.Counts {
			if c.Unknown {
				t.Fatalf("unknown after resync: %+v", info)
			}
			got[c.Collection] = c.N
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("counts %v, want %v", got, want)
		}
	}
	wantCounts(map[string]int64{x: 3, z: 1})
	for _, cl := range []string{x, z} {
		if got := listByCollection(t, n.r, cl, 10); !slices.Equal(got, []string{a.DID}) {
			t.Fatalf("%s: %v", cl, got)
		}
	}
	if got := listByCollection(t, n.r, y, 10); len(got) != 0 {
		t.Fatalf("ghost in y: %v", got)
	}
	// Exact now: deleting x's records one by one removes it at the last.
	p.Emit(perf.Event{Commit: mustWrites(pw("delete", x, "1"), pw("delete", x, "2"))})
	p.Emit(perf.Event{Commit: mustWrites(pw("delete", x, "3"))})
	waitCommits(t, c, 2)
	if got := listByCollection(t, n.r, x, 10); len(got) != 0 {
		t.Fatalf("ghost in x after its last delete: %v", got)
	}
	// Changes the relay never sees as ops, then a #sync at the new rev.
	mustWrites(pw("create", y, "9"), pw("delete", z, "1"))
	sy, err := a.Sync()
	if err != nil {
		t.Fatal(err)
	}
	done := svc.Stats().Resyncs["done"]
	p.Emit(perf.Event{Sync: sy})
	waitUntil(t, 20*time.Second, "resync after #sync", func() bool {
		info, _ = n.r.coll.ix.DID(a.DID)
		return svc.Stats().Resyncs["done"] > done && info.Born && info.Resync == ""
	})
	wantCounts(map[string]int64{y: 1})
	if got := listByCollection(t, n.r, z, 10); len(got) != 0 {
		t.Fatalf("z after #sync resync: %v", got)
	}
	if got := listByCollection(t, n.r, y, 10); !slices.Equal(got, []string{a.DID}) {
		t.Fatalf("y after #sync resync: %v", got)
	}
}

// TestListReposByCollectionBadInput: lexicon errors as JSON 400s.
func TestListReposByCollectionBadInput(t *testing.T) {
	r := startRelay(t, testConfig(t))
	base := "http://" + r.Addr() + "/xrpc/com.atproto.sync.listReposByCollection"
	for _, q := range []string{
		"", "collection=", "collection=notansid", "collection=com.example..x", "collection=" + strings.Repeat("a.", 200) + "b",
		"collection=com.example.x&limit=0", "collection=com.example.x&limit=2001", "collection=com.example.x&limit=abc",
		"collection=com.example.x&limit=-1", "collection=com.example.x&cursor=%25%25%25", "collection=com.example.x&cursor=bm90LWEtZGlk",
		"collection=com.example.x&cursor=!!!",
	} {
		res, err := http.Get(base + "?" + q)
		if err != nil {
			t.Fatal(err)
		}
		var e xrpcError
		_ = json.NewDecoder(res.Body).Decode(&e)
		res.Body.Close()
		if res.StatusCode != http.StatusBadRequest || e.Error != lexicon.BadRequest || e.Message == "" {
			t.Errorf("%q: %d %+v, want 400 BadRequest", q, res.StatusCode, e)
		}
	}
	// Valid: an empty page, no cursor; limit 1 and 2000 are accepted.
	for _, q := range []string{"collection=com.example.x", "collection=com.example.x&limit=1", "collection=com.example.x&limit=2000&cursor=" + encodeCollectionCursor("did:plc:abc")} {
		res, err := http.Get(base + "?" + q)
		if err != nil {
			t.Fatal(err)
		}
		var out map[string]any
		_ = json.NewDecoder(res.Body).Decode(&out)
		res.Body.Close()
		if res.StatusCode != http.StatusOK || fmt.Sprint(out["repos"]) != "[]" || out["cursor"] != nil {
			t.Errorf("%q: %d %v", q, res.StatusCode, out)
		}
	}
	res, err := http.Post(base+"?collection=com.example.x", "application/json", nil)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST: %d", res.StatusCode)
	}
}

var _ = collection.ReasonSync

// syncIndex waits until the index has applied everything durable.
func syncIndex(t testing.TB, r *Relay) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := r.Collections().WaitApplied(ctx, r.log.DurableSeq()); err != nil {
		t.Fatal(err)
	}
}

func pw(action, coll, rkey string) perf.Write {
	return perf.Write{Action: action, Collection: coll, RKey: rkey}
}

// TestCollectionAccountStatus: a deactivated account is kept but not
// listed, and listed again when active; a takedown removes it from every
// collection; its reversal resyncs it from the PDS.
func TestCollectionAccountStatus(t *testing.T) {
	n := startTestNet(t, 1, nil)
	p := n.hosts[0]
	n.crawl(t, p)
	c := dialConsumer(t, n.r.Addr(), "")
	a, err := perf.NewAccount(perf.K256, "st.test", n.plc, p)
	if err != nil {
		t.Fatal(err)
	}
	const x = "com.example.status"
	ev, err := a.CommitWrites([]perf.Write{pw("create", x, "1"), pw("create", "app.test.anchor", "self")})
	if err != nil {
		t.Fatal(err)
	}
	p.Emit(perf.Event{Commit: ev})
	waitCommits(t, c, 1)
	if got := listByCollection(t, n.r, x, 10); !slices.Equal(got, []string{a.DID}) {
		t.Fatalf("listed %v", got)
	}
	p.Emit(perf.Event{Account: a.AccountEvent(false, "deactivated")})
	waitUntil(t, 10*time.Second, "deactivated account hidden", func() bool {
		return len(listByCollection(t, n.r, x, 10)) == 0
	})
	p.Emit(perf.Event{Account: a.AccountEvent(true, "")})
	waitUntil(t, 10*time.Second, "reactivated account listed", func() bool {
		return slices.Equal(listByCollection(t, n.r, x, 10), []string{a.DID})
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := n.r.TakedownAccount(ctx, a.DID); err != nil {
		t.Fatal(err)
	}
	// The #account takendown is durable when TakedownAccount returns, and
	// the API must know it at once.
	if got := listByCollection(t, n.r, "app.test.anchor", 10); len(got) != 0 {
		t.Fatalf("taken-down account listed: %v", got)
	}
	info, _ := n.r.coll.ix.DID(a.DID)
	if info.Status != "removed" || len(info.Counts) != 0 {
		t.Fatalf("after takedown %+v", info)
	}
	if _, err := n.r.ReverseTakedown(ctx, a.DID); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 20*time.Second, "resync after the takedown's reversal", func() bool {
		info, _ = n.r.coll.ix.DID(a.DID)
		return info.Born && info.Resync == "" && slices.Equal(listByCollection(t, n.r, x, 10), []string{a.DID})
	})
}
