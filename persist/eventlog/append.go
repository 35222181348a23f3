package eventlog

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// Append adds records to the log in order. Seqs must be strictly increasing
// and greater than LastSeq (gaps are allowed). The records are buffered, not
// synced: they become durable, and visible to ReadAfter, at the next Sync.
// If any record is invalid nothing of the batch is written. Append does not
// allocate per record; payloads are copied, so the caller may reuse them.
func (l *Log) Append(recs []Record) error {
	l.wmu.Lock()
	defer l.wmu.Unlock()
	if l.closed {
		return ErrClosed
	}
	if l.failed != nil {
		return l.failed
	}
	prev := l.last.Load()
	var bytes int
	for i := range recs {
		r := &recs[i]
		if r.Seq <= prev {
			return fmt.Errorf("%w: seq %d after %d", ErrOutOfOrder, r.Seq, prev)
		}
		if len(r.Payload) > MaxPayloadSize {
			return fmt.Errorf("%w: seq %d payload of %d bytes exceeds %d", ErrInvalidRecord, r.Seq, len(r.Payload), MaxPayloadSize)
		}
		if len(r.Meta) > MaxMetaSize {
			return fmt.Errorf("%w: seq %d meta of %d bytes exceeds %d", ErrInvalidRecord, r.Seq, len(r.Meta), MaxMetaSize)
		}
		if r.Flags&^knownFlags != 0 || (r.Flags&FlagMeta != 0 && len(r.Meta) == 0) {
			return fmt.Errorf("%w: seq %d unknown flags %#x", ErrInvalidRecord, r.Seq, r.Flags)
		}
		prev = r.Seq
		bytes += HeaderSize + r.storedLen()
	}
	for i := range recs {
		if err := l.appendOne(&recs[i]); err != nil {
			return l.fail(err)
		}
	}
	if len(recs) > 0 && l.oldest.Load() == 0 {
		l.oldest.Store(l.firstRetainedSeq())
	}
	l.metrics.appendedRecords.Add(len(recs))
	l.metrics.appendedBytes.Add(bytes)
	return nil
}

// appendOne writes one validated record into the buffer, rolling to a new
// segment first if the active one is full. Called with wmu held.
func (l *Log) appendOne(r *Record) error {
	recSize := HeaderSize + int64(r.storedLen())
	s := l.active
	switch {
	case s == nil:
		if err := l.roll(r.Seq); err != nil {
			return err
		}
	case s.count > 0 && (s.count >= l.opts.SegmentMaxEvents || s.size.Load()+recSize > l.opts.SegmentMaxBytes):
		if err := l.roll(r.Seq); err != nil {
			return err
		}
	case s.count == 0 && s.firstSeq != r.Seq:
		// An empty segment left by recovery is named after a seq that was
		// never made durable; name it after its real first record.
		if err := l.renameEmpty(r.Seq); err != nil {
			return err
		}
	}
	s = l.active
	off := s.size.Load()
	flags := r.Flags
	if len(r.Meta) > 0 {
		flags |= FlagMeta
	}
	putHeader(l.hdr[:], flags, r.Kind, r.storedLen(), r.UID, r.Seq)
	if _, err := l.w.Write(l.hdr[:]); err != nil {
		return fmt.Errorf("eventlog: write %s: %w", s.path, err)
	}
	if len(r.Meta) > 0 {
		var ml [2]byte
		binary.LittleEndian.PutUint16(ml[:], uint16(len(r.Meta)))
		if _, err := l.w.Write(ml[:]); err != nil {
			return fmt.Errorf("eventlog: write %s: %w", s.path, err)
		}
		if _, err := l.w.Write(r.Meta); err != nil {
			return fmt.Errorf("eventlog: write %s: %w", s.path, err)
		}
	}
	if _, err := l.w.Write(r.Payload); err != nil {
		return fmt.Errorf("eventlog: write %s: %w", s.path, err)
	}
	if s.count%indexInterval == 0 {
		s.addIndex(r.Seq, off)
	}
	s.count++
	s.size.Store(off + recSize)
	l.last.Store(r.Seq)
	return nil
}

