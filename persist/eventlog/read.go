package eventlog

import (
	"fmt"
	"io"
	"os"
)

// ReadAfter calls fn, in seq order, for each durable record with
// seq > cursor. It stops after about maxBytes of records (at least one
// record is visited; maxBytes <= 0 means one), at DurableSeq, or at the
// first error. A cursor older than the oldest retained record starts at
// the oldest.
//
// Records with FlagTakedown are not passed to fn but count as visited. It
// returns the seq of the last record visited (cursor if none); if fn fails,
// the record it failed on is not counted, so a retry from the returned seq
// resumes there.
//
// fn's Record.Payload aliases a pooled read buffer: it is valid only until
// fn returns, so fn must copy what it keeps. No lock is held while fn runs.
// Safe for concurrent use with every other method.
func (l *Log) ReadAfter(cursor int64, maxBytes int, fn func(r Record) error) (last int64, err error) {
	return l.readAfter(cursor, maxBytes, false, fn)
}

// ScanAfter is ReadAfter that also passes records with FlagTakedown (their
// Payload is zero-filled; their Meta is intact). Crash recovery uses it:
// what a record's meta says about its source still holds after a takedown.
func (l *Log) ScanAfter(cursor int64, maxBytes int, fn func(r Record) error) (last int64, err error) {
	return l.readAfter(cursor, maxBytes, true, fn)
}

func (l *Log) readAfter(cursor int64, maxBytes int, all bool, fn func(r Record) error) (last int64, err error) {
	if l.isClosed.Load() {
		return cursor, ErrClosed
	}
	rd := reader{
		l:      l,
		last:   cursor,
		dur:    l.durable.Load(),
		budget: int64(maxBytes),
		all:    all,
	}
	if rd.last >= rd.dur {
		return rd.last, nil
	}
	bp := l.readBufs.Get().(*[]byte)
	defer l.readBufs.Put(bp)
	rd.buf = *bp
	rd.chunk = min(max(maxBytes+HeaderSize, minReadChunk), len(rd.buf))

	var prevFirst int64 = -1 // firstSeq of the segment just read
	for {
		seg, first, f, err := l.openSegment(rd.last, prevFirst)
		if err != nil {
			return rd.last, err
		}
		if seg == nil {
			return rd.last, nil
		}
		done, err := rd.readSegment(seg, f, fn)
		seg.release()
		if done || err != nil {
			return rd.last, err
		}
		prevFirst = first
	}
}

// openSegment finds the segment to read next, the one holding last+1 if
// prevFirst < 0, else the first one after the segment that started at
// prevFirst, and acquires its file (the caller releases it). It acquires
// under mu so Trim cannot drop the segment first; once acquired the file
// stays readable even if Trim removes it. It returns the segment's first
// seq as read under mu (an empty tail segment may be renamed).
func (l *Log) openSegment(last, prevFirst int64) (*segment, int64, *os.File, error) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	segs := l.segs
	var i int
	if prevFirst < 0 {
		// Last segment with firstSeq <= last+1, or the oldest.
		lo, hi := 0, len(segs)
		for lo < hi {
			m := int(uint(lo+hi) >> 1)
			if segs[m].firstSeq <= last+1 {
				lo = m + 1
			} else {
				hi = m
			}
		}
		i = max(lo-1, 0)
	} else {
		lo, hi := 0, len(segs)
		for lo < hi {
			m := int(uint(lo+hi) >> 1)
			if segs[m].firstSeq <= prevFirst {
				lo = m + 1
			} else {
				hi = m
			}
		}
		i = lo
	}
	if i >= len(segs) {
		return nil, 0, nil, nil
	}
	s := segs[i]
	f, err := s.acquire()
	if err != nil {
		return nil, 0, nil, err
	}
	return s, s.firstSeq, f, nil
}

// reader is the state of one ReadAfter call.
type reader struct {
	l      *Log
	last   int64 // seq of the last record visited
	dur    int64 // DurableSeq when the call started: the read stops there
	budget int64 // bytes left before stopping
	all    bool  // pass taken-down records too
	chunk  int   // preferred pread size
	buf    []byte
	big    []byte // one-off buffer for a record larger than buf

	// Window: win holds file bytes [winOff, winOff+len(win)).
	win    []byte
	winOff int64
}

// readSegment visits the records of one open segment. done reports that
// the call is over (budget spent, durable end reached, or fn failed).
func (rd *reader) readSegment(s *segment, f *os.File, fn func(Record) error) (done bool, err error) {
	end := s.durSize.Load()
	off, ok := rd.l.hints.get(s, rd.last)
	if !ok {
		if off, err = s.locate(f, rd.last+1, rd.buf); err != nil {
			return true, err
		}
	}
	rd.win = nil
	prev := int64(0)
	for off < end {
		if off < rd.winOff || off+HeaderSize > rd.winOff+int64(len(rd.win)) {
			if err := rd.fill(f, off, HeaderSize, end); err != nil {
				return true, err
			}
		}
		p := rd.win[off-rd.winOff:]
		h := decodeHeader(p)
		size := h.recordSize()
		if !h.plausible(prev) || off+size > end {
			return true, fmt.Errorf("%w: %s: bad record at offset %d", ErrCorrupt, f.Name(), off)
		}
		if h.seq > rd.dur {
			return true, nil
		}
		if h.seq <= rd.last {
			prev = h.seq
			off += size
			continue
		}
		if h.flags&FlagTakedown == 0 || rd.all {
			if int64(len(p)) < size {
				// Re-read header and payload in one pread so a concurrent
				// Takedown is seen whole or not at all, then parse again.
				if err := rd.fill(f, off, size, end); err != nil {
					return true, err
				}
				continue
			}
			meta, payload, ok := splitStored(h.flags, p[HeaderSize:size:size])
			if !ok {
				return true, fmt.Errorf("%w: %s: bad meta section at offset %d", ErrCorrupt, f.Name(), off)
			}
			r := Record{Flags: h.flags &^ FlagMeta, Kind: h.kind, UID: h.uid, Seq: h.seq, Payload: payload, Meta: meta}
			if err := fn(r); err != nil {
				return true, err
			}
		}
		prev = h.seq
		rd.last = h.seq
		off += size
		rd.budget -= size
		if rd.budget <= 0 || rd.last >= rd.dur {
			rd.l.hints.put(s, rd.last, off)
			return true, nil
		}
	}
	return false, nil
}

// fill reads file bytes from off into the window: at least need bytes
// (a whole header or record), up to the chunk size, never past end.
func (rd *reader) fill(f *os.File, off, need, end int64) error {
	want := max(int64(rd.chunk), need)
	b := rd.buf
	if need > int64(len(b)) {
		if int64(cap(rd.big)) < need {
			rd.big = make([]byte, need)
		}
		b = rd.big[:need]
		want = need
	}
	want = min(want, int64(len(b)), end-off)
	rd.l.scrub.RLock()
	n, err := f.ReadAt(b[:want], off)
	rd.l.scrub.RUnlock()
	if int64(n) < need {
		if err == nil || err == io.EOF {
			return fmt.Errorf("%w: %s: short read at offset %d", ErrCorrupt, f.Name(), off)
		}
		return fmt.Errorf("eventlog: read %s: %w", f.Name(), err)
	}
	rd.win = b[:n]
	rd.winOff = off
	return nil
}
