package collections

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
	comatproto "github.com/bluesky-social/indigo/api/atproto"
	"github.com/bluesky-social/indigo/atproto/repo"
	"github.com/bluesky-social/indigo/atproto/syntax"
	"github.com/ipfs/go-cid"

	"github.com/relay/relay/perf"
	"github.com/relay/relay/persist/collection"
	"github.com/relay/relay/persist/eventlog"
	"github.com/relay/relay/wsframe"
)

func indigoDir(t testing.TB) string {
	t.Helper()
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "github.com/bluesky-social/indigo").Output()
	if err != nil {
		t.Skipf("indigo module dir: %v", err)
	}
	return strings.TrimSpace(string(out))
}

// TestCountCARIndigoRepos counts real repos from indigo's testdata and
// checks each counted key against the record it names: the record block
// is in the CAR and its $type is the collection of the key.
func TestCountCARIndigoRepos(t *testing.T) {
	dir := filepath.Join(indigoDir(t), "testing", "testdata")
	seen := 0
	for _, name := range []string{"greenground.repo.car", "paul_staging.repo.car", "fakermaker.repo.car", "repo_slice.car", "bafyreieovfuizojpw3zresz7sx3nk4trm2by23pt5rxbey3jme4uo5ogiu.car"} {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		counts, rev, err := CountCAR(context.Background(), bytes.NewReader(b), "")
		if err != nil {
			// paul_staging is a version-2 repo and repo_slice a partial
			// one: indigo's v3 reader refuses them, so must we.
			t.Logf("%s: refused: %v", name, err)
			continue
		}
		_, rp, err := repo.LoadRepoFromCAR(context.Background(), bytes.NewReader(b))
		if err != nil {
			t.Fatal(err)
		}
		typed := map[string]int64{}
		var total int64
		err = rp.MST.Walk(func(key []byte, c cid.Cid) error {
			coll, rkey, _ := strings.Cut(string(key), "/")
			rec, _, err := rp.GetRecordBytes(context.Background(), syntax.NSID(coll), syntax.RecordKey(rkey))
			if err != nil {
				return fmt.Errorf("record %s: %w", key, err)
			}
			if !bytes.Contains(rec, []byte(coll)) {
				return fmt.Errorf("record %s does not name its collection", key)
			}
			typed[coll]++
			total++
			return nil
		})
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if fmt.Sprint(counts) != fmt.Sprint(typed) || total == 0 || rev == "" {
			t.Fatalf("%s: CountCAR %v rev %q, records %v", name, counts, rev, typed)
		}
		seen++
		t.Logf("%s: rev %s, %d records in %d collections: %v", name, rev, total, len(counts), counts)
	}
	if seen < 1 { // only greenground is a version-3 repo in this indigo version
		t.Fatalf("only %d indigo repos counted", seen)
	}
	if _, _, err := CountCAR(context.Background(), strings.NewReader("not a car"), ""); err == nil {
		t.Fatal("garbage accepted")
	}
}

type testSvc struct {
	s   *Service
	ix  *collection.Index
	log *eventlog.Log
}

