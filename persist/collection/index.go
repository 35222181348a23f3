// Package collection is the relay's collection index: which repos (DIDs)
// hold records of a collection (NSID), for com.atproto.sync.listReposByCollection.
//
// The index is a pure function of the event log it follows, plus the
// repo snapshots that resyncs fetched. It lives in its own Pebble DB and
// stores, in the same batch as every change, the seq of the last log
// record it applied (the checkpoint). Pebble applies a batch atomically
// and in order, so after any crash the index is exactly the result of
// applying the log through its checkpoint, and the follower continues
// from there. Batches are committed without fsync: a crash can lose the
// newest batches, but only whole batches, checkpoint included, so the
// follower re-applies them from the log.
//
// Counts. Per (did, collection) the index keeps the number of records,
// maintained from commit ops (create +1, delete -1). A count is exact
// when the follower saw the repo from its first commit (since = null) or
// a resync established it; otherwise it is unknown: a lower bound on
// the number of records, because the records the repo held before the
// relay first saw it are not known. A DID is listed under a collection
// exactly when its count is exact and positive, or unknown (a DID with an
// unknown count stays listed until a resync decides). A delete that
// would take an unknown count to zero owes a resync, never a guess.
package collection

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"

	"github.com/cockroachdb/pebble"
	"github.com/cockroachdb/pebble/bloom"
)

// Limits.
const (
	// MaxListLimit bounds one page of List.
	MaxListLimit = 2000
	// MaxInflight bounds concurrent resyncs (BeginResync refuses more).
	MaxInflight = 256
	// MaxInflightDeltas bounds the ops remembered for one DID while its
	// resync runs; past it the resync is abandoned (ErrOverflow) and the
	// DID stays owed a resync.
	MaxInflightDeltas = 100_000
	// DefaultCacheBytes is the index's Pebble block cache when Open is
	// given none: the memory bound of its reads (Pebble evicts past it).
	DefaultCacheBytes = 16 << 20
	// memTableBytes is the index's write buffer. Every create or delete
	// op rewrites a count, so a larger one fills anyway and only holds
	// more memory; Pebble keeps up to two (filling, and flushing or kept
	// for reuse).
	memTableBytes = 4 << 20
)

// Errors.
var (
	ErrClosed    = errors.New("collection: index closed")
	ErrRemoved   = errors.New("collection: account was removed during the resync")
	ErrStale     = errors.New("collection: repo snapshot is older than what the index applied")
	ErrOverflow  = errors.New("collection: too many ops during the resync")
	ErrBusy      = errors.New("collection: too many resyncs in flight, or one for this DID already")
	ErrNoResync  = errors.New("collection: no resync in flight for this DID")
	ErrBadCursor = errors.New("collection: malformed cursor")
)

// Index is the collection index. Writers (Apply, resync results,
// backfill, cleaner) are serialized by one mutex; List reads the DB
// without it.
type Index struct {
	db *pebble.DB

	mu          sync.Mutex // serializes writers
	inflight    map[string]*inflight
	hot         hotCache // guarded by mu
	applied     atomic.Int64
	entries     atomic.Int64
	collections atomic.Int64
	pending     atomic.Int64
	closed      atomic.Bool

	wmu   sync.Mutex
	waitC chan struct{} // closed and replaced after each applied batch
}

// Open opens (creating if needed) the index in dir, with a block cache of
// cacheBytes (DefaultCacheBytes if it is not positive).
func Open(dir string, cacheBytes int64) (*Index, error) {
	if cacheBytes <= 0 {
		cacheBytes = DefaultCacheBytes
	}
	cache := pebble.NewCache(cacheBytes)
	defer cache.Unref()
	opts := &pebble.Options{Logger: quietLogger{}, Cache: cache, MemTableSize: memTableBytes}
	opts.Levels = make([]pebble.LevelOptions, 7)
	for i := range opts.Levels {
		// Bloom filters: the follower's point reads are mostly misses (a
		// DID's first op in a collection), answered without a block read.
		opts.Levels[i].FilterPolicy = bloom.FilterPolicy(10)
		opts.Levels[i].FilterType = pebble.TableFilter
	}
	db, err := pebble.Open(dir, opts)
	if err != nil {
		return nil, fmt.Errorf("collection: open %s: %w", dir, err)
	}
	ix := &Index{db: db, inflight: map[string]*inflight{}, waitC: make(chan struct{})}
	ix.hot.reset()
	for _, m := range []struct {
		k []byte
		v *atomic.Int64
	}{{keyApplied, &ix.applied}, {keyEntries, &ix.entries}, {keyCollections, &ix.collections}, {keyPending, &ix.pending}} {
		v, err := getInt(db, m.k)
		if err != nil {
			db.Close()
			return nil, err
		}
		m.v.Store(v)
	}
	return ix, nil
}

