package relay

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/relay/relay/persist/eventlog"
	"github.com/relay/relay/persist/meta"
	"github.com/relay/relay/persist/meta/pebblestore"
)

// BenchmarkRecovery measures start-up recovery: replaying an event log
// past the last checkpoint into the metadata store. RELAY_BENCH_RECOVERY_MB
// sets the log size (default 256 MB; the README figure uses 1024). Records
// are ~1 KB commits of 100,000 accounts from 100 hosts, each with its meta.
//
//	RELAY_BENCH_RECOVERY_MB=1024 go test ./relay -run '^$' -bench Recovery -benchtime 1x
func BenchmarkRecovery(b *testing.B) {
	mb := 256
	if v, err := strconv.Atoi(os.Getenv("RELAY_BENCH_RECOVERY_MB")); err == nil && v > 0 {
		mb = v
	}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	dir := b.TempDir()
	log, err := eventlog.Open(eventlog.Options{Dir: dir + "/events", Logger: quiet})
	if err != nil {
		b.Fatal(err)
	}
	store, err := pebblestore.Open(dir + "/meta")
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	const hosts, accounts = 100, 100_000
	for h := 0; h < hosts; h++ {
		if err := store.CreateHost(ctx, &meta.Host{Hostname: fmt.Sprintf("h%d.example.com", h)}); err != nil {
			b.Fatal(err)
		}
	}
	payload := make([]byte, 1000)
	total := int64(mb) << 20
	var seq int64
	useq := make([]int64, hosts+1)
	batch := make([]eventlog.Record, 0, 1024)
	var written int64
	for written < total {
		batch = batch[:0]
		for len(batch) < cap(batch) {
			seq++
			uid := uint64(seq%accounts) + 1
			host := uint64(seq%hosts) + 1
			useq[host]++
			m := recordMeta{hostID: host, useq: useq[host], floor: useq[host] - 1,
				repo: &meta.RepoState{UID: uid, Rev: "3l2abcdefgh2" + strconv.FormatInt(seq%10, 10), CommitCID: "bafyreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy", DataCID: "bafyreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zz"}}
			batch = append(batch, eventlog.Record{Kind: KindCommit, UID: uid, Seq: seq, Payload: payload, Meta: m.append(nil)})
			written += int64(eventlog.HeaderSize + len(payload) + 150)
		}
		if err := log.Append(batch); err != nil {
			b.Fatal(err)
		}
	}
	if err := log.Sync(); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		// Each iteration recovers from no checkpoint at all.
		if err := store.WriteCheckpoint(ctx, &meta.Checkpoint{Seq: 0}); err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		rec, err := recoverDerived(ctx, log, store, quiet)
		if err != nil {
			b.Fatal(err)
		}
		d := time.Since(start)
		b.ReportMetric(d.Seconds(), "s/recovery")
		b.ReportMetric(float64(rec.records)/d.Seconds(), "records/s")
		b.ReportMetric(float64(log.Stats().Bytes)/(1<<20)/d.Seconds(), "MB/s")
	}
	b.StopTimer()
	store.Close()
	log.Close()
}
