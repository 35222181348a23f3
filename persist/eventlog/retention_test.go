package eventlog

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

// setAge sets a segment file's mtime to now-age.
func setAge(t *testing.T, dir, name string, now time.Time, age time.Duration) {
	t.Helper()
	ts := now.Add(-age)
	if err := os.Chtimes(filepath.Join(dir, name), ts, ts); err != nil {
		t.Fatal(err)
	}
}

func TestTrimByAge(t *testing.T) {
	dir := t.TempDir()
	l := openLog(t, Options{Dir: dir, SegmentMaxEvents: 10, Retention: time.Hour})
	defer l.Close()
	appendSeqs(t, l, seqRange(1, 50), 10)
	now := time.Now()
	setAge(t, dir, "evts-1", now, 3*time.Hour)
	setAge(t, dir, "evts-11", now, 2*time.Hour)
	setAge(t, dir, "evts-21", now, 30*time.Minute)
	setAge(t, dir, "evts-31", now, 2*time.Hour) // old, but after a young one: kept, the log stays contiguous
	setAge(t, dir, "evts-41", now, 0)

	n, err := l.Trim(now)
	if err != nil || n != 2 {
		t.Fatalf("Trim = %d, %v; want 2 segments", n, err)
	}
	if got := segmentFiles(t, dir); !slices.Equal(got, []string{"evts-21", "evts-31", "evts-41"}) {
		t.Fatalf("files = %v", got)
	}
	if l.OldestSeq() != 21 || l.Stats().Segments != 3 {
		t.Fatalf("OldestSeq %d stats %+v", l.OldestSeq(), l.Stats())
	}
	checkRecords(t, readAll(t, l, 0, 1<<30), seqRange(21, 50))
	checkRecords(t, readAll(t, l, 5, 1<<30), seqRange(21, 50))

	// Everything old, including the active segment: the active one stays.
	for _, name := range []string{"evts-21", "evts-31", "evts-41"} {
		setAge(t, dir, name, now, 5*time.Hour)
	}
	n, err = l.Trim(now)
	if err != nil || n != 2 {
		t.Fatalf("second Trim = %d, %v; want 2", n, err)
	}
	if got := segmentFiles(t, dir); !slices.Equal(got, []string{"evts-41"}) {
		t.Fatalf("files = %v", got)
	}
	checkRecords(t, readAll(t, l, 0, 1<<30), seqRange(41, 50))
	appendSeqs(t, l, seqRange(51, 55), 5)
	checkRecords(t, readAll(t, l, 0, 1<<30), seqRange(41, 55))
}

func TestTrimBySize(t *testing.T) {
	dir := t.TempDir()
	const perSeg = 10
	// Five segments.
	l := openLog(t, Options{Dir: dir, SegmentMaxEvents: perSeg})
	appendSeqs(t, l, seqRange(1, 5*perSeg), perSeg)
	total := l.Stats().Bytes
	l.Close()

	// The cap falls inside the third segment: the first three go.
	files := segmentFiles(t, dir)
	var sizes []int64
	for _, name := range files {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		sizes = append(sizes, fi.Size())
	}
	cap := sizes[3] + sizes[4] + sizes[2]/2
	l = openLog(t, Options{Dir: dir, SegmentMaxEvents: perSeg, MaxBytes: cap})
	defer l.Close()
	n, err := l.Trim(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	st := l.Stats()
	if n != 3 || st.Segments != 2 || st.Bytes != sizes[3]+sizes[4] || st.Bytes+sizes[2] <= cap {
		t.Fatalf("removed %d, stats %+v; want 3 removed, 2 left (sizes %v, cap %d, total %d)", n, st, sizes, cap, total)
	}
	if got := segmentFiles(t, dir); !slices.Equal(got, []string{"evts-31", "evts-41"}) {
		t.Fatalf("files = %v", got)
	}
	if l.OldestSeq() != 31 {
		t.Fatalf("OldestSeq = %d", l.OldestSeq())
	}
	checkRecords(t, readAll(t, l, 0, 1<<30), seqRange(31, 50))
	// Under the cap: nothing more.
	if n, err := l.Trim(time.Now()); n != 0 || err != nil {
		t.Fatalf("Trim under cap = %d, %v", n, err)
	}
}

func TestTrimNeverRemovesActive(t *testing.T) {
	dir := t.TempDir()
	l := openLog(t, Options{Dir: dir, SegmentMaxEvents: 10, MaxBytes: 1})
	defer l.Close()
	appendSeqs(t, l, seqRange(1, 35), 5)
	n, err := l.Trim(time.Now())
	if err != nil || n != 3 {
		t.Fatalf("Trim = %d, %v; want 3", n, err)
	}
	if got := segmentFiles(t, dir); !slices.Equal(got, []string{"evts-31"}) {
		t.Fatalf("files = %v", got)
	}
	checkRecords(t, readAll(t, l, 0, 1<<30), seqRange(31, 35))
	if n, _ := l.Trim(time.Now()); n != 0 {
		t.Fatalf("Trim removed the active segment")
	}
	l.Close()
	if _, err := l.Trim(time.Now()); !errors.Is(err, ErrClosed) {
		t.Fatalf("Trim after Close = %v", err)
	}
}

// A reader that has a segment open keeps reading it while Trim removes it.
func TestTrimWhileReading(t *testing.T) {
	dir := t.TempDir()
	l := openLog(t, Options{Dir: dir, SegmentMaxEvents: 10, MaxBytes: 1})
	defer l.Close()
	appendSeqs(t, l, seqRange(1, 30), 10)
	var seen []int64
	trimmed := false
	last, err := l.ReadAfter(0, 1<<30, func(r Record) error {
		seen = append(seen, r.Seq)
		if r.Seq == 3 && !trimmed {
			trimmed = true
			if n, err := l.Trim(time.Now()); err != nil || n != 2 {
				t.Errorf("Trim = %d, %v", n, err)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// Segment 1 was open and is read to its end; segment 11 is gone, so
	// the read continues at the oldest retained record.
	want := append(seqRange(1, 10), seqRange(21, 30)...)
	if !slices.Equal(seen, want) || last != 30 {
		t.Fatalf("seen %v last %d, want %v", short(seen), last, short(want))
	}
}

// openFDs counts this process's open file descriptors.
func openFDs(t *testing.T) int {
	t.Helper()
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("no /proc/self/fd: %v", err)
	}
	return len(entries)
}

// Readers share one cached file per segment; Trim and Close release them.
func TestTrimAndCloseReleaseReadFiles(t *testing.T) {
	dir := t.TempDir()
	l := openLog(t, Options{Dir: dir, SegmentMaxEvents: 10})
	appendSeqs(t, l, seqRange(1, 50), 10)
	base := openFDs(t)
	checkRecords(t, readAll(t, l, 0, 100), seqRange(1, 50))
	checkRecords(t, readAll(t, l, 0, 1<<30), seqRange(1, 50))
	if got := openFDs(t); got != base+5 {
		t.Fatalf("%d fds after reading 5 segments twice, want %d", got, base+5)
	}
	l.opts.MaxBytes = 1
	if n, err := l.Trim(time.Now()); n != 4 || err != nil {
		t.Fatalf("Trim = %d, %v", n, err)
	}
	if got := openFDs(t); got != base+1 {
		t.Fatalf("%d fds after trimming 4 segments, want %d", got, base+1)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	// Close also releases the writer's file and the lock file.
	if got := openFDs(t); got != base-2 {
		t.Fatalf("%d fds after Close, want %d", got, base-2)
	}
}
