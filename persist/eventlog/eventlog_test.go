package eventlog

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"testing"
)

// testLogger discards log output so test runs stay readable.
var testLogger = slog.New(slog.NewTextHandler(io.Discard, nil))

// payloadFor is the deterministic payload of seq: its length varies and
// every byte depends on seq, so a partial or misplaced payload is detected.
func payloadFor(seq int64) []byte {
	n := 20 + int(seq*37%181)
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(int64(i)*31 + seq*7 + 1)
	}
	return b
}

// recFor is the record of seq, owned by uid.
func recFor(seq int64, uid uint64) Record {
	return Record{Kind: uint32(seq % 5), UID: uid, Seq: seq, Payload: payloadFor(seq)}
}

func openLog(t testing.TB, opts Options) *Log {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = testLogger
	}
	l, err := Open(opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return l
}

// appendSeqs appends recFor(seq, seq%3+1) for every seq, in batches of
// batch, syncing after each batch.
func appendSeqs(t testing.TB, l *Log, seqs []int64, batch int) {
	t.Helper()
	for i := 0; i < len(seqs); i += batch {
		var recs []Record
		for _, s := range seqs[i:min(i+batch, len(seqs))] {
			recs = append(recs, recFor(s, uint64(s%3+1)))
		}
		if err := l.Append(recs); err != nil {
			t.Fatalf("Append %d..: %v", recs[0].Seq, err)
		}
		if err := l.Sync(); err != nil {
			t.Fatalf("Sync: %v", err)
		}
	}
}

func seqRange(from, to int64) []int64 {
	var s []int64
	for i := from; i <= to; i++ {
		s = append(s, i)
	}
	return s
}

// readAll pages through ReadAfter from cursor with maxBytes per call until
// no progress, returning copies of the records passed to fn.
func readAll(t testing.TB, l *Log, cursor int64, maxBytes int) []Record {
	t.Helper()
	var out []Record
	for {
		last, err := l.ReadAfter(cursor, maxBytes, func(r Record) error {
			r.Payload = bytes.Clone(r.Payload)
			r.Meta = bytes.Clone(r.Meta)
			out = append(out, r)
			return nil
		})
		if err != nil {
			t.Fatalf("ReadAfter(%d): %v", cursor, err)
		}
		if last == cursor {
			return out
		}
		if last < cursor {
			t.Fatalf("ReadAfter(%d) went back to %d", cursor, last)
		}
		cursor = last
	}
}

// checkRecords asserts recs are exactly recFor(seq) for want, in order.
func checkRecords(t testing.TB, recs []Record, want []int64) {
	t.Helper()
	got := make([]int64, len(recs))
	for i, r := range recs {
		got[i] = r.Seq
	}
	if !slices.Equal(got, want) {
		t.Fatalf("seqs = %v, want %v", short(got), short(want))
	}
	for _, r := range recs {
		w := recFor(r.Seq, uint64(r.Seq%3+1))
		if r.Kind != w.Kind || r.UID != w.UID || r.Flags != 0 || !bytes.Equal(r.Payload, w.Payload) {
			t.Fatalf("record %d = {kind %d uid %d flags %d len %d}, want {kind %d uid %d len %d} and its payload",
				r.Seq, r.Kind, r.UID, r.Flags, len(r.Payload), w.Kind, w.UID, len(w.Payload))
		}
	}
}

// short abbreviates long seq lists in failure messages.
func short(s []int64) string {
	if len(s) <= 12 {
		return fmt.Sprint(s)
	}
	return fmt.Sprintf("%v ... %v (%d)", s[:6], s[len(s)-6:], len(s))
}

// segmentFiles lists the segment file names in dir, in seq order.
func segmentFiles(t testing.TB, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	type named struct {
		name string
		seq  int64
	}
	var ns []named
	for _, e := range entries {
		if seq, ok := parseSegmentName(e.Name()); ok {
			ns = append(ns, named{e.Name(), seq})
		}
	}
	sort.Slice(ns, func(i, j int) bool { return ns[i].seq < ns[j].seq })
	var out []string
	for _, n := range ns {
		out = append(out, n.name)
	}
	return out
}

