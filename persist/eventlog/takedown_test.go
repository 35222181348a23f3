package eventlog

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// rawRecords parses every record of a segment file directly.
func rawRecords(t *testing.T, path string) []Record {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []Record
	for off := 0; off < len(b); {
		h := decodeHeader(b[off:])
		end := off + HeaderSize + int(h.length)
		out = append(out, Record{Flags: h.flags, Kind: h.kind, UID: h.uid, Seq: h.seq, Payload: b[off+HeaderSize : end]})
		off = end
	}
	return out
}

func TestTakedown(t *testing.T) {
	dir := t.TempDir()
	opts := Options{Dir: dir, SegmentMaxEvents: 10}
	l := openLog(t, opts)
	appendSeqs(t, l, seqRange(1, 45), 9) // uid = seq%3+1
	// Appended, not yet synced: Takedown covers these too.
	if err := l.Append([]Record{recFor(46, 2), recFor(47, 3), recFor(48, 2)}); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-48 * time.Hour)
	if err := os.Chtimes(filepath.Join(dir, "evts-1"), old, old); err != nil {
		t.Fatal(err)
	}

	var wantGone []int64
	for s := int64(1); s <= 48; s++ {
		if (s <= 45 && s%3+1 == 2) || s == 46 || s == 48 {
			wantGone = append(wantGone, s)
		}
	}
	n, err := l.Takedown(2)
	if err != nil || n != len(wantGone) {
		t.Fatalf("Takedown = %d, %v; want %d", n, err, len(wantGone))
	}
	if err := l.Sync(); err != nil {
		t.Fatal(err)
	}

	check := func(l *Log) {
		t.Helper()
		// On disk: flag set and payload zeroed for uid 2 only.
		var flagged int
		for _, name := range segmentFiles(t, dir) {
			for _, r := range rawRecords(t, filepath.Join(dir, name)) {
				taken := r.Flags&FlagTakedown != 0
				zero := !bytes.ContainsFunc(r.Payload, func(c rune) bool { return c != 0 })
				if r.UID == 2 {
					if !taken || !zero || len(r.Payload) != len(payloadFor(r.Seq)) {
						t.Fatalf("seq %d of uid 2: flags %d, zero %v, len %d", r.Seq, r.Flags, zero, len(r.Payload))
					}
					flagged++
				} else if taken || !bytes.Equal(r.Payload, payloadFor(r.Seq)) {
					t.Fatalf("seq %d of uid %d was touched", r.Seq, r.UID)
				}
			}
		}
		if flagged != len(wantGone) {
			t.Fatalf("%d flagged records on disk, want %d", flagged, len(wantGone))
		}
		// Readers skip them but make progress over them.
		var got []int64
		for _, r := range readAll(t, l, 0, 1<<30) {
			if r.UID == 2 {
				t.Fatalf("ReadAfter passed taken-down record %d", r.Seq)
			}
			got = append(got, r.Seq)
		}
		if len(got) != 48-len(wantGone) {
			t.Fatalf("read %d records, want %d", len(got), 48-len(wantGone))
		}
		last, err := l.ReadAfter(47, 1<<30, func(r Record) error {
			t.Fatalf("fn called for %d", r.Seq)
			return nil
		})
		if err != nil || last != 48 {
			t.Fatalf("ReadAfter over a taken-down tail: last %d err %v, want 48", last, err)
		}
	}
	check(l)
	fi, err := os.Stat(filepath.Join(dir, "evts-1"))
	if err != nil {
		t.Fatal(err)
	}
	if !fi.ModTime().Equal(old) {
		t.Fatalf("takedown changed the segment mtime to %v (retention age)", fi.ModTime())
	}
	// Idempotent: nothing new to take down.
	if n, err := l.Takedown(2); n != 0 || err != nil {
		t.Fatalf("second Takedown = %d, %v", n, err)
	}
	if n, err := l.Takedown(99); n != 0 || err != nil {
		t.Fatalf("Takedown of an unknown uid = %d, %v", n, err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	l = openLog(t, opts)
	defer l.Close()
	check(l)
	if l.LastSeq() != 48 {
		t.Fatalf("LastSeq after reopen = %d", l.LastSeq())
	}
	l.Close()
	if _, err := l.Takedown(1); !errors.Is(err, ErrClosed) {
		t.Fatalf("Takedown after Close = %v", err)
	}
}
