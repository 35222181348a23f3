package eventlog

import (
	"fmt"
	"slices"
	"testing"
	"time"
)

// benchPayloadSize is the payload of the benchmark records, about the size
// of a typical commit frame.
const benchPayloadSize = 1024

// BenchmarkAppendSync appends groups of 1 KB records and syncs after each
// group, as the sequencer does. It reports events/s and the p50/p99 latency
// of Sync (one fsync per group).
func BenchmarkAppendSync(b *testing.B) {
	for _, group := range []int{1, 16, 128} {
		b.Run(fmt.Sprintf("group=%d", group), func(b *testing.B) {
			l := openLog(b, Options{Dir: b.TempDir()})
			defer l.Close()
			recs := make([]Record, group)
			payload := make([]byte, benchPayloadSize)
			for i := range payload {
				payload[i] = byte(i)
			}
			for i := range recs {
				recs[i] = Record{Kind: 1, UID: uint64(i), Payload: payload}
			}
			lat := make([]time.Duration, 0, b.N)
			seq := int64(0)
			b.SetBytes(int64(group * (HeaderSize + benchPayloadSize)))
			b.ReportAllocs()
			b.ResetTimer()
			start := time.Now()
			for range b.N {
				for i := range recs {
					seq++
					recs[i].Seq = seq
				}
				if err := l.Append(recs); err != nil {
					b.Fatal(err)
				}
				t0 := time.Now()
				if err := l.Sync(); err != nil {
					b.Fatal(err)
				}
				lat = append(lat, time.Since(t0))
			}
			elapsed := time.Since(start)
			b.StopTimer()
			slices.Sort(lat)
			b.ReportMetric(float64(b.N*group)/elapsed.Seconds(), "events/s")
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-sync-µs")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-sync-µs")
		})
	}
}

// BenchmarkReplay reads ~200 MB of 1 KB records from cursor 0 to the end
// with ReadAfter, in calls of maxBytes each. The files are in the page
// cache (just written), so this measures the read path, not the disk.
func BenchmarkReplay(b *testing.B) {
	const (
		totalBytes = 200 << 20
		perRecord  = HeaderSize + benchPayloadSize
		records    = totalBytes / perRecord
		batch      = 4096
	)
	dir := b.TempDir()
	l := openLog(b, Options{Dir: dir})
	defer l.Close()
	payload := make([]byte, benchPayloadSize)
	recs := make([]Record, batch)
	seq := int64(0)
	for seq < records {
		n := min(batch, int(records-seq))
		for i := range n {
			seq++
			recs[i] = Record{Kind: 1, UID: uint64(seq % 1000), Seq: seq, Payload: payload}
		}
		if err := l.Append(recs[:n]); err != nil {
			b.Fatal(err)
		}
	}
	if err := l.Sync(); err != nil {
		b.Fatal(err)
	}
	segs := l.Stats().Segments

	for _, maxBytes := range []int{64 << 10, 1 << 20} {
		b.Run(fmt.Sprintf("maxBytes=%dKiB/segments=%d", maxBytes>>10, segs), func(b *testing.B) {
			var sum int
			fn := func(r Record) error { sum += len(r.Payload); return nil }
			b.SetBytes(records * perRecord)
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				cursor := int64(0)
				for cursor < records {
					last, err := l.ReadAfter(cursor, maxBytes, fn)
					if err != nil {
						b.Fatal(err)
					}
					cursor = last
				}
			}
			b.StopTimer()
			if sum != b.N*records*benchPayloadSize {
				b.Fatalf("read %d payload bytes, want %d", sum, b.N*records*benchPayloadSize)
			}
		})
	}
}