func TestRoundTripAcrossSegments(t *testing.T) {
	dir := t.TempDir()
	l := openLog(t, Options{Dir: dir, SegmentMaxEvents: 10})
	if l.LastSeq() != 0 || l.DurableSeq() != 0 || l.OldestSeq() != 0 {
		t.Fatalf("empty log: last %d durable %d oldest %d", l.LastSeq(), l.DurableSeq(), l.OldestSeq())
	}
	seqs := seqRange(1, 95)
	appendSeqs(t, l, seqs, 7)
	st := l.Stats()
	if st.Segments != 10 || st.LastSeq != 95 || st.DurableSeq != 95 || st.OldestSeq != 1 {
		t.Fatalf("stats = %+v", st)
	}
	wantFiles := []string{"evts-1", "evts-11", "evts-21", "evts-31", "evts-41", "evts-51", "evts-61", "evts-71", "evts-81", "evts-91"}
	if got := segmentFiles(t, dir); !slices.Equal(got, wantFiles) {
		t.Fatalf("files = %v, want %v", got, wantFiles)
	}
	var total int64
	for _, s := range seqs {
		total += HeaderSize + int64(len(payloadFor(s)))
	}
	if st.Bytes != total {
		t.Fatalf("Bytes = %d, want %d", st.Bytes, total)
	}
	checkRecords(t, readAll(t, l, 0, 1<<30), seqs)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}

	l = openLog(t, Options{Dir: dir, SegmentMaxEvents: 10})
	defer l.Close()
	st = l.Stats()
	if st.Segments != 10 || st.LastSeq != 95 || st.DurableSeq != 95 || st.OldestSeq != 1 || st.Bytes != total {
		t.Fatalf("reopened stats = %+v", st)
	}
	checkRecords(t, readAll(t, l, 0, 1<<30), seqs)
	appendSeqs(t, l, seqRange(96, 101), 6)
	checkRecords(t, readAll(t, l, 90, 1<<30), seqRange(91, 101))
	if got := segmentFiles(t, dir); got[len(got)-1] != "evts-101" {
		t.Fatalf("after reopen the 96..100 records should fill evts-91 and 101 start a segment: %v", got)
	}
}

func TestByteLimitRollsSegments(t *testing.T) {
	dir := t.TempDir()
	l := openLog(t, Options{Dir: dir, SegmentMaxBytes: 1000})
	defer l.Close()
	appendSeqs(t, l, seqRange(1, 60), 5)
	for _, name := range segmentFiles(t, dir) {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Size() > 1000 {
			t.Fatalf("%s is %d bytes, over SegmentMaxBytes", name, fi.Size())
		}
	}
	if n := len(segmentFiles(t, dir)); n < 5 {
		t.Fatalf("only %d segments for ~7 KB at 1000 bytes each", n)
	}
	checkRecords(t, readAll(t, l, 0, 1<<30), seqRange(1, 60))
}

func TestRecoveryTruncatesTornTail(t *testing.T) {
	validHeader := func(seq int64, length int) []byte {
		b := make([]byte, HeaderSize)
		putHeader(b, 0, 1, length, 7, seq)
		return b
	}
	cases := []struct {
		name string
		tail []byte
	}{
		{"garbage", bytes.Repeat([]byte{0xde, 0xad, 0xbe, 0xef, 0x01}, 40)},
		{"truncated header", validHeader(26, 100)[:17]},
		{"truncated payload", append(validHeader(26, 100), make([]byte, 50)...)},
		{"zero header", make([]byte, HeaderSize+10)},
		{"seq going back", append(validHeader(24, 4), 1, 2, 3, 4)},
		{"oversized length", append(validHeader(26, MaxPayloadSize+1), make([]byte, 64)...)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			l := openLog(t, Options{Dir: dir, SegmentMaxEvents: 10})
			appendSeqs(t, l, seqRange(1, 25), 4)
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
			tailPath := filepath.Join(dir, "evts-21")
			before, err := os.Stat(tailPath)
			if err != nil {
				t.Fatal(err)
			}
			f, err := os.OpenFile(tailPath, os.O_WRONLY|os.O_APPEND, 0)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := f.Write(tc.tail); err != nil {
				t.Fatal(err)
			}
			f.Close()

			l = openLog(t, Options{Dir: dir, SegmentMaxEvents: 10})
			after, err := os.Stat(tailPath)
			if err != nil {
				t.Fatal(err)
			}
			if after.Size() != before.Size() {
				t.Fatalf("tail is %d bytes after recovery, want %d", after.Size(), before.Size())
			}
			if l.LastSeq() != 25 || l.DurableSeq() != 25 {
				t.Fatalf("LastSeq %d DurableSeq %d, want 25", l.LastSeq(), l.DurableSeq())
			}
			checkRecords(t, readAll(t, l, 0, 1<<30), seqRange(1, 25))
			appendSeqs(t, l, seqRange(26, 32), 3)
			checkRecords(t, readAll(t, l, 0, 1<<30), seqRange(1, 32))
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
			l = openLog(t, Options{Dir: dir, SegmentMaxEvents: 10})
			defer l.Close()
			if l.LastSeq() != 32 {
				t.Fatalf("LastSeq after second reopen = %d, want 32", l.LastSeq())
			}
			checkRecords(t, readAll(t, l, 0, 1<<30), seqRange(1, 32))
		})
	}
}

