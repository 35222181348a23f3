package eventlog

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
)

// recoveryReader is how recovery reads the newest segment; tests replace
// it to inject read errors.
var recoveryReader = func(f *os.File) io.ReaderAt { return f }

// recoverTail scans the newest segment, truncates whatever follows its last
// whole record (a write torn by a crash, or garbage), builds its index and
// opens it for appending. It returns the seq of the last whole record, or 0
// if none.
func (l *Log) recoverTail(s *segment) (int64, error) {
	f, err := os.OpenFile(s.path, os.O_RDWR, 0)
	if err != nil {
		return 0, fmt.Errorf("eventlog: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return 0, fmt.Errorf("eventlog: %w", err)
	}
	size := fi.Size()
	bp := l.readBufs.Get().(*[]byte)
	defer l.readBufs.Put(bp)

	var (
		lastSeq int64
		count   int
		idx     []indexEntry
	)
	var stored []byte
	ra := recoveryReader(f)
	end, err := scanHeaders(ra, f.Name(), size, s.firstSeq, *bp, func(h header, off int64) error {
		if l.opts.CheckPayload != nil && h.flags&FlagTakedown == 0 {
			if cap(stored) < int(h.length) {
				stored = make([]byte, h.length)
			}
			stored = stored[:h.length]
			if n, err := ra.ReadAt(stored, off+HeaderSize); n < len(stored) {
				// scanHeaders saw the whole record within the file's size,
				// so only an I/O error can make this short: that is not a
				// torn tail, and the file must not be truncated for it.
				if err == nil || err == io.EOF {
					err = io.ErrUnexpectedEOF
				}
				return fmt.Errorf("eventlog: read %s at offset %d: %w", s.path, off, err)
			}
			_, payload, ok := splitStored(h.flags, stored)
			if !ok {
				l.logger.Warn("event log record has a bad meta section", "segment", s.path, "seq", h.seq)
				return errTorn
			}
			if err := l.opts.CheckPayload(payload); err != nil {
				l.logger.Warn("event log record failed its payload check", "segment", s.path, "seq", h.seq, "err", err)
				return errTorn
			}
		}
		if count%indexInterval == 0 {
			idx = append(idx, indexEntry{seq: h.seq, off: off})
		}
		count++
		lastSeq = h.seq
		return nil
	})
	if err != nil && !errors.Is(err, errTorn) {
		f.Close()
		return 0, err
	}
	if end < size {
		l.logger.Warn("truncating torn tail of event log",
			"segment", s.path, "offset", end, "bytes", size-end, "lastSeq", lastSeq)
		if err := f.Truncate(end); err != nil {
			f.Close()
			return 0, fmt.Errorf("eventlog: truncate %s: %w", s.path, err)
		}
		l.metrics.recoveryTruncatedBytes.Add(int(size - end))
	}
	// The records found are reported durable, and a process crash leaves
	// written but unsynced records in the page cache only: fsync them
	// before anyone can broadcast them.
	if err := f.Sync(); err != nil {
		f.Close()
		return 0, fmt.Errorf("eventlog: fsync %s: %w", s.path, err)
	}
	if _, err := f.Seek(end, io.SeekStart); err != nil {
		f.Close()
		return 0, fmt.Errorf("eventlog: %w", err)
	}
	s.size.Store(end)
	s.durSize.Store(end)
	s.count = count
	s.idx = idx
	s.indexed = true

	l.active = s
	l.wf = f
	l.w = bufio.NewWriterSize(f, writeBufferSize)
	return lastSeq, nil
}
