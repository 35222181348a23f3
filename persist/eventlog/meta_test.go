package eventlog

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"
)

// metaFor is the meta section of seq's record (empty for every third seq,
// so logs mix records with and without meta).
func metaFor(seq int64) []byte {
	if seq%3 == 0 {
		return nil
	}
	return []byte(fmt.Sprintf("host=%d useq=%d", seq%7, seq*10))
}

func metaRec(seq int64) Record {
	r := recFor(seq, uint64(seq%3+1))
	r.Meta = metaFor(seq)
	return r
}

func appendMeta(t testing.TB, l *Log, from, to int64) {
	t.Helper()
	var recs []Record
	for s := from; s <= to; s++ {
		recs = append(recs, metaRec(s))
	}
	if err := l.Append(recs); err != nil {
		t.Fatal(err)
	}
	if err := l.Sync(); err != nil {
		t.Fatal(err)
	}
}

// scanAll collects copies of every record ScanAfter passes (taken-down too).
func scanAll(t testing.TB, l *Log) []Record {
	t.Helper()
	var out []Record
	cursor := int64(0)
	for {
		last, err := l.ScanAfter(cursor, 1<<20, func(r Record) error {
			r.Payload = bytes.Clone(r.Payload)
			r.Meta = bytes.Clone(r.Meta)
			out = append(out, r)
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if last == cursor {
			return out
		}
		cursor = last
	}
}

func TestMetaRoundTrip(t *testing.T) {
	dir := t.TempDir()
	l := openLog(t, Options{Dir: dir, SegmentMaxEvents: 7})
	appendMeta(t, l, 1, 40)
	check := func(l *Log) {
		t.Helper()
		recs := readAll(t, l, 0, 300)
		if len(recs) != 40 {
			t.Fatalf("read %d records, want 40", len(recs))
		}
		for _, r := range recs {
			if !bytes.Equal(r.Payload, payloadFor(r.Seq)) || !bytes.Equal(r.Meta, metaFor(r.Seq)) || r.Flags != 0 {
				t.Fatalf("seq %d: flags %d payload %q meta %q", r.Seq, r.Flags, r.Payload, r.Meta)
			}
		}
	}
	check(l)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	l = openLog(t, Options{Dir: dir, SegmentMaxEvents: 7, CheckPayload: func(p []byte) error {
		// Recovery checks the payload alone, never the meta section.
		if len(p) < 20 {
			return errors.New("short")
		}
		return nil
	}})
	defer l.Close()
	check(l)
}

// A takedown zero-fills payloads but keeps meta; ReadAfter skips the
// records, ScanAfter passes them with their meta.
func TestTakedownKeepsMeta(t *testing.T) {
	l := openLog(t, Options{Dir: t.TempDir(), SegmentMaxEvents: 10})
	defer l.Close()
	appendMeta(t, l, 1, 30)
	if _, err := l.Takedown(2); err != nil {
		t.Fatal(err)
	}
	for _, r := range readAll(t, l, 0, 1<<20) {
		if r.UID == 2 {
			t.Fatalf("ReadAfter passed taken-down seq %d", r.Seq)
		}
	}
	all := scanAll(t, l)
	if len(all) != 30 {
		t.Fatalf("ScanAfter passed %d records, want 30", len(all))
	}
	for _, r := range all {
		if !bytes.Equal(r.Meta, metaFor(r.Seq)) {
			t.Fatalf("seq %d: meta %q, want %q", r.Seq, r.Meta, metaFor(r.Seq))
		}
		taken := r.Flags&FlagTakedown != 0
		if taken != (r.UID == 2) {
			t.Fatalf("seq %d uid %d: takedown flag %v", r.Seq, r.UID, taken)
		}
		if taken && !bytes.Equal(r.Payload, make([]byte, len(r.Payload))) {
			t.Fatalf("seq %d: taken-down payload not zero", r.Seq)
		}
		if !taken && !bytes.Equal(r.Payload, payloadFor(r.Seq)) {
			t.Fatalf("seq %d: payload changed", r.Seq)
		}
	}
}

// Power loss: the newest segment's tail is cut at every byte offset of its
// last record. Recovery keeps every earlier record whole and drops only
// the cut one; the next append continues after the last whole record.
func TestRecoveryCutAtEveryOffset(t *testing.T) {
	src := t.TempDir()
	l := openLog(t, Options{Dir: src})
	appendMeta(t, l, 1, 4)
	// The last record carries meta, so the cut also crosses its meta.
	last := metaRec(5)
	if last.Meta == nil {
		last.Meta = []byte("m")
	}
	if err := l.Append([]Record{last}); err != nil {
		t.Fatal(err)
	}
	if err := l.Sync(); err != nil {
		t.Fatal(err)
	}
	l.Close()
	seg := filepath.Join(src, segmentName(1))
	whole, err := os.ReadFile(seg)
	if err != nil {
		t.Fatal(err)
	}
	lastSize := HeaderSize + last.storedLen()
	start := len(whole) - lastSize
	for cut := start; cut < len(whole); cut++ {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, segmentName(1)), whole[:cut], 0o644); err != nil {
			t.Fatal(err)
		}
		l := openLog(t, Options{Dir: dir})
		if got := l.LastSeq(); got != 4 {
			t.Fatalf("cut at %d: LastSeq %d, want 4", cut, got)
		}
		recs := readAll(t, l, 0, 1<<20)
		checkRecords(t, recs, seqRange(1, 4))
		for _, r := range recs {
			if !bytes.Equal(r.Meta, metaFor(r.Seq)) {
				t.Fatalf("cut at %d: seq %d meta %q", cut, r.Seq, r.Meta)
			}
		}
		appendMeta(t, l, 5, 6)
		checkRecords(t, readAll(t, l, 0, 1<<20), seqRange(1, 6))
		l.Close()
	}
}

// failingReader fails every read that reaches past failAt.
type failingReader struct {
	f      *os.File
	failAt int64
}

var errInjected = errors.New("injected read error")

func (r failingReader) ReadAt(p []byte, off int64) (int, error) {
	if off+int64(len(p)) > r.failAt {
		n, _ := r.f.ReadAt(p[:max(0, r.failAt-off)], off)
		return n, errInjected
	}
	return r.f.ReadAt(p, off)
}

// An I/O error while recovering fails Open with the error and leaves the
// segment untouched: only a short file is a torn tail.
func TestRecoveryReadErrorDoesNotTruncate(t *testing.T) {
	for _, check := range []bool{false, true} {
		dir := t.TempDir()
		l := openLog(t, Options{Dir: dir})
		appendMeta(t, l, 1, 50)
		l.Close()
		seg := filepath.Join(dir, segmentName(1))
		before, err := os.ReadFile(seg)
		if err != nil {
			t.Fatal(err)
		}
		failAt := int64(len(before) / 2)
		recoveryReader = func(f *os.File) io.ReaderAt { return failingReader{f: f, failAt: failAt} }
		opts := Options{Dir: dir, Logger: testLogger}
		if check {
			opts.CheckPayload = func([]byte) error { return nil }
		}
		_, err = Open(opts)
		recoveryReader = func(f *os.File) io.ReaderAt { return f }
		if !errors.Is(err, errInjected) {
			t.Fatalf("check=%v: Open error %v, want the injected read error", check, err)
		}
		after, err := os.ReadFile(seg)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(before, after) {
			t.Fatalf("check=%v: segment changed from %d to %d bytes after a read error", check, len(before), len(after))
		}
		l = openLog(t, Options{Dir: dir})
		checkRecords(t, readAll(t, l, 0, 1<<20), seqRange(1, 50))
		l.Close()
	}
}
