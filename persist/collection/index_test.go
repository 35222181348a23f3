package collection

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"sort"
	"testing"
)

func openTest(t testing.TB) *Index {
	t.Helper()
	ix, err := Open(t.TempDir(), 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ix.Close() })
	return ix
}

// model is the truth: the records per (did, collection).
type model struct {
	counts map[string]map[string]int64
	revs   map[string]int
}

func (m *model) rev(did string) string {
	m.revs[did]++
	return fmt.Sprintf("r%08d", m.revs[did])
}

// listAll pages through a collection with a small page.
func listAll(t testing.TB, ix *Index, coll string, page int) []string {
	t.Helper()
	var out []string
	after := ""
	for {
		dids, more, err := ix.List(coll, after, page)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, dids...)
		if !more {
			return out
		}
		after = dids[len(dids)-1]
	}
}

func (m *model) holders(coll string) []string {
	var out []string
	for did, cs := range m.counts {
		if cs[coll] > 0 {
			out = append(out, did)
		}
	}
	sort.Strings(out)
	return out
}

// TestApplyExactFromBirth: DIDs seen from their first commit are exact
// after every batch, including the last record of a collection deleted.
func TestApplyExactFromBirth(t *testing.T) {
	ix := openTest(t)
	rng := rand.New(rand.NewPCG(1, 2))
	m := &model{counts: map[string]map[string]int64{}, revs: map[string]int{}}
	const nDID, nColl = 200, 30
	colls := make([]string, nColl)
	for i := range colls {
		colls[i] = fmt.Sprintf("com.example.c%02d", i)
	}
	seq := int64(0)
	for step := 0; step < 60; step++ {
		var batch []Change
		for range 100 {
			did := fmt.Sprintf("did:plc:%04d", rng.IntN(nDID))
			cs := m.counts[did]
			first := cs == nil
			if first {
				cs = map[string]int64{}
				m.counts[did] = cs
			}
			ch := Change{Kind: KindCommit, DID: did, Rev: m.rev(did), First: first}
			for range 1 + rng.IntN(4) {
				c := colls[rng.IntN(nColl)]
				switch {
				case cs[c] > 0 && rng.IntN(2) == 0:
					cs[c]--
					ch.Ops = append(ch.Ops, Op{Delete, c})
				case cs[c] > 0 && rng.IntN(3) == 0:
					ch.Ops = append(ch.Ops, Op{Update, c})
				default:
					cs[c]++
					ch.Ops = append(ch.Ops, Op{Create, c})
				}
			}
			seq++
			batch = append(batch, ch)
		}
		if _, err := ix.Apply(batch, seq); err != nil {
			t.Fatal(err)
		}
		var entries int64
		for _, c := range colls {
			want := m.holders(c)
			entries += int64(len(want))
			if got := listAll(t, ix, c, 7); !slices.Equal(got, want) {
				t.Fatalf("step %d %s: index %v, model %v", step, c, got, want)
			}
		}
		if s := ix.Stats(); s.Entries != entries || s.ResyncPending != 0 || s.AppliedSeq != seq {
			t.Fatalf("stats %+v, want entries %d, applied %d", s, entries, seq)
		}
	}
}

