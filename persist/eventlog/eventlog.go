// Package eventlog is the relay's durable event log.
//
// The sequencer (one goroutine) appends records in seq order and calls Sync
// to group-commit them; only records covered by DurableSeq may be broadcast
// or replayed, so a consumer never sees an event that a crash can lose.
// Replay workers call ReadAfter concurrently with the writer, with Trim
// (retention) and with Takedown (scrubbing an account's payloads).
//
// On disk the log is a directory of segment files named evts-<firstSeq>.
// Each record is a 28-byte little-endian header (flags u32, kind u32,
// len u32, uid u64, seq i64; the layout of indigo's diskpersist) followed by
// len payload bytes. The package knows nothing of the payload's meaning.
//
// Invariants that recovery relies on:
//   - a segment is fsynced before the next one is created, so only the
//     newest segment can end in a torn record;
//   - a segment's name is the seq of its first record, so the largest name
//     is a floor for the next seq even when the newest segment is empty.
package eventlog

import (
	"bufio"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/VictoriaMetrics/metrics"
)

// HeaderSize is the size of a record header on disk.
const HeaderSize = 28

// FlagTakedown marks a record whose payload was zero-filled by Takedown.
// Readers skip such records.
const FlagTakedown uint32 = 1

// FlagMeta marks a record that carries a meta section before its payload:
// on disk the payload area is a little-endian u16 meta length, the meta
// bytes, then the payload. The log does not interpret meta; the relay
// keeps in it what crash recovery needs to rebuild derived state (source
// host, upstream seq, the repo head an event moves to). Takedown zero-fills
// only the payload, so meta survives it.
const FlagMeta uint32 = 2

// knownFlags are the flag bits a record may carry. Any other bit in a header
// means the bytes are not a record (recovery treats them as a torn tail).
const knownFlags = FlagTakedown | FlagMeta

// MaxMetaSize bounds a record's meta section (its length is a u16).
const MaxMetaSize = 1<<16 - 1

const (
	// DefaultSegmentMaxEvents is the number of records after which a new
	// segment is started when Options.SegmentMaxEvents is zero.
	DefaultSegmentMaxEvents = 100_000
	// DefaultSegmentMaxBytes is the segment size after which a new segment
	// is started when Options.SegmentMaxBytes is zero.
	DefaultSegmentMaxBytes int64 = 256 << 20
	// MaxPayloadSize bounds one record's payload. The relay's frames are at
	// most 5 MB; a larger length in a header is garbage (recovery truncates
	// there) and a larger payload passed to Append is refused.
	MaxPayloadSize = 16 << 20
)

const (
	// segmentPrefix starts every segment file name; the rest is the
	// decimal seq of the segment's first record.
	segmentPrefix = "evts-"
	// lockFileName is flock'ed while a Log is open so that two processes
	// (or two Opens in one process) never write the same directory.
	lockFileName = "eventlog.lock"
	// writeBufferSize is the append buffer. Records are copied into it and
	// written with one write(2) when it fills or at Sync.
	writeBufferSize = 1 << 20
	// indexInterval is the spacing, in records, of the sparse in-memory
	// index of a segment: a cursor is found by binary search in the index
	// and then a scan of at most this many records.
	indexInterval = 1024
	// readBufferSize is the largest single pread of ReadAfter and of the
	// header scans; buffers of this size are pooled.
	readBufferSize = 1 << 20
	// minReadChunk is the smallest pread of ReadAfter, so that small
	// maxBytes values still read efficiently.
	minReadChunk = 64 << 10
)

// Errors returned by the log.
var (
	// ErrClosed is returned by every method after Close.
	ErrClosed = errors.New("eventlog: closed")
	// ErrOutOfOrder is returned by Append when a record's seq is not greater
	// than the previous one (in the batch or already appended). Nothing of
	// the batch is written.
	ErrOutOfOrder = errors.New("eventlog: seq not greater than the last appended")
	// ErrCorrupt is returned when a sealed segment does not parse, or when a
	// file is shorter than the records the log knows are in it.
	ErrCorrupt = errors.New("eventlog: corrupt segment")
	// ErrInvalidRecord is returned by Append for a payload over
	// MaxPayloadSize or unknown flag bits. Nothing of the batch is written.
	ErrInvalidRecord = errors.New("eventlog: invalid record")
	// ErrLocked is returned by Open when another Log holds the directory.
	ErrLocked = errors.New("eventlog: directory is in use by another log")
	// ErrNoDir is returned by Open when Options.Dir is empty.
	ErrNoDir = errors.New("eventlog: Options.Dir is empty")
)

