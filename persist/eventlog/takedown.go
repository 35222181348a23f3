package eventlog

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"time"
)

// zeroBlock is the source of the zero bytes Takedown writes over payloads.
var zeroBlock [64 << 10]byte

// takedownTarget is one record Takedown scrubs.
type takedownTarget struct {
	off    int64
	flags  uint32
	length uint32
}

// Takedown scrubs every record of uid in every segment, including records
// appended but not yet synced: it sets FlagTakedown in each header, fsyncs,
// then zero-fills the payloads and fsyncs again, so that after a crash a
// zeroed payload always carries the flag. It returns the number of records
// newly taken down; records already flagged are not counted again but are
// zeroed again, in case a crash interrupted an earlier call between phases.
//
// Readers never observe a half-scrubbed record. A segment's mtime is
// restored afterwards so that retention by age is not extended.
func (l *Log) Takedown(uid uint64) (n int, err error) {
	if l.isClosed.Load() {
		return 0, ErrClosed
	}
	l.tdMu.Lock()
	defer l.tdMu.Unlock()

	// Push buffered records into the active file and snapshot each
	// segment's extent; records appended later are not this call's.
	l.wmu.Lock()
	if l.closed {
		l.wmu.Unlock()
		return 0, ErrClosed
	}
	if l.failed != nil {
		err := l.failed
		l.wmu.Unlock()
		return 0, err
	}
	if l.w != nil {
		if err := l.w.Flush(); err != nil {
			err = l.fail(fmt.Errorf("write %s: %w", l.active.path, err))
			l.wmu.Unlock()
			return 0, err
		}
	}
	l.mu.RLock()
	segs := make([]*segment, len(l.segs))
	sizes := make([]int64, len(l.segs))
	for i, s := range l.segs {
		segs[i] = s
		sizes[i] = s.size.Load()
	}
	l.mu.RUnlock()
	l.wmu.Unlock()

	bp := l.readBufs.Get().(*[]byte)
	defer l.readBufs.Put(bp)
	for i, s := range segs {
		k, err := l.takedownSegment(s, sizes[i], uid, *bp, i < len(segs)-1)
		n += k
		if err != nil {
			l.metrics.takedownRecords.Add(n)
			return n, err
		}
	}
	l.metrics.takedownRecords.Add(n)
	if n > 0 {
		l.logger.Info("event log takedown", "uid", uid, "records", n)
	}
	return n, nil
}

// takedownSegment scrubs uid's records in the first size bytes of one
// segment. sealed segments get their mtime back; the active one is being
// written anyway.
func (l *Log) takedownSegment(s *segment, size int64, uid uint64, buf []byte, sealed bool) (int, error) {
	l.mu.RLock()
	path, first := s.path, s.firstSeq
	l.mu.RUnlock()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil // removed by Trim meanwhile
	}
	if err != nil {
		return 0, fmt.Errorf("eventlog: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return 0, fmt.Errorf("eventlog: %w", err)
	}
	var targets []takedownTarget
	end, err := scanHeaders(f, path, size, first, buf, func(h header, off int64) error {
		if h.uid == uid {
			targets = append(targets, takedownTarget{off: off, flags: h.flags, length: h.length})
		}
		return nil
	})
	if err != nil || end != size {
		if err == nil || errors.Is(err, errTorn) {
			return 0, fmt.Errorf("%w: %s: bad record at offset %d", ErrCorrupt, path, end)
		}
		return 0, err
	}
	if len(targets) == 0 {
		return 0, nil
	}

	// Phase 1: flags, so readers skip the records from now on. Records
	// already flagged are zeroed again below: a crash may have come
	// between the phases of an earlier call.
	var (
		word  [4]byte
		fresh int
	)
	l.scrub.Lock()
	for _, t := range targets {
		if t.flags&FlagTakedown != 0 {
			continue
		}
		fresh++
		binary.LittleEndian.PutUint32(word[:], t.flags|FlagTakedown)
		if _, err := f.WriteAt(word[:], t.off+offFlags); err != nil {
			l.scrub.Unlock()
			return 0, fmt.Errorf("eventlog: takedown %s: %w", path, err)
		}
	}
	l.scrub.Unlock()
	if err := f.Sync(); err != nil {
		return 0, fmt.Errorf("eventlog: fsync %s: %w", path, err)
	}

	// Phase 2: zero the payloads.
	l.scrub.Lock()
	for _, t := range targets {
		// Only the payload is zeroed: a meta section (the record's source,
		// which crash recovery reads) is kept.
		var ml [2]byte
		if t.flags&FlagMeta != 0 {
			if _, err := f.ReadAt(ml[:], t.off+HeaderSize); err != nil {
				l.scrub.Unlock()
				return 0, fmt.Errorf("eventlog: takedown %s: %w", path, err)
			}
		}
		start := payloadOffset(t.flags, binary.LittleEndian.Uint16(ml[:]))
		if start-HeaderSize > int64(t.length) {
			l.scrub.Unlock()
			return 0, fmt.Errorf("%w: %s: bad meta section at offset %d", ErrCorrupt, path, t.off)
		}
		pos := t.off + start
		for left := int64(t.length) - (start - HeaderSize); left > 0; {
			w := min(left, int64(len(zeroBlock)))
			if _, err := f.WriteAt(zeroBlock[:w], pos); err != nil {
				l.scrub.Unlock()
				return 0, fmt.Errorf("eventlog: takedown %s: %w", path, err)
			}
			pos += w
			left -= w
		}
	}
	l.scrub.Unlock()
	if err := f.Sync(); err != nil {
		return 0, fmt.Errorf("eventlog: fsync %s: %w", path, err)
	}
	// Keep the segment's age: retention measures it by mtime.
	if sealed {
		if err := os.Chtimes(path, time.Time{}, fi.ModTime()); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fresh, fmt.Errorf("eventlog: %w", err)
		}
	}
	return fresh, nil
}