// roll seals the active segment (flush and fsync, so that only the newest
// segment can ever hold a torn record) and starts a new one whose first
// record is seq. Called with wmu held.
func (l *Log) roll(seq int64) error {
	if old := l.active; old != nil {
		if err := l.w.Flush(); err != nil {
			return fmt.Errorf("eventlog: write %s: %w", old.path, err)
		}
		if err := l.wf.Sync(); err != nil {
			return fmt.Errorf("eventlog: fsync %s: %w", old.path, err)
		}
		if err := l.wf.Close(); err != nil {
			return fmt.Errorf("eventlog: close %s: %w", old.path, err)
		}
		l.wf = nil
		old.durSize.Store(old.size.Load())
	}
	path := filepath.Join(l.dir, segmentName(seq))
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return fmt.Errorf("eventlog: create segment: %w", err)
	}
	s := &segment{firstSeq: seq, path: path, indexed: true}
	l.mu.Lock()
	l.segs = append(l.segs, s)
	l.mu.Unlock()
	l.active = s
	l.wf = f
	if l.w == nil {
		l.w = bufio.NewWriterSize(f, writeBufferSize)
	} else {
		l.w.Reset(f)
	}
	l.dirDirty = true
	return nil
}

// renameEmpty renames the empty active segment to be named after seq.
// Called with wmu held.
func (l *Log) renameEmpty(seq int64) error {
	s := l.active
	path := filepath.Join(l.dir, segmentName(seq))
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := os.Rename(s.path, path); err != nil {
		return fmt.Errorf("eventlog: rename segment: %w", err)
	}
	s.path = path
	s.firstSeq = seq
	l.dirDirty = true
	return nil
}

// firstRetainedSeq is the first seq of the oldest segment holding records.
func (l *Log) firstRetainedSeq() int64 {
	l.mu.RLock()
	defer l.mu.RUnlock()
	for _, s := range l.segs {
		if s.size.Load() > 0 {
			return s.firstSeq
		}
	}
	return 0
}

// fail makes err sticky: after a failed write or fsync the state of the
// file and of the page cache is unknown, so the log refuses further writes
// until it is reopened (Open truncates whatever is torn). Called with wmu
// held.
func (l *Log) fail(err error) error {
	l.failed = fmt.Errorf("eventlog: unusable until reopened: %w", err)
	l.logger.Error("event log write failed", "err", err)
	return l.failed
}

// Sync writes the buffered records and fsyncs them: afterwards DurableSeq
// covers every record appended before the call. It is one fsync of the
// active segment (plus one of the directory after a segment was created).
func (l *Log) Sync() error {
	l.wmu.Lock()
	defer l.wmu.Unlock()
	if l.closed {
		return ErrClosed
	}
	if l.failed != nil {
		return l.failed
	}
	return l.syncLocked()
}

// syncLocked is Sync with wmu held.
func (l *Log) syncLocked() error {
	target := l.last.Load()
	if target == l.durable.Load() && !l.dirDirty {
		return nil
	}
	start := time.Now()
	if l.wf != nil {
		if err := l.w.Flush(); err != nil {
			return l.fail(fmt.Errorf("write %s: %w", l.active.path, err))
		}
		if err := l.wf.Sync(); err != nil {
			return l.fail(fmt.Errorf("fsync %s: %w", l.active.path, err))
		}
		l.active.durSize.Store(l.active.size.Load())
	}
	if l.dirDirty {
		if err := syncDir(l.dir); err != nil {
			return l.fail(err)
		}
		l.dirDirty = false
	}
	// durSize is stored before durable: a reader that loads durable first
	// then finds every record up to it within durSize.
	l.durable.Store(target)
	l.metrics.syncDuration.UpdateDuration(start)
	return nil
}