// A tail segment with no whole record still fixes the seq floor: the
// relay must never reuse a seq below a segment's name, even after older
// segments were trimmed.
func TestRecoveryEmptyTailKeepsSeqFloor(t *testing.T) {
	dir := t.TempDir()
	l := openLog(t, Options{Dir: dir, SegmentMaxEvents: 10})
	appendSeqs(t, l, seqRange(1, 20), 10)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	// Simulate: the older segments were trimmed, and the crash tore the
	// first record of a new segment.
	for _, name := range []string{"evts-1", "evts-11"} {
		if err := os.Remove(filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	hdr := make([]byte, HeaderSize)
	putHeader(hdr, 0, 1, 500, 1, 21)
	if err := os.WriteFile(filepath.Join(dir, "evts-21"), append(hdr, 1, 2, 3), 0o644); err != nil {
		t.Fatal(err)
	}

	l = openLog(t, Options{Dir: dir, SegmentMaxEvents: 10})
	if l.LastSeq() != 20 || l.OldestSeq() != 0 {
		t.Fatalf("LastSeq %d OldestSeq %d, want 20 and 0", l.LastSeq(), l.OldestSeq())
	}
	if err := l.Append([]Record{recFor(20, 1)}); !errors.Is(err, ErrOutOfOrder) {
		t.Fatalf("Append(20) = %v, want ErrOutOfOrder", err)
	}
	if got := readAll(t, l, 0, 1<<30); len(got) != 0 {
		t.Fatalf("read %d records from an empty log", len(got))
	}
	// A gap: the empty segment is renamed after its real first record.
	appendSeqs(t, l, []int64{30, 31}, 2)
	if got := segmentFiles(t, dir); !slices.Equal(got, []string{"evts-30"}) {
		t.Fatalf("files = %v, want [evts-30]", got)
	}
	if l.OldestSeq() != 30 {
		t.Fatalf("OldestSeq = %d, want 30", l.OldestSeq())
	}
	checkRecords(t, readAll(t, l, 0, 1<<30), []int64{30, 31})
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	l = openLog(t, Options{Dir: dir, SegmentMaxEvents: 10})
	defer l.Close()
	checkRecords(t, readAll(t, l, 0, 1<<30), []int64{30, 31})
}

// ReadAfter from (nearly) every cursor returns exactly the records after it, with
// segments large enough to use the sparse index (several entries each),
// gaps in the seqs, and both the writer-built and lazily built indexes.
func TestReadAfterEveryCursor(t *testing.T) {
	dir := t.TempDir()
	const n = 5000
	opts := Options{Dir: dir, SegmentMaxEvents: 2100}
	l := openLog(t, opts)
	var seqs []int64
	for i := int64(1); i <= n; i++ {
		seqs = append(seqs, i+i/700) // a gap every 700 records
	}
	appendSeqs(t, l, seqs, 250)
	if got := len(segmentFiles(t, dir)); got != 3 {
		t.Fatalf("%d segments, want 3", got)
	}
	maxSeq := seqs[len(seqs)-1]
	// Every 31st cursor, and every cursor around segment boundaries, index
	// entries and gaps (each cursor reads to the end, so all 5000 would
	// take long).
	var cursors []int64
	near := map[int64]bool{}
	for i, s := range seqs {
		if i%2100 <= 1 || i%2100 == 2099 || (i%2100)%indexInterval <= 1 || (i%2100)%indexInterval == indexInterval-1 ||
			(i > 0 && seqs[i-1] != s-1) {
			near[s-2], near[s-1], near[s], near[s+1] = true, true, true, true
		}
	}
	for c := int64(0); c <= maxSeq+2; c++ {
		if c%31 == 0 || near[c] || c >= maxSeq-2 {
			cursors = append(cursors, c)
		}
	}
	check := func(t *testing.T, l *Log) {
		for _, c := range cursors {
			i := sort.Search(len(seqs), func(i int) bool { return seqs[i] > c })
			want := seqs[i:]
			var got []int64
			last, err := l.ReadAfter(c, 1<<30, func(r Record) error {
				if r.Seq != want[len(got)] || !bytes.Equal(r.Payload, payloadFor(r.Seq)) {
					return fmt.Errorf("cursor %d: record %d is seq %d", c, len(got), r.Seq)
				}
				got = append(got, r.Seq)
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(want) {
				t.Fatalf("cursor %d: %d records, want %d", c, len(got), len(want))
			}
			wantLast := c
			if len(want) > 0 {
				wantLast = want[len(want)-1]
			}
			if last != wantLast {
				t.Fatalf("cursor %d: last = %d, want %d", c, last, wantLast)
			}
		}
		// Paging in small steps from a few cursors, including segment
		// boundaries, gives the same records.
		for _, c := range []int64{0, 1, 700, 2100, 2102, 2103, 4203, maxSeq - 1} {
			i := sort.Search(len(seqs), func(i int) bool { return seqs[i] > c })
			checkRecords(t, readAll(t, l, c, 3000), seqs[i:])
		}
	}
	t.Run("live", func(t *testing.T) { check(t, l) })
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	l = openLog(t, opts)
	defer l.Close()
	t.Run("reopened", func(t *testing.T) { check(t, l) })
}

func TestReadAfterBudget(t *testing.T) {
	l := openLog(t, Options{Dir: t.TempDir()})
	defer l.Close()
	appendSeqs(t, l, seqRange(1, 100), 100)
	// maxBytes 0 and 1: exactly one record per call.
	for _, mb := range []int{0, 1} {
		var n int
		last, err := l.ReadAfter(10, mb, func(Record) error { n++; return nil })
		if err != nil || n != 1 || last != 11 {
			t.Fatalf("maxBytes %d: n %d last %d err %v, want one record (11)", mb, n, last, err)
		}
	}
	// A budget of three records' bytes stops after the third.
	budget := 0
	for s := int64(1); s <= 3; s++ {
		budget += HeaderSize + len(payloadFor(s))
	}
	last, err := l.ReadAfter(0, budget, func(Record) error { return nil })
	if err != nil || last != 3 {
		t.Fatalf("budget of 3 records: last %d err %v", last, err)
	}
	// fn's error stops the read; the failing record is not counted.
	errStop := errors.New("stop")
	last, err = l.ReadAfter(0, 1<<30, func(r Record) error {
		if r.Seq == 5 {
			return errStop
		}
		return nil
	})
	if !errors.Is(err, errStop) || last != 4 {
		t.Fatalf("fn error: last %d err %v, want 4 and errStop", last, err)
	}
}

// Records appended but not synced are invisible to readers.
func TestReadAfterStopsAtDurable(t *testing.T) {
	l := openLog(t, Options{Dir: t.TempDir(), SegmentMaxEvents: 8})
	defer l.Close()
	appendSeqs(t, l, seqRange(1, 20), 20)
	var recs []Record
	for s := int64(21); s <= 40; s++ {
		recs = append(recs, recFor(s, uint64(s%3+1)))
	}
	if err := l.Append(recs); err != nil {
		t.Fatal(err)
	}
	if l.LastSeq() != 40 || l.DurableSeq() != 20 {
		t.Fatalf("LastSeq %d DurableSeq %d, want 40 and 20", l.LastSeq(), l.DurableSeq())
	}
	checkRecords(t, readAll(t, l, 0, 1<<30), seqRange(1, 20))
	if err := l.Sync(); err != nil {
		t.Fatal(err)
	}
	checkRecords(t, readAll(t, l, 15, 1<<30), seqRange(16, 40))
}

func TestAppendValidation(t *testing.T) {
	l := openLog(t, Options{Dir: t.TempDir()})
	defer l.Close()
	appendSeqs(t, l, seqRange(1, 5), 5)
	bad := [][]Record{
		{recFor(6, 1), recFor(6, 1)},             // repeat inside the batch
		{recFor(7, 1), recFor(6, 1)},             // backwards inside the batch
		{recFor(5, 1)},                           // not after LastSeq
		{recFor(0, 1)},                           // zero
		{{Seq: 6, Flags: 2, Payload: []byte{1}}}, // unknown flag
		{{Seq: 6, Payload: make([]byte, MaxPayloadSize+1)}},
	}
	for i, b := range bad {
		err := l.Append(b)
		if !errors.Is(err, ErrOutOfOrder) && !errors.Is(err, ErrInvalidRecord) {
			t.Fatalf("batch %d: err = %v", i, err)
		}
		if l.LastSeq() != 5 {
			t.Fatalf("batch %d: LastSeq moved to %d", i, l.LastSeq())
		}
	}
	if err := l.Sync(); err != nil {
		t.Fatal(err)
	}
	checkRecords(t, readAll(t, l, 0, 1<<30), seqRange(1, 5))
	// Gaps are allowed.
	appendSeqs(t, l, []int64{9, 100}, 2)
	checkRecords(t, readAll(t, l, 0, 1<<30), []int64{1, 2, 3, 4, 5, 9, 100})
}

func TestCloseThenOpenContinues(t *testing.T) {
	dir := t.TempDir()
	l := openLog(t, Options{Dir: dir, SegmentMaxEvents: 4})
	appendSeqs(t, l, seqRange(1, 10), 3)
	// Appended but never explicitly synced: Close makes it durable.
	if err := l.Append([]Record{recFor(11, 3)}); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if err := l.Append([]Record{recFor(12, 1)}); !errors.Is(err, ErrClosed) {
		t.Fatalf("Append after Close = %v", err)
	}
	if _, err := l.ReadAfter(0, 1, func(Record) error { return nil }); !errors.Is(err, ErrClosed) {
		t.Fatalf("ReadAfter after Close = %v", err)
	}
	if err := l.Close(); !errors.Is(err, ErrClosed) {
		t.Fatalf("second Close = %v", err)
	}
	l = openLog(t, Options{Dir: dir, SegmentMaxEvents: 4})
	defer l.Close()
	if l.LastSeq() != 11 || l.DurableSeq() != 11 || l.OldestSeq() != 1 {
		t.Fatalf("LastSeq %d DurableSeq %d OldestSeq %d", l.LastSeq(), l.DurableSeq(), l.OldestSeq())
	}
	if err := l.Append([]Record{recFor(11, 3)}); !errors.Is(err, ErrOutOfOrder) {
		t.Fatalf("re-appending 11 = %v, want ErrOutOfOrder", err)
	}
	appendSeqs(t, l, seqRange(12, 14), 3)
	checkRecords(t, readAll(t, l, 0, 1<<30), seqRange(1, 14))
}

func TestOpenLocksDirectory(t *testing.T) {
	dir := t.TempDir()
	l := openLog(t, Options{Dir: dir})
	if _, err := Open(Options{Dir: dir, Logger: testLogger}); !errors.Is(err, ErrLocked) {
		t.Fatalf("second Open = %v, want ErrLocked", err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	l = openLog(t, Options{Dir: dir})
	l.Close()
	if _, err := Open(Options{}); !errors.Is(err, ErrNoDir) {
		t.Fatalf("Open without Dir = %v", err)
	}
}

// Append does not allocate per record once the segment exists.
func TestAppendDoesNotAllocate(t *testing.T) {
	l := openLog(t, Options{Dir: t.TempDir()})
	defer l.Close()
	batch := make([]Record, 16)
	for i := range batch {
		batch[i] = Record{Kind: 1, UID: 1, Payload: make([]byte, 1000)}
	}
	seq := int64(0)
	next := func() {
		for i := range batch {
			seq++
			batch[i].Seq = seq
		}
		if err := l.Append(batch); err != nil {
			t.Fatal(err)
		}
	}
	next() // creates the segment
	if allocs := testing.AllocsPerRun(200, next); allocs != 0 {
		t.Fatalf("Append of 16 records: %v allocs per call", allocs)
	}
}

// Records larger than the read buffer are read whole, between small ones,
// and survive recovery.
func TestLargeRecords(t *testing.T) {
	dir := t.TempDir()
	l := openLog(t, Options{Dir: dir, SegmentMaxEvents: 4})
	big := func(seq int64) []byte {
		b := make([]byte, readBufferSize+int(seq)*100_000)
		for i := range b {
			b[i] = byte(int64(i) ^ seq)
		}
		return b
	}
	var want []Record
	for s := int64(1); s <= 9; s++ {
		r := recFor(s, 1)
		if s%3 == 0 {
			r.Payload = big(s)
		}
		want = append(want, r)
	}
	if err := l.Append(want); err != nil {
		t.Fatal(err)
	}
	if err := l.Sync(); err != nil {
		t.Fatal(err)
	}
	check := func(l *Log, cursor int64, maxBytes int) {
		t.Helper()
		for {
			last, err := l.ReadAfter(cursor, maxBytes, func(r Record) error {
				w := want[r.Seq-1]
				if r.Seq != cursor+1 || !bytes.Equal(r.Payload, w.Payload) {
					return fmt.Errorf("seq %d after cursor %d: payload of %d bytes differs", r.Seq, cursor, len(r.Payload))
				}
				cursor = r.Seq
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if last == 9 {
				return
			}
			if last != cursor {
				t.Fatalf("last %d, fn saw %d", last, cursor)
			}
		}
	}
	check(l, 0, 1<<30)
	check(l, 2, 1)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	l = openLog(t, Options{Dir: dir, SegmentMaxEvents: 4})
	defer l.Close()
	if l.LastSeq() != 9 {
		t.Fatalf("LastSeq = %d", l.LastSeq())
	}
	check(l, 0, 1<<30)
	check(l, 5, 100)
}

// A record whose header survived a crash but whose payload did not (zero
// pages) passes the header checks; CheckPayload lets the owner reject it.
func TestRecoveryChecksPayloads(t *testing.T) {
	dir := t.TempDir()
	l := openLog(t, Options{Dir: dir, SegmentMaxEvents: 10})
	appendSeqs(t, l, seqRange(1, 25), 4)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	tailPath := filepath.Join(dir, "evts-21")
	before, err := os.Stat(tailPath)
	if err != nil {
		t.Fatal(err)
	}
	// Seq 26 with a well-formed header and a zero-filled payload.
	torn := make([]byte, HeaderSize+len(payloadFor(26)))
	putHeader(torn, 0, 1, len(payloadFor(26)), 7, 26)
	f, err := os.OpenFile(tailPath, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(torn); err != nil {
		t.Fatal(err)
	}
	f.Close()

	errZero := errors.New("zero payload")
	check := func(p []byte) error {
		if len(p) > 0 && p[0] == 0 {
			return errZero
		}
		return nil
	}
	var checked int
	l = openLog(t, Options{Dir: dir, SegmentMaxEvents: 10, CheckPayload: func(p []byte) error {
		checked++
		return check(p)
	}})
	defer l.Close()
	if l.LastSeq() != 25 {
		t.Fatalf("LastSeq %d, want 25: the zero-payload record survived", l.LastSeq())
	}
	after, err := os.Stat(tailPath)
	if err != nil {
		t.Fatal(err)
	}
	if after.Size() != before.Size() {
		t.Fatalf("tail is %d bytes after recovery, want %d", after.Size(), before.Size())
	}
	if checked != 6 { // seqs 21..25 pass, 26 fails
		t.Fatalf("CheckPayload called %d times, want 6", checked)
	}
	checkRecords(t, readAll(t, l, 0, 1<<30), seqRange(1, 25))
}