// TestUnknownBaseline: a DID first seen mid-life is listed while its
// count is unknown, a delete reaching zero owes a resync, and the resync
// makes it exact with the ops applied during it.
func TestUnknownBaseline(t *testing.T) {
	ix := openTest(t)
	const did, c = "did:plc:mid", "com.example.a"
	must := func(r Result, err error) Result {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	// True repo: 3 records in c before the relay saw it. It sees a create
	// then two deletes.
	must(ix.Apply([]Change{{Kind: KindCommit, DID: did, Rev: "r2", Ops: []Op{{Create, c}}}}, 1))
	if got := listAll(t, ix, c, 10); !slices.Equal(got, []string{did}) {
		t.Fatalf("listed %v", got)
	}
	r := must(ix.Apply([]Change{{Kind: KindCommit, DID: did, Rev: "r3", Ops: []Op{{Delete, c}}}}, 2))
	if !slices.Equal(r.Resync, []string{did}) {
		t.Fatalf("a delete taking the lower bound 1 to 0 must owe a resync: %v", r.Resync)
	}
	info, _ := ix.DID(did)
	if info.Born || len(info.Counts) != 1 || !info.Counts[0].Unknown || info.Resync != ReasonUnknownZero {
		t.Fatalf("after delete to zero: %+v", info)
	}
	if got := listAll(t, ix, c, 10); !slices.Equal(got, []string{did}) {
		t.Fatalf("unknown count at zero must stay listed until the resync: %v", got)
	}
	// A resync begins; an op at r4 arrives; the snapshot is at r3 (before it).
	if err := ix.BeginResync(did); err != nil {
		t.Fatal(err)
	}
	must(ix.Apply([]Change{{Kind: KindCommit, DID: did, Rev: "r4", Ops: []Op{{Delete, c}, {Create, "com.example.b"}}}}, 3))
	if err := ix.FinishResync(did, map[string]int64{c: 3 - 1}, "r3"); err != nil { // 3 +1 -2 at r3
		t.Fatal(err)
	}
	info, _ = ix.DID(did)
	want := []Count{{"com.example.b", 1, false}, {c, 1, false}}
	sort.Slice(info.Counts, func(i, j int) bool { return info.Counts[i].Collection > info.Counts[j].Collection })
	if !info.Born || info.Resync != "" || info.Rev != "r4" || !slices.Equal(info.Counts, want) {
		t.Fatalf("after resync: %+v", info)
	}
	// Now exact: the last delete removes it.
	must(ix.Apply([]Change{{Kind: KindCommit, DID: did, Rev: "r5", Ops: []Op{{Delete, c}}}}, 4))
	if got := listAll(t, ix, c, 10); len(got) != 0 {
		t.Fatalf("ghost after last delete: %v", got)
	}
	// An op at or below the DID's rev is skipped.
	must(ix.Apply([]Change{{Kind: KindCommit, DID: did, Rev: "r5", Ops: []Op{{Create, c}}}}, 5))
	if got := listAll(t, ix, c, 10); len(got) != 0 {
		t.Fatalf("replayed op applied: %v", got)
	}
	if s := ix.Stats(); s.Entries != 1 || s.Collections != 1 || s.ResyncPending != 0 {
		t.Fatalf("stats %+v", s)
	}
}

func TestResyncStaleAndSync(t *testing.T) {
	ix := openTest(t)
	const did = "did:plc:x"
	if _, err := ix.Apply([]Change{{Kind: KindCommit, DID: did, Rev: "r5", First: true, Ops: []Op{{Create, "a.b.c"}}}}, 1); err != nil {
		t.Fatal(err)
	}
	if err := ix.BeginResync(did); err != nil {
		t.Fatal(err)
	}
	if err := ix.FinishResync(did, map[string]int64{}, "r4"); err != ErrStale {
		t.Fatalf("snapshot older than the index: %v", err)
	}
	// #sync to a new rev: counts become unknown, resync owed; the sync's
	// rev bounds the snapshot.
	r, err := ix.Apply([]Change{{Kind: KindSync, DID: did, Rev: "r9"}}, 2)
	if err != nil || !slices.Equal(r.Resync, []string{did}) {
		t.Fatalf("sync: %v %v", r, err)
	}
	info, _ := ix.DID(did)
	if info.Born || !info.Counts[0].Unknown || info.Resync != ReasonSync {
		t.Fatalf("after sync: %+v", info)
	}
	if err := ix.BeginResync(did); err != nil {
		t.Fatal(err)
	}
	if err := ix.FinishResync(did, map[string]int64{"x.y.z": 2}, "r9"); err != nil {
		t.Fatal(err)
	}
	if got := listAll(t, ix, "a.b.c", 10); len(got) != 0 {
		t.Fatalf("a.b.c after resync: %v", got)
	}
	if got := listAll(t, ix, "x.y.z", 10); !slices.Equal(got, []string{did}) {
		t.Fatalf("x.y.z after resync: %v", got)
	}
}

func TestAccountStatus(t *testing.T) {
	ix := openTest(t)
	const did, c = "did:plc:acct", "a.b.c"
	apply := func(seq int64, ch Change) {
		t.Helper()
		if _, err := ix.Apply([]Change{ch}, seq); err != nil {
			t.Fatal(err)
		}
	}
	apply(1, Change{Kind: KindCommit, DID: did, Rev: "r1", First: true, Ops: []Op{{Create, c}, {Create, "d.e.f"}}})
	apply(2, Change{Kind: KindAccount, DID: did, Active: false, Status: "deactivated"})
	if got := listAll(t, ix, c, 10); len(got) != 0 {
		t.Fatalf("deactivated listed: %v", got)
	}
	if s := ix.Stats(); s.Entries != 0 || s.Collections != 0 {
		t.Fatalf("stats while hidden %+v", s)
	}
	apply(3, Change{Kind: KindAccount, DID: did, Active: true})
	if got := listAll(t, ix, c, 10); !slices.Equal(got, []string{did}) {
		t.Fatalf("reactivated not listed: %v", got)
	}
	apply(4, Change{Kind: KindAccount, DID: did, Active: false, Status: "takendown"})
	info, _ := ix.DID(did)
	if info.Status != "removed" || len(info.Counts) != 0 || listAll(t, ix, c, 10) != nil {
		t.Fatalf("takedown: %+v", info)
	}
	// Reversal: active again, nothing known, resync owed.
	apply(5, Change{Kind: KindAccount, DID: did, Active: true})
	info, _ = ix.DID(did)
	if info.Status != "active" || info.Resync != ReasonReactivated {
		t.Fatalf("reversal: %+v", info)
	}
	if ok, err := ix.RemoveDID(did); !ok || err != nil {
		t.Fatal(ok, err)
	}
	if s := ix.Stats(); s.Entries != 0 || s.ResyncPending != 0 {
		t.Fatalf("stats after remove %+v", s)
	}
}

// TestReopen: the checkpoint, the totals and the data survive a reopen.
func TestReopen(t *testing.T) {
	dir := t.TempDir()
	ix, err := Open(dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ix.Apply([]Change{{Kind: KindCommit, DID: "did:plc:a", Rev: "1", First: true, Ops: []Op{{Create, "a.b.c"}}}}, 42); err != nil {
		t.Fatal(err)
	}
	ix.Close()
	ix, err = Open(dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer ix.Close()
	if s := ix.Stats(); s.AppliedSeq != 42 || s.Entries != 1 || s.Collections != 1 {
		t.Fatalf("after reopen %+v", s)
	}
}

func TestBackfillAdd(t *testing.T) {
	ix := openTest(t)
	if _, err := ix.Apply([]Change{{Kind: KindCommit, DID: "did:plc:born", Rev: "1", First: true, Ops: []Op{{Create, "x.y.z"}}}}, 1); err != nil {
		t.Fatal(err)
	}
	p := BackfillProgress{Source: "s", Collections: []string{"a.b.c"}, Cursor: "c1", State: "running"}
	if err := ix.AddBackfilled("a.b.c", []string{"did:plc:born", "did:plc:new"}, p); err != nil {
		t.Fatal(err)
	}
	if got := listAll(t, ix, "a.b.c", 10); !slices.Equal(got, []string{"did:plc:new"}) {
		t.Fatalf("backfilled: %v (a born DID's exact zero is kept)", got)
	}
	info, _ := ix.DID("did:plc:new")
	if !info.Backfilled || info.Resync != ReasonBackfill || !info.Counts[0].Unknown {
		t.Fatalf("backfilled DID %+v", info)
	}
	got, ok, err := ix.Backfill()
	if err != nil || !ok || got.Cursor != "c1" {
		t.Fatalf("progress %+v %v %v", got, ok, err)
	}
}