// Record is one event. Payload is the complete outgoing event-stream
// message (CBOR header and body carrying Seq). Meta, when not empty, is
// stored beside it (FlagMeta) and returned by reads, never mixed into
// Payload; Append sets FlagMeta itself.
type Record struct {
	Flags, Kind uint32
	UID         uint64
	Seq         int64
	Payload     []byte
	Meta        []byte
}

// storedLen is the length field of the record's header: payload, plus the
// meta section if any.
func (r *Record) storedLen() int {
	if len(r.Meta) == 0 {
		return len(r.Payload)
	}
	return 2 + len(r.Meta) + len(r.Payload)
}

// Options configure a Log. Zero values select the defaults.
type Options struct {
	// Dir holds the segment files; it is created if missing.
	Dir string
	// SegmentMaxEvents: roll to a new segment after this many records.
	SegmentMaxEvents int
	// SegmentMaxBytes: or when the next record would exceed this many bytes.
	SegmentMaxBytes int64
	// Retention: Trim deletes whole segments whose newest record (file
	// mtime) is older than this. 0 keeps everything.
	Retention time.Duration
	// MaxBytes: Trim deletes the oldest whole segments while the total
	// exceeds this. 0 means no cap. The active segment is never deleted.
	MaxBytes int64
	// Logger receives recovery and retention messages; nil = slog.Default().
	Logger *slog.Logger
	// CheckPayload, when set, is called at Open for each record of the
	// newest segment that is not taken down. A record whose payload fails
	// is treated as torn: it and everything after it are truncated. This
	// guards against a power loss that persisted a record's header but not
	// its payload (zero-filled pages on some file systems), which the
	// header checks alone cannot see.
	CheckPayload func(payload []byte) error
	// Metrics is the set the log's metrics are created in (the relay's);
	// nil = a set of the log's own, not exported.
	Metrics *metrics.Set
}

// Stats is a snapshot of the log's shape.
type Stats struct {
	Segments                       int
	Bytes                          int64
	OldestSeq, LastSeq, DurableSeq int64
}

// Log is an append-only, segmented, durable event log. Append and Sync are
// for one writer goroutine (they are serialized if called from several);
// every other method is safe for concurrent use.
type Log struct {
	dir     string
	opts    Options
	logger  *slog.Logger
	metrics logMetrics
	lock    *os.File // flock'ed lockFileName

	// wmu guards the writer state below. Sync holds it across fsync; the
	// sequencer is the only caller of Append and Sync, so nothing waits.
	wmu      sync.Mutex
	active   *segment      // newest segment, receives appends
	wf       *os.File      // active segment, opened for writing
	w        *bufio.Writer // buffers appends to wf
	hdr      [HeaderSize]byte
	dirDirty bool  // a segment was created or renamed since the last directory fsync
	failed   error // sticky: a write or fsync failed; the log must be reopened
	closed   bool

	// mu guards segs, the segment list in seq order. Readers hold it only to
	// find and open a segment; the writer takes it to add one, Trim to drop.
	mu   sync.RWMutex
	segs []*segment

	// scrub is held shared by readers across each pread and exclusively by
	// Takedown across its writes, so a reader's buffer never holds half a
	// scrubbed record.
	scrub sync.RWMutex
	// tdMu serializes Takedown calls.
	tdMu sync.Mutex
	// trimMu serializes Trim calls.
	trimMu sync.Mutex

	last     atomic.Int64 // seq of the last appended record
	durable  atomic.Int64 // seq of the last fsynced record
	oldest   atomic.Int64 // seq of the first retained record, 0 if none
	isClosed atomic.Bool

	readBufs sync.Pool // *[]byte of readBufferSize
	hints    hintCache // where recent ReadAfter calls stopped
}

