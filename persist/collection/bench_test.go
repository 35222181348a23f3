package collection

import (
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"testing"
	"time"
)

// BenchmarkApplyCommit: one commit of 1 op (the network's typical commit)
// applied by the follower, in batches of 256 records as it reads them.
// ns/op and allocs/op are per commit.
func BenchmarkApplyCommit(b *testing.B) {
	ix := openTest(b)
	colls := []string{"app.bsky.feed.like", "app.bsky.feed.post", "app.bsky.graph.follow", "app.bsky.feed.repost"}
	const batch = 256
	changes := make([]Change, 0, batch)
	rng := rand.New(rand.NewPCG(1, 1))
	seq := int64(0)
	dids := make([]string, 10000)
	for i := range dids {
		dids[i] = fmt.Sprintf("did:plc:%024x", uint64(i+1)*0x9e3779b97f4a7c15)
	}
	revs := make([]string, 1<<16)
	for i := range revs {
		revs[i] = fmt.Sprintf("3l%011d", i)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		// DIDs seen from birth (exact counts), revs increasing per DID
		// (the relay guarantees it; the index skips anything else).
		did := dids[rng.IntN(len(dids))]
		act := Create
		if rng.IntN(4) == 0 {
			act = Delete
		}
		seq++
		changes = append(changes, Change{Kind: KindCommit, DID: did, Rev: revs[seq%int64(len(revs))] + did[len(did)-4:], First: seq < 10000, Ops: []Op{{act, colls[rng.IntN(len(colls))]}}})
		if len(changes) == batch || i == b.N-1 {
			if _, err := ix.Apply(changes, seq); err != nil {
				b.Fatal(err)
			}
			changes = changes[:0]
		}
	}
}

// benchEntries is the index size of BenchmarkList (COLLECTION_BENCH_ENTRIES).
func benchEntries() int {
	if v, err := strconv.Atoi(os.Getenv("COLLECTION_BENCH_ENTRIES")); err == nil && v > 0 {
		return v
	}
	return 1_000_000
}

// BenchmarkList: a page of 500 of one collection, from a random cursor,
// in an index of N entries (DIDs x 4 collections, one of which, the
// listed one, holds a quarter of the entries). Reports the index's bytes
// on disk per entry after a compaction.
func BenchmarkList(b *testing.B) {
	n := benchEntries()
	dir := b.TempDir()
	ix, err := Open(dir, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer ix.Close()
	colls := []string{"app.bsky.feed.like", "app.bsky.feed.post", "app.bsky.graph.follow", "com.example.custom.record"}
	dids := n / len(colls)
	t0 := time.Now()
	changes := make([]Change, 0, 4096)
	seq := int64(0)
	for d := 0; d < dids; d++ {
		did := fmt.Sprintf("did:plc:%024x", uint64(d)*0x9e3779b97f4a7c15)
		ops := make([]Op, len(colls))
		for i, c := range colls {
			ops[i] = Op{Create, c}
		}
		seq++
		changes = append(changes, Change{Kind: KindCommit, DID: did, Rev: "3l000000000aa", First: true, Ops: ops})
		if len(changes) == cap(changes) || d == dids-1 {
			if _, err := ix.Apply(changes, seq); err != nil {
				b.Fatal(err)
			}
			changes = changes[:0]
		}
	}
	build := time.Since(t0)
	if err := ix.Flush(); err != nil {
		b.Fatal(err)
	}
	if err := ix.Compact(); err != nil {
		b.Fatal(err)
	}
	st := ix.Stats()
	b.Logf("%d entries (%d DIDs x %d collections) built in %v (%.1f µs/entry); %.1f MB on disk, %.1f bytes/entry",
		st.Entries, dids, len(colls), build, float64(build.Microseconds())/float64(st.Entries), float64(st.DiskBytes)/1e6, float64(st.DiskBytes)/float64(st.Entries))
	rng := rand.New(rand.NewPCG(2, 2))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		after := fmt.Sprintf("did:plc:%024x", rng.Uint64())
		got, _, err := ix.List("com.example.custom.record", after, 500)
		if err != nil {
			b.Fatal(err)
		}
		if len(got) == 0 && after < "did:plc:f" {
			b.Fatalf("empty page after %s", after)
		}
	}
	b.ReportMetric(float64(st.DiskBytes)/float64(st.Entries), "disk_bytes/entry")
}