func startSvc(t *testing.T, opts Options) *testSvc {
	t.Helper()
	dir := t.TempDir()
	ix, err := collection.Open(filepath.Join(dir, "collections"), 0)
	if err != nil {
		t.Fatal(err)
	}
	lg, err := eventlog.Open(eventlog.Options{Dir: filepath.Join(dir, "events")})
	if err != nil {
		t.Fatal(err)
	}
	opts.Index, opts.Log, opts.Metrics = ix, lg, metrics.NewSet()
	if opts.CleanInterval == 0 {
		opts.CleanInterval = -1
	}
	s := New(opts)
	s.Start()
	t.Cleanup(func() {
		s.Close()
		ix.Close()
		lg.Close()
	})
	return &testSvc{s: s, ix: ix, log: lg}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestResyncFromGetRepo: an admin resync fetches a real repo CAR over
// HTTP and rebuilds the DID's counts; an oversized CAR fails too_big and
// leaves the DID owed a resync; a 400 RepoNotFound removes the DID.
func TestResyncFromGetRepo(t *testing.T) {
	car, err := os.ReadFile(filepath.Join(indigoDir(t), "testing", "testdata", "greenground.repo.car"))
	if err != nil {
		t.Fatal(err)
	}
	commit, _, err := repo.LoadCommitFromCAR(context.Background(), bytes.NewReader(car))
	if err != nil {
		t.Fatal(err)
	}
	did := commit.DID
	want, _, _ := CountCAR(context.Background(), bytes.NewReader(car), did)
	var mode atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/xrpc/com.atproto.sync.getRepo" || r.URL.Query().Get("did") != did {
			http.Error(w, "bad request", 400)
			return
		}
		if mode.Load() == 1 {
			w.WriteHeader(400)
			_ = json.NewEncoder(w).Encode(map[string]string{"error": "RepoNotFound"})
			return
		}
		w.Header().Set("Content-Type", "application/vnd.ipld.car")
		_, _ = w.Write(car)
	}))
	defer srv.Close()
	pdsFor := func(context.Context, string) (string, error) { return srv.URL, nil }

	small := startSvc(t, Options{PDSFor: pdsFor, MaxRepoBytes: int64(len(car) / 2)})
	if ok, err := small.s.Resync(did, true); !ok || err != nil {
		t.Fatal(ok, err)
	}
	waitFor(t, "too_big failure", func() bool { return small.s.rs.failed["too_big"].Get() > 0 })
	if info, _ := small.ix.DID(did); info.Resync != collection.ReasonAdmin {
		t.Fatalf("after a failed resync the DID must stay owed: %+v", info)
	}

	ts := startSvc(t, Options{PDSFor: pdsFor})
	if ok, err := ts.s.Resync(did, true); !ok || err != nil {
		t.Fatal(ok, err)
	}
	waitFor(t, "resync done", func() bool { return ts.s.rs.done.Get() == 1 })
	info, err := ts.ix.DID(did)
	if err != nil || !info.Born || info.Resync != "" || info.Rev != commit.Rev {
		t.Fatalf("after resync %+v %v", info, err)
	}
	got := map[string]int64{}
	for _, c := range info.Counts {
		got[c.Collection] = c.N
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("counts %v, CAR %v", got, want)
	}
	for coll := range want {
		if dids, _, _ := ts.ix.List(coll, "", 10); !slices.Equal(dids, []string{did}) {
			t.Fatalf("%s lists %v", coll, dids)
		}
	}
	mode.Store(1)
	if ok, err := ts.s.Resync(did, false); !ok || err != nil {
		t.Fatal(ok, err)
	}
	waitFor(t, "gone", func() bool { return ts.s.rs.failed["gone"].Get() == 1 })
	if info, _ := ts.ix.DID(did); info.Known {
		t.Fatalf("a repo the PDS does not have stays indexed: %+v", info)
	}
}

// fakeUpstream pages listReposByCollection over a fixed DID list.
type fakeUpstream struct {
	dids  map[string][]string
	pages atomic.Int64
	fail  atomic.Bool // answer 500
	block chan struct{}
}

func (f *fakeUpstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if f.block != nil {
		<-f.block
	}
	if r.Context().Err() != nil {
		return // the client gave up (a cancelled backfill): not a page served
	}
	if f.fail.Load() {
		http.Error(w, "down", 500)
		return
	}
	q := r.URL.Query()
	all := f.dids[q.Get("collection")]
	limit := 0
	fmt.Sscan(q.Get("limit"), &limit)
	limit = min(limit, 7) // small pages to exercise the cursor
	start := 0
	if c := q.Get("cursor"); c != "" {
		start, _ = slices.BinarySearch(all, c)
		start++
	}
	end := min(start+limit, len(all))
	out := map[string]any{"repos": []map[string]string{}}
	repos := []map[string]string{}
	for _, d := range all[start:end] {
		repos = append(repos, map[string]string{"did": d})
	}
	out["repos"] = repos
	if end < len(all) {
		out["cursor"] = all[end-1]
	}
	f.pages.Add(1)
	_ = json.NewEncoder(w).Encode(out)
}

