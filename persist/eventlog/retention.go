package eventlog

import (
	"errors"
	"fmt"
	"os"
	"time"
)

// Trim applies retention: it deletes the oldest whole segments whose newest
// record (the file's mtime) is older than now-Retention, then the oldest
// whole segments while the total size exceeds MaxBytes. It only ever
// removes a prefix of the log, so retained seqs stay contiguous, and never
// the active (newest) segment. Readers that have a removed segment open
// finish reading it; later reads start at the new oldest segment.
func (l *Log) Trim(now time.Time) (removedSegments int, err error) {
	if l.isClosed.Load() {
		return 0, ErrClosed
	}
	l.trimMu.Lock()
	defer l.trimMu.Unlock()

	var (
		removed      []*segment
		byAge        int
		cutoff       = now.Add(-l.opts.Retention)
		statErr      error
		removedBytes int64
	)
	l.mu.Lock()
	segs := l.segs
	k := 0 // segs[:k] are removed
	if l.opts.Retention > 0 {
		for ; k < len(segs)-1; k++ {
			fi, err := os.Stat(segs[k].path)
			if err != nil {
				statErr = fmt.Errorf("eventlog: %w", err)
				break
			}
			if !fi.ModTime().Before(cutoff) {
				break
			}
		}
		byAge = k
	}
	if l.opts.MaxBytes > 0 {
		var total int64
		for _, s := range segs {
			total += s.size.Load()
		}
		for i := range k {
			total -= segs[i].size.Load()
		}
		for ; k < len(segs)-1 && total > l.opts.MaxBytes; k++ {
			total -= segs[k].size.Load()
		}
	}
	if k > 0 {
		removed = make([]*segment, k)
		copy(removed, segs[:k])
		n := copy(segs, segs[k:])
		clear(segs[n:])
		l.segs = segs[:n]
		var oldest int64
		if l.segs[0].size.Load() > 0 {
			oldest = l.segs[0].firstSeq
		}
		l.oldest.Store(oldest)
	}
	l.mu.Unlock()
	if len(removed) > 0 {
		l.hints.forget(removed)
		for _, s := range removed {
			s.drop()
		}
	}

	var errs []error
	if statErr != nil {
		errs = append(errs, statErr)
	}
	for i, s := range removed {
		removedBytes += s.size.Load()
		if err := os.Remove(s.path); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("eventlog: %w", err))
		}
		if i < byAge {
			l.metrics.removedSegmentsAge.Inc()
		} else {
			l.metrics.removedSegmentsSize.Inc()
		}
	}
	if len(removed) > 0 {
		l.logger.Info("event log retention removed segments",
			"segments", len(removed), "byAge", byAge, "bytes", removedBytes,
			"oldestSeq", l.oldest.Load())
	}
	return len(removed), errors.Join(errs...)
}