// segment is one file of the log.
type segment struct {
	// firstSeq and path change only when an empty recovered segment is
	// renamed for its first record (under Log.mu and Log.wmu).
	firstSeq int64
	path     string

	size    atomic.Int64 // bytes of whole records appended (buffered or written)
	durSize atomic.Int64 // bytes of whole, fsynced records: what readers may read

	count int // records in the segment; writer-owned, meaningful for the active segment

	idxMu   sync.Mutex
	idx     []indexEntry // every indexInterval-th record
	indexed bool         // idx covers the segment; false for sealed segments found by Open until first read

	// The read-only file shared by all readers, opened on first read and
	// kept open (an open per ReadAfter call cost more than its pread).
	// It is closed when the segment is dropped (Trim, Close) and no reader
	// holds it; an unlinked file stays readable until then.
	rfMu    sync.Mutex
	rf      *os.File
	refs    int
	dropped bool
}

// acquire returns the segment's shared read-only file, opening it if
// needed, and counts the caller as a user until release. Called with
// Log.mu held (shared), so the segment is not dropped meanwhile.
func (s *segment) acquire() (*os.File, error) {
	s.rfMu.Lock()
	defer s.rfMu.Unlock()
	if s.rf == nil {
		f, err := os.Open(s.path)
		if err != nil {
			return nil, fmt.Errorf("eventlog: %w", err)
		}
		s.rf = f
	}
	s.refs++
	return s.rf, nil
}

// release ends a use begun by acquire.
func (s *segment) release() {
	s.rfMu.Lock()
	defer s.rfMu.Unlock()
	s.refs--
	if s.refs == 0 && s.dropped {
		s.closeFile()
	}
}

// drop marks the segment as gone from the log: its file is closed now if
// unused, else by the last release.
func (s *segment) drop() {
	s.rfMu.Lock()
	defer s.rfMu.Unlock()
	s.dropped = true
	if s.refs == 0 {
		s.closeFile()
	}
}

// closeFile closes the shared read file. Called with rfMu held.
func (s *segment) closeFile() {
	if s.rf != nil {
		s.rf.Close() // read-only: nothing to lose
		s.rf = nil
	}
}

// indexEntry locates one record of a segment.
type indexEntry struct {
	seq int64
	off int64
}

// Open opens (creating if needed) the log in opts.Dir. It scans the newest
// segment and truncates a torn or garbage tail; older segments are indexed
// lazily on first read. LastSeq resumes after the last whole record.
func Open(opts Options) (*Log, error) {
	if opts.Dir == "" {
		return nil, ErrNoDir
	}
	if opts.SegmentMaxEvents <= 0 {
		opts.SegmentMaxEvents = DefaultSegmentMaxEvents
	}
	if opts.SegmentMaxBytes <= 0 {
		opts.SegmentMaxBytes = DefaultSegmentMaxBytes
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Metrics == nil {
		opts.Metrics = metrics.NewSet()
	}
	if err := os.MkdirAll(opts.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("eventlog: %w", err)
	}
	l := &Log{
		dir:     opts.Dir,
		opts:    opts,
		logger:  opts.Logger.With("component", "eventlog"),
		metrics: newLogMetrics(opts.Metrics),
	}
	l.readBufs.New = func() any {
		b := make([]byte, readBufferSize)
		return &b
	}
	lock, err := lockDir(opts.Dir)
	if err != nil {
		return nil, err
	}
	l.lock = lock
	if err := l.load(); err != nil {
		lock.Close()
		return nil, err
	}
	return l, nil
}

// lockDir takes an exclusive flock on the directory's lock file.
func lockDir(dir string) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(dir, lockFileName), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("eventlog: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w: %s", ErrLocked, dir)
		}
		return nil, fmt.Errorf("eventlog: lock %s: %w", dir, err)
	}
	return f, nil
}