// TestBackfillInterruptedAndResumed: a backfill pages a fake upstream,
// is cancelled midway, resumes from its stored cursor (also across a
// service restart), and ends with exactly the upstream's DIDs listed,
// each with an unknown count and owed a resync.
func TestBackfillInterruptedAndResumed(t *testing.T) {
	up := &fakeUpstream{dids: map[string][]string{}}
	for i := range 60 {
		d := fmt.Sprintf("did:plc:bf%04d", i)
		up.dids["com.example.a"] = append(up.dids["com.example.a"], d)
		if i%3 == 0 {
			up.dids["com.example.b"] = append(up.dids["com.example.b"], d)
		}
	}
	srv := httptest.NewServer(up)
	defer srv.Close()
	dir := t.TempDir()
	open := func() (*Service, func()) {
		ix, err := collection.Open(filepath.Join(dir, "collections"), 0)
		if err != nil {
			t.Fatal(err)
		}
		lg, err := eventlog.Open(eventlog.Options{Dir: filepath.Join(dir, "events")})
		if err != nil {
			t.Fatal(err)
		}
		s := New(Options{Index: ix, Log: lg, Metrics: metrics.NewSet(), CleanInterval: -1,
			PDSFor:       func(context.Context, string) (string, error) { return "", fmt.Errorf("no PDS in this test") },
			ResyncRescan: time.Hour})
		s.Start()
		return s, func() { s.Close(); ix.Close(); lg.Close() }
	}
	s, closeFn := open()
	up.block = make(chan struct{})
	if _, err := s.StartBackfill(srv.URL, []string{"com.example.a", "com.example.b"}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.StartBackfill(srv.URL, []string{"com.example.a"}); err != ErrBackfillRunning {
		t.Fatalf("second start: %v", err)
	}
	// Let 3 pages through, then cancel.
	for range 3 {
		up.block <- struct{}{}
	}
	waitFor(t, "3 pages", func() bool { st, _ := s.BackfillStatus(); return st.Pages == 3 })
	st, err := s.CancelBackfill()
	if err != nil || st.State != "cancelled" || st.Running {
		t.Fatalf("cancel: %+v %v", st, err)
	}
	pagesBefore := st.Pages
	closeFn()
	close(up.block) // from now on every request is served at once

	// Restart the service: the stored progress is kept; a start with the
	// same source and collections resumes at the stored cursor.
	s, closeFn = open()
	defer closeFn()
	st, ok := s.BackfillStatus()
	if !ok || st.State != "cancelled" || st.Pages != pagesBefore || st.Cursor == "" {
		t.Fatalf("after restart %+v", st)
	}
	served := up.pages.Load()
	if _, err := s.StartBackfill(srv.URL, []string{"com.example.a", "com.example.b"}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "backfill done", func() bool { st, _ := s.BackfillStatus(); return st.State == "done" && !st.Running })
	st, _ = s.BackfillStatus()
	// 60 DIDs in pages of 7 = 9 pages for a, 20 in 3 pages for b.
	if st.Pages != 12 || st.Added != 80 {
		t.Fatalf("done: %+v (pages before cancel %d)", st, pagesBefore)
	}
	if resumed := up.pages.Load() - served; resumed != 12-pagesBefore {
		t.Fatalf("resumed backfill fetched %d pages, want %d (no page twice)", resumed, 12-pagesBefore)
	}
	for coll, want := range up.dids {
		var got []string
		after := ""
		for {
			d, more, err := s.ix.List(coll, after, 13)
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, d...)
			if !more {
				break
			}
			after = d[len(d)-1]
		}
		if !slices.Equal(got, want) {
			t.Fatalf("%s: %v, want %v", coll, got, want)
		}
	}
	info, _ := s.ix.DID("did:plc:bf0003")
	if !info.Backfilled || info.Resync != collection.ReasonBackfill || len(info.Counts) != 2 || !info.Counts[0].Unknown {
		t.Fatalf("backfilled DID %+v", info)
	}
	if s.ix.Stats().ResyncPending != 60 {
		t.Fatalf("stats %+v", s.ix.Stats())
	}
	// A failing upstream ends a backfill as failed after its retries.
	backfillBackoff = time.Millisecond
	defer func() { backfillBackoff = 500 * time.Millisecond }()
	up.fail.Store(true)
	if _, err := s.StartBackfill(srv.URL, []string{"com.example.c"}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "failed", func() bool { st, _ := s.BackfillStatus(); return st.State == "failed" && !st.Running })
}

