package relay

import (
	"github.com/bluesky-social/indigo/atproto/syntax"

	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/bluesky-social/indigo/atproto/atcrypto"

	"github.com/relay/relay/persist/meta"
)

// heapInUse is the live heap after a full collection.
func heapInUse() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// BenchmarkCacheEntryBytes measures the heap one cached account
// (accountState with a repo head, as after a commit) and one cached
// identity (identInfo with a parsed K-256 or P-256 key, a PDS and a handle)
// cost in a partition's maps, keys included. These figures turn the
// caches' byte budgets into entry bounds (cacheEntryBytes).
//
//	go test ./relay -run '^$' -bench CacheEntryBytes -benchtime 1x
func BenchmarkCacheEntryBytes(b *testing.B) {
	const n = 20000
	did := func(i int) string { return fmt.Sprintf("did:plc:%024d", i) }
	b.Run("account", func(b *testing.B) {
		for range b.N {
			base := heapInUse()
			m := make(map[string]*accountState)
			for i := range n {
				d := did(i)
				st := &accountState{acct: meta.Account{UID: uint64(i), DID: syntax.DID(d), HostID: 7, Status: meta.AccountActive, UpstreamStatus: meta.AccountActive, CreatedAt: time.Now()}}
				st.head = &repoHead{
					rev:       fmt.Sprintf("3lhhxizu%05d", i%100000),
					commitCID: fmt.Sprintf("bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr%05d", i%100000),
					dataCID:   fmt.Sprintf("bafyreif3737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr%05d", i%100000),
				}
				m[d] = st
			}
			b.ReportMetric(float64(heapInUse()-base)/n, "bytes/account")
			runtime.KeepAlive(m)
		}
	})
	for _, kt := range []string{"k256", "p256"} {
		b.Run("identity_"+kt, func(b *testing.B) {
			const keys = 64 // parsed from their multibase form, as resolution does
			var mb []string
			for range keys {
				var priv atcrypto.PrivateKey
				var err error
				if kt == "k256" {
					priv, err = atcrypto.GeneratePrivateKeyK256()
				} else {
					priv, err = atcrypto.GeneratePrivateKeyP256()
				}
				if err != nil {
					b.Fatal(err)
				}
				pub, err := priv.PublicKey()
				if err != nil {
					b.Fatal(err)
				}
				mb = append(mb, pub.Multibase())
			}
			for range b.N {
				base := heapInUse()
				m := make(map[string]*identInfo)
				for i := range n {
					d := did(i)
					key, err := atcrypto.ParsePublicMultibase(mb[i%keys])
					if err != nil {
						b.Fatal(err)
					}
					m[d] = &identInfo{did: d, key: newCommitKey(key), pds: fmt.Sprintf("pds%04d.example.com", i%1000), handle: fmt.Sprintf("user%07d.example.com", i), fetched: time.Now()}
				}
				b.ReportMetric(float64(heapInUse()-base)/n, "bytes/identity")
				runtime.KeepAlive(m)
			}
		})
	}
}

// TestCacheBoundsFromBytes: the byte budget becomes entry bounds by the
// measured entry sizes, and a partition's caches stay within them (an
// account with events in flight is kept: the cache grows past the bound
// only while every candidate is busy).
func TestCacheBoundsFromBytes(t *testing.T) {
	a, i := cacheBounds(64<<20, 2)
	if a != 64<<20/2/2/accountEntryBytes || i != 64<<20/2/2/identityEntryBytes {
		t.Fatalf("cacheBounds(64 MiB, 2) = %d, %d", a, i)
	}
	if a, i := cacheBounds(0, 2); a != accountCacheSize || i != identityCacheSize {
		t.Fatalf("default budget: %d, %d; want %d, %d", a, i, accountCacheSize, identityCacheSize)
	}
	p := &partition{accounts: newAccountCache(), idents: newIdentCache(3), maxAccounts: 4, maxIdents: 3}
	busy := &accountState{acct: meta.Account{DID: "did:plc:busy"}}
	busy.inflight.Add(1)
	p.cacheAccount(busy)
	for n := range 20 {
		p.cacheAccount(&accountState{acct: meta.Account{DID: syntax.DID(fmt.Sprintf("did:plc:a%d", n))}})
		if p.accounts.Len() > 4 {
			t.Fatalf("%d accounts cached, bound 4", p.accounts.Len())
		}
	}
	if got, _ := p.accounts.Peek("did:plc:busy"); got != busy {
		t.Fatal("an account with events in flight was evicted")
	}
	if p.identBound() != 3 {
		t.Fatalf("identity bound %d, want 3", p.identBound())
	}
}
