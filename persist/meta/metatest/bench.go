package metatest

import (
	"github.com/bluesky-social/indigo/atproto/syntax"

	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/relay/relay/persist/meta"
)

// BenchOpenFunc returns a new, empty store and registers its cleanup.
type BenchOpenFunc func(b *testing.B) meta.Store

// Benchmark sizes.
const (
	// benchBatch is the repo state batch the relay flushes at a time.
	benchBatch = 100
	// benchAccounts is how many accounts the lookup benchmarks read from;
	// enough to leave the memtable's hottest path, small enough to create
	// in a few seconds with one fsync per create.
	benchAccounts = 2000
	// benchCreators is how many goroutines create accounts concurrently,
	// as the validation workers do.
	benchCreators = 8
)

// Bench runs the same benchmarks against stores made by open, so the two
// backends report comparable figures.
func Bench(b *testing.B, open BenchOpenFunc) {
	b.Run("PutRepoStates100", func(b *testing.B) { benchPutRepoStates(b, open(b), false) })
	b.Run("PutRepoStates100Parallel", func(b *testing.B) { benchPutRepoStates(b, open(b), true) })
	b.Run("GetAccountByDID", func(b *testing.B) { benchGetAccountByDID(b, open(b), false) })
	b.Run("GetAccountByDIDParallel", func(b *testing.B) { benchGetAccountByDID(b, open(b), true) })
	b.Run("CreateAccountParallel", func(b *testing.B) { benchCreateAccount(b, open(b)) })
}

func benchPutRepoStates(b *testing.B, s meta.Store, parallel bool) {
	ctx := context.Background()
	var next atomic.Uint64
	batch := func() []meta.RepoState {
		states := make([]meta.RepoState, benchBatch)
		for i := range states {
			states[i] = meta.RepoState{
				UID:       next.Add(1)%100_000 + 1,
				Rev:       "3lbdkgdvnnr2k",
				CommitCID: "bafyreihuhvwzcx7h3w4ztbqsf3xnfvy3sofepy3vjwo3h6xjrgjtr5gzwu",
				DataCID:   "bafyreiclp443lavogvhj3d2ob2cxbfuscni2k5jk7bebjzg7khl3esabwq",
			}
		}
		return states
	}
	b.ReportAllocs()
	if parallel {
		b.RunParallel(func(pb *testing.PB) {
			states := batch()
			for pb.Next() {
				if err := s.PutRepoStates(ctx, states); err != nil {
					b.Error(err)
					return
				}
			}
		})
	} else {
		states := batch()
		for b.Loop() {
			if err := s.PutRepoStates(ctx, states); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.ReportMetric(float64(b.N*benchBatch)/b.Elapsed().Seconds(), "states/s")
}

// populate creates benchAccounts accounts on one host, concurrently, and
// returns their DIDs.
func populate(b *testing.B, s meta.Store) []string {
	ctx := context.Background()
	h := &meta.Host{Hostname: "bench.example.com"}
	if err := s.CreateHost(ctx, h); err != nil {
		b.Fatal(err)
	}
	dids := make([]string, benchAccounts)
	var wg sync.WaitGroup
	errs := make(chan error, benchCreators)
	for w := range benchCreators {
		wg.Go(func() {
			for i := w; i < benchAccounts; i += benchCreators {
				dids[i] = fmt.Sprintf("did:plc:%024d", i)
				if err := s.CreateAccount(ctx, &meta.Account{DID: syntax.DID(dids[i]), HostID: h.ID}); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	return dids
}

func benchGetAccountByDID(b *testing.B, s meta.Store, parallel bool) {
	ctx := context.Background()
	dids := populate(b, s)
	b.ReportAllocs()
	b.ResetTimer()
	if parallel {
		var seed atomic.Uint64
		b.RunParallel(func(pb *testing.PB) {
			i := int(seed.Add(7919))
			for pb.Next() {
				i = (i + 7919) % len(dids)
				if _, err := s.GetAccountByDID(ctx, syntax.DID(dids[i])); err != nil {
					b.Error(err)
					return
				}
			}
		})
		return
	}
	i := 0
	for b.Loop() {
		i = (i + 7919) % len(dids)
		if _, err := s.GetAccountByDID(ctx, syntax.DID(dids[i])); err != nil {
			b.Fatal(err)
		}
	}
}

func benchCreateAccount(b *testing.B, s meta.Store) {
	ctx := context.Background()
	h := &meta.Host{Hostname: "bench.example.com"}
	if err := s.CreateHost(ctx, h); err != nil {
		b.Fatal(err)
	}
	var n atomic.Uint64
	b.ReportAllocs()
	b.SetParallelism(benchCreators / 2) // x GOMAXPROCS goroutines; 8 on 2 cores
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			a := &meta.Account{DID: syntax.DID(fmt.Sprintf("did:plc:c%023d", n.Add(1))), HostID: h.ID}
			if err := s.CreateAccount(ctx, a); err != nil {
				b.Error(err)
				return
			}
		}
	})
}