// TestCleaner removes DIDs the relay no longer has, keeps the others and
// backfilled DIDs still owed a resync.
func TestCleaner(t *testing.T) {
	has := map[string]bool{"did:plc:keep": true}
	ts := startSvc(t, Options{AccountExists: func(_ context.Context, did string) (bool, error) { return has[did], nil },
		PDSFor: func(context.Context, string) (string, error) { return "", fmt.Errorf("none") }, ResyncRescan: time.Hour})
	ch := []collection.Change{
		{Kind: collection.KindCommit, DID: "did:plc:keep", Rev: "1", First: true, Ops: []collection.Op{{Action: collection.Create, Collection: "a.b.c"}}},
		{Kind: collection.KindCommit, DID: "did:plc:gone", Rev: "1", First: true, Ops: []collection.Op{{Action: collection.Create, Collection: "a.b.c"}}},
	}
	if _, err := ts.ix.Apply(ch, 0); err != nil {
		t.Fatal(err)
	}
	if err := ts.ix.AddBackfilled("a.b.c", []string{"did:plc:backfilled"}, collection.BackfillProgress{}); err != nil {
		t.Fatal(err)
	}
	n, err := ts.s.Clean(context.Background())
	if err != nil || n != 1 {
		t.Fatalf("clean: %d %v", n, err)
	}
	dids, _, _ := ts.ix.List("a.b.c", "", 10)
	if !slices.Equal(dids, []string{"did:plc:backfilled", "did:plc:keep"}) {
		t.Fatalf("after clean: %v", dids)
	}
	if ts.s.m.cleaned.Get() != 1 {
		t.Fatal("cleaned metric")
	}
}

// BenchmarkDecodeCommit: the follower's decode of a logged #commit frame
// (header + body, 1 op, ~1 KB of blocks) into a Change. Together with
// persist/collection's BenchmarkApplyCommit this is the index's cost per
// commit at ingest.
func BenchmarkDecodeCommit(b *testing.B) {
	a, err := perf.NewAccount(perf.K256, "bench.test", nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	for range 20 {
		if _, err := a.Commit(1); err != nil {
			b.Fatal(err)
		}
	}
	c, err := a.Commit(1)
	if err != nil {
		b.Fatal(err)
	}
	frame, err := perf.EncodeEvent(perf.Event{Commit: c}, 42)
	if err != nil {
		b.Fatal(err)
	}
	s := &Service{m: svcMetrics{decodeErrors: metrics.NewSet().NewCounter("x")}}
	b.SetBytes(int64(len(frame)))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		ch, ok := s.decode(eventlog.Record{Kind: kindCommit, Seq: 42, Payload: frame})
		if !ok || len(ch.Ops) != 1 {
			b.Fatal("decode")
		}
	}
}

// TestDecodeCommitFast: the fast decoder agrees with indigo's full one on
// the synthetic PDS's commits (creates, updates, deletes; first commit
// with since null, later ones with since).
func TestDecodeCommitFast(t *testing.T) {
	a, err := perf.NewAccount(perf.P256, "dec.test", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 200 {
		c, err := a.Commit(1 + i%7)
		if err != nil {
			t.Fatal(err)
		}
		frame, err := perf.EncodeEvent(perf.Event{Commit: c}, int64(i+1))
		if err != nil {
			t.Fatal(err)
		}
		_, _, body, err := wsframe.ParseEventHeader(frame)
		if err != nil {
			t.Fatal(err)
		}
		fast, err := decodeCommitFast(body)
		if err != nil {
			t.Fatal(err)
		}
		var full comatproto.SyncSubscribeRepos_Commit
		if err := full.UnmarshalCBOR(bytes.NewReader(body)); err != nil {
			t.Fatal(err)
		}
		want := collection.Change{Kind: collection.KindCommit, DID: full.Repo, Rev: full.Rev, First: full.Since == nil}
		for _, op := range full.Ops {
			act := map[string]collection.Action{"create": collection.Create, "update": collection.Update, "delete": collection.Delete}[op.Action]
			want.Ops = append(want.Ops, collection.Op{Action: act, Collection: collection.CollectionOf(op.Path)})
		}
		if fmt.Sprint(fast) != fmt.Sprint(want) {
			t.Fatalf("commit %d: fast %+v, full %+v", i, fast, want)
		}
		if i == 0 && !fast.First {
			t.Fatal("first commit has since null")
		}
		// Truncated bodies fail, never panic.
		for cut := 0; cut < len(body); cut += 97 {
			_, _ = decodeCommitFast(body[:cut])
		}
	}
}