// load lists the segments, recovers the newest and sets the seq counters.
func (l *Log) load() error {
	entries, err := os.ReadDir(l.dir)
	if err != nil {
		return fmt.Errorf("eventlog: %w", err)
	}
	var segs []*segment
	for _, e := range entries {
		first, ok := parseSegmentName(e.Name())
		if !ok || !e.Type().IsRegular() {
			continue
		}
		segs = append(segs, &segment{firstSeq: first, path: filepath.Join(l.dir, e.Name())})
	}
	sort.Slice(segs, func(i, j int) bool { return segs[i].firstSeq < segs[j].firstSeq })

	// Sealed segments were fsynced before their successor was created, so
	// they are whole; an empty one holds nothing and is dropped.
	kept := segs[:0]
	for i, s := range segs {
		if i == len(segs)-1 {
			kept = append(kept, s)
			break
		}
		fi, err := os.Stat(s.path)
		if err != nil {
			return fmt.Errorf("eventlog: %w", err)
		}
		if fi.Size() == 0 {
			if err := os.Remove(s.path); err != nil {
				return fmt.Errorf("eventlog: %w", err)
			}
			l.dirDirty = true
			continue
		}
		s.size.Store(fi.Size())
		s.durSize.Store(fi.Size())
		kept = append(kept, s)
	}
	segs = kept
	l.segs = segs
	if len(segs) == 0 {
		return nil
	}

	tail := segs[len(segs)-1]
	lastSeq, err := l.recoverTail(tail)
	if err != nil {
		return err
	}
	// The tail's name is the seq its first record was given; everything
	// below it was used by older segments even if the tail is now empty.
	l.last.Store(max(lastSeq, tail.firstSeq-1))
	l.durable.Store(l.last.Load())
	if segs[0].size.Load() > 0 {
		l.oldest.Store(segs[0].firstSeq)
	}
	if l.dirDirty {
		if err := syncDir(l.dir); err != nil {
			return err
		}
		l.dirDirty = false
	}
	return nil
}

// segmentName is the file name of a segment whose first record is seq.
func segmentName(seq int64) string {
	return segmentPrefix + strconv.FormatInt(seq, 10)
}

// parseSegmentName returns the first seq of a segment file name.
func parseSegmentName(name string) (int64, bool) {
	rest, ok := strings.CutPrefix(name, segmentPrefix)
	if !ok {
		return 0, false
	}
	seq, err := strconv.ParseInt(rest, 10, 64)
	if err != nil || seq <= 0 || segmentName(seq) != name {
		return 0, false
	}
	return seq, true
}

// syncDir fsyncs a directory so that created, renamed and removed entries
// survive a crash.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("eventlog: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("eventlog: fsync dir: %w", err)
	}
	return nil
}

// LastSeq is the seq of the last appended record (0 if the log never had
// one). Safe for concurrent use.
func (l *Log) LastSeq() int64 { return l.last.Load() }

// DurableSeq is the seq of the last fsynced record: everything up to it
// survives a crash and may be broadcast. Safe for concurrent use.
func (l *Log) DurableSeq() int64 { return l.durable.Load() }

// OldestSeq is the seq of the first retained record (0 if none). Safe for
// concurrent use.
func (l *Log) OldestSeq() int64 { return l.oldest.Load() }

// Stats returns the segment count, total bytes and seq counters.
func (l *Log) Stats() Stats {
	st := Stats{
		OldestSeq:  l.oldest.Load(),
		LastSeq:    l.last.Load(),
		DurableSeq: l.durable.Load(),
	}
	l.mu.RLock()
	st.Segments = len(l.segs)
	for _, s := range l.segs {
		st.Bytes += s.size.Load()
	}
	l.mu.RUnlock()
	return st
}

// Close flushes and fsyncs what was appended, closes the files and releases
// the directory. Calling Close twice returns ErrClosed.
func (l *Log) Close() error {
	l.wmu.Lock()
	defer l.wmu.Unlock()
	if l.closed {
		return ErrClosed
	}
	var err error
	if l.failed == nil {
		err = l.syncLocked()
	} else {
		err = l.failed
	}
	if l.wf != nil {
		if cerr := l.wf.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("eventlog: %w", cerr)
		}
		l.wf = nil
	}
	l.closed = true
	l.isClosed.Store(true)
	l.mu.RLock()
	for _, s := range l.segs {
		s.drop()
	}
	l.mu.RUnlock()
	if cerr := l.lock.Close(); cerr != nil && err == nil {
		err = fmt.Errorf("eventlog: %w", cerr)
	}
	return err
}