var keyPending = []byte("mpending") // int64: resync markers

// Close closes the DB.
func (ix *Index) Close() error {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	if ix.closed.Swap(true) {
		return nil
	}
	return ix.db.Close()
}

func getInt(r pebble.Reader, k []byte) (int64, error) {
	v, c, err := r.Get(k)
	if errors.Is(err, pebble.ErrNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	defer c.Close()
	return decodeInt(v)
}

// getCopy returns a copy of k's value, nil if absent.
func getCopy(r pebble.Reader, k []byte) ([]byte, bool, error) {
	v, c, err := r.Get(k)
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	out := append([]byte(nil), v...)
	c.Close()
	return out, true, nil
}

// Applied is the seq of the last event log record applied.
func (ix *Index) Applied() int64 { return ix.applied.Load() }

// AppliedC returns a channel closed at the next applied batch.
func (ix *Index) AppliedC() <-chan struct{} {
	ix.wmu.Lock()
	defer ix.wmu.Unlock()
	return ix.waitC
}

func (ix *Index) signal() {
	ix.wmu.Lock()
	close(ix.waitC)
	ix.waitC = make(chan struct{})
	ix.wmu.Unlock()
}

// Stats are the index's figures.
type Stats struct {
	Entries       int64 `json:"entries"`       // listed (collection, did) pairs
	Collections   int64 `json:"collections"`   // collections with at least one listed DID
	ResyncPending int64 `json:"resyncPending"` // DIDs owed a resync (durable markers)
	AppliedSeq    int64 `json:"appliedSeq"`    // event log checkpoint
	DiskBytes     int64 `json:"diskBytes"`
}

// Stats returns the index's figures.
func (ix *Index) Stats() Stats {
	s := Stats{
		Entries:       ix.entries.Load(),
		Collections:   ix.collections.Load(),
		ResyncPending: ix.pending.Load(),
		AppliedSeq:    ix.applied.Load(),
	}
	if !ix.closed.Load() {
		m := ix.db.Metrics()
		s.DiskBytes = int64(m.DiskSpaceUsage())
	}
	return s
}

// Flush makes every applied batch durable (tests, benchmarks, shutdown).
func (ix *Index) Flush() error {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	if ix.closed.Load() {
		return ErrClosed
	}
	return ix.db.Flush()
}

// Compact compacts the whole DB (benchmarks measuring bytes per entry).
func (ix *Index) Compact() error {
	return ix.db.Compact([]byte{0}, []byte{0xff}, true)
}

// List returns up to limit DIDs listed under coll with DID > after, in
// DID order, and whether more follow.
func (ix *Index) List(coll, after string, limit int) (dids []string, more bool, err error) {
	if ix.closed.Load() {
		return nil, false, ErrClosed
	}
	if limit < 1 || limit > MaxListLimit {
		limit = MaxListLimit
	}
	prefix := listPrefix(coll)
	lower := prefix
	if after != "" {
		lower = append(append(append([]byte(nil), prefix...), after...), 0)
	}
	it, err := ix.db.NewIter(&pebble.IterOptions{LowerBound: lower, UpperBound: prefixEnd(prefix)})
	if err != nil {
		return nil, false, err
	}
	defer it.Close()
	dids = make([]string, 0, min(limit, 64))
	for ok := it.First(); ok; ok = it.Next() {
		if len(dids) == limit {
			return dids, true, it.Error()
		}
		dids = append(dids, string(it.Key()[len(prefix):]))
	}
	return dids, false, it.Error()
}

// Count is a DID's record count in one collection.
type Count struct {
	Collection string
	N          int64
	Unknown    bool // N is a lower bound
}

// DIDInfo is what the index knows of one DID.
type DIDInfo struct {
	Known      bool // the index has state for it
	Status     string
	Born       bool // counts are exact
	Backfilled bool
	Rev        string
	Resync     string // reason a resync is owed, "" if none
	Counts     []Count
}

func statusName(b byte) string {
	switch b {
	case statusActive:
		return "active"
	case statusHidden:
		return "hidden"
	case statusRemoved:
		return "removed"
	}
	return "unknown"
}

// DID returns what the index holds for did.
func (ix *Index) DID(did string) (DIDInfo, error) {
	if ix.closed.Load() {
		return DIDInfo{}, ErrClosed
	}
	snap := ix.db.NewSnapshot()
	defer snap.Close()
	var info DIDInfo
	v, ok, err := getCopy(snap, didKey(did))
	if err != nil || !ok {
		return info, err
	}
	st, err := decodeDID(v)
	if err != nil {
		return info, err
	}
	info = DIDInfo{Known: true, Status: statusName(st.status), Born: st.flags&didBorn != 0,
		Backfilled: st.flags&didBackfilled != 0, Rev: st.rev}
	if r, ok, err := getCopy(snap, resyncKey(did)); err != nil {
		return info, err
	} else if ok {
		info.Resync = string(r)
	}
	p := countPrefix(did)
	it, err := snap.NewIter(&pebble.IterOptions{LowerBound: p, UpperBound: prefixEnd(p)})
	if err != nil {
		return info, err
	}
	defer it.Close()
	for ok := it.First(); ok; ok = it.Next() {
		c, err := decodeCount(it.Value())
		if err != nil {
			return info, err
		}
		info.Counts = append(info.Counts, Count{Collection: string(it.Key()[len(p):]), N: c.n, Unknown: c.unknown})
	}
	return info, it.Error()
}

// PendingResyncs returns up to limit DIDs owed a resync with DID > after,
// and their reasons.
func (ix *Index) PendingResyncs(after string, limit int) (dids, reasons []string, err error) {
	if ix.closed.Load() {
		return nil, nil, ErrClosed
	}
	lower := []byte{pResync}
	if after != "" {
		lower = append(resyncKey(after), 0)
	}
	it, err := ix.db.NewIter(&pebble.IterOptions{LowerBound: lower, UpperBound: []byte{pResync + 1}})
	if err != nil {
		return nil, nil, err
	}
	defer it.Close()
	for ok := it.First(); ok && len(dids) < limit; ok = it.Next() {
		dids = append(dids, string(it.Key()[1:]))
		reasons = append(reasons, string(it.Value()))
	}
	return dids, reasons, it.Error()
}

// DIDs returns up to limit DIDs the index holds state for with DID >
// after (the cleaner's walk).
func (ix *Index) DIDs(after string, limit int) ([]string, error) {
	if ix.closed.Load() {
		return nil, ErrClosed
	}
	lower := []byte{pDID}
	if after != "" {
		lower = append(didKey(after), 0)
	}
	it, err := ix.db.NewIter(&pebble.IterOptions{LowerBound: lower, UpperBound: []byte{pDID + 1}})
	if err != nil {
		return nil, err
	}
	defer it.Close()
	var out []string
	for ok := it.First(); ok && len(out) < limit; ok = it.Next() {
		out = append(out, string(it.Key()[1:]))
	}
	return out, it.Error()
}

// GetMeta reads a metadata value (backfill progress).
func (ix *Index) getMeta(k []byte) ([]byte, bool, error) {
	if ix.closed.Load() {
		return nil, false, ErrClosed
	}
	return getCopy(ix.db, k)
}

// quietLogger drops Pebble's informational logs and keeps its errors.
type quietLogger struct{}

func (quietLogger) Infof(string, ...interface{}) {}
func (quietLogger) Errorf(format string, args ...interface{}) {
	slog.Error("collection index: pebble: " + fmt.Sprintf(format, args...))
}
func (quietLogger) Fatalf(format string, args ...interface{}) {
	slog.Error("collection index: pebble fatal: " + fmt.Sprintf(format, args...))
	os.Exit(1)
}
