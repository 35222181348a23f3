// Package pebblestore is the embedded meta.Store: a Pebble database in a
// directory under RELAY_DATA_DIR. It is the default backend, needs no
// external service, and makes every acknowledged write durable (synced
// WAL) before returning.
package pebblestore

import (
	"github.com/bluesky-social/indigo/atproto/syntax"

	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble"
	"github.com/cockroachdb/pebble/vfs"
	"github.com/relay/relay/persist/meta"
)

// ErrFormat means the directory holds a store written in another on-disk
// format version.
var ErrFormat = errors.New("pebblestore: unsupported on-disk format")

// Memory bounds of the store (outside the Go heap: Pebble allocates them
// itself).
const (
	// DefaultCacheBytes is Pebble's block cache when Open is given none.
	// The relay caches hot accounts itself, so this only needs to hold
	// index blocks and the working set of the lookups that miss that cache.
	DefaultCacheBytes = 16 << 20
	// memTableBytes is the write buffer. Pebble keeps up to two (one
	// filling, one flushing or kept for reuse), so 8 MiB in all.
	memTableBytes = 4 << 20
)

// Store is a meta.Store on Pebble.
type Store struct {
	db     *pebble.DB
	closed atomic.Bool

	// mu serialises writes that read before they write: record creation
	// (uniqueness checks, ID sequences), AccountCount maintenance, host
	// updates and domain bans. Blind batch writes (repo states, cursors,
	// progress) do not take it. mu is never held across an fsync: writes
	// under it are applied without sync and made durable afterwards by
	// syncWAL, so concurrent creators share one fsync.
	mu        sync.Mutex
	lastHost  uint64 // last assigned host ID; under mu
	lastUID   uint64 // last assigned account UID; under mu
	scratch   []byte // record encoding buffer; under mu
	closeOnce sync.Once
	closeErr  error
}

var _ meta.Store = (*Store)(nil)

// Open opens or creates the store in dir with a DefaultCacheBytes block
// cache.
func Open(dir string) (*Store, error) {
	return open(dir, vfs.Default, DefaultCacheBytes)
}

// OpenCache is Open with a block cache of cacheBytes (DefaultCacheBytes if
// it is not positive).
func OpenCache(dir string, cacheBytes int64) (*Store, error) {
	if cacheBytes <= 0 {
		cacheBytes = DefaultCacheBytes
	}
	return open(dir, vfs.Default, cacheBytes)
}

// open is Open on a given file system; tests use a strict in-memory one to
// simulate a crash that loses everything not synced.
func open(dir string, fs vfs.FS, cacheBytes int64) (*Store, error) {
	cache := pebble.NewCache(cacheBytes)
	defer cache.Unref()
	db, err := pebble.Open(dir, &pebble.Options{
		FS:                 fs,
		Cache:              cache,
		MemTableSize:       memTableBytes,
		Logger:             slogLogger{},
		FormatMajorVersion: pebble.FormatNewest,
	})
	if err != nil {
		return nil, fmt.Errorf("pebblestore: open %s: %w", dir, err)
	}
	s := &Store{db: db}
	if err := s.load(); err != nil {
		db.Close()
		return nil, err
	}
	return s, nil
}

// load checks the format version (writing it on a new store) and reads the
// ID sequences.
func (s *Store) load() error {
	v, err := s.getUint64(keyVersion)
	switch {
	case errors.Is(err, meta.ErrNotFound):
		if err := s.db.Set(keyVersion, u64(formatVersion), pebble.Sync); err != nil {
			return fmt.Errorf("pebblestore: write format version: %w", err)
		}
	case err != nil:
		return err
	case v != formatVersion:
		return fmt.Errorf("%w: %d (want %d)", ErrFormat, v, formatVersion)
	}
	if s.lastHost, err = s.getUint64(keyHostSeq); err != nil && !errors.Is(err, meta.ErrNotFound) {
		return err
	}
	if s.lastUID, err = s.getUint64(keyAccountSeq); err != nil && !errors.Is(err, meta.ErrNotFound) {
		return err
	}
	return nil
}

// get calls fn with the value of key, which is valid only during fn.
func (s *Store) get(key []byte, fn func(v []byte) error) error {
	v, closer, err := s.db.Get(key)
	if errors.Is(err, pebble.ErrNotFound) {
		return meta.ErrNotFound
	}
	if err != nil {
		return err
	}
	err = fn(v)
	closer.Close()
	return err
}

func (s *Store) getUint64(key []byte) (uint64, error) {
	var n uint64
	err := s.get(key, func(v []byte) error {
		if len(v) != 8 {
			return ErrCorrupt
		}
		n = binary.BigEndian.Uint64(v)
		return nil
	})
	return n, err
}

func (s *Store) exists(key []byte) (bool, error) {
	err := s.get(key, func([]byte) error { return nil })
	if errors.Is(err, meta.ErrNotFound) {
		return false, nil
	}
	return err == nil, err
}

// applyLocked applies b without waiting for an fsync; the caller holds mu
// and must call syncWAL after releasing it. The write is visible to readers
// at once and durable once syncWAL returns.
func (s *Store) applyLocked(b *pebble.Batch) error {
	err := s.db.Apply(b, pebble.NoSync)
	b.Close()
	return err
}

// syncWAL makes every write applied so far durable. Pebble groups
// concurrent syncs into one fsync.
func (s *Store) syncWAL() error {
	return s.db.LogData(nil, pebble.Sync)
}

// applySync applies a batch of blind writes with one fsync.
func (s *Store) applySync(b *pebble.Batch) error {
	err := s.db.Apply(b, pebble.Sync)
	b.Close()
	return err
}

// CreateHost implements meta.Store.
func (s *Store) CreateHost(_ context.Context, h *meta.Host) error {
	if s.closed.Load() {
		return meta.ErrClosed
	}
	name := meta.NormalizeHostname(h.Hostname)
	nameKey := stringKey(prefixHostName, name)
	s.mu.Lock()
	if ok, err := s.exists(nameKey); err != nil || ok {
		s.mu.Unlock()
		if ok {
			return meta.ErrExists
		}
		return err
	}
	rec := *h
	rec.ID = s.lastHost + 1
	rec.Hostname = name
	rec.Status = meta.DefaultHostStatus(h.Status)
	rec.AccountCount = 0
	rec.UpdatedAt = meta.StoredTime(time.Time{})
	rec.CreatedAt = rec.UpdatedAt
	if !h.CreatedAt.IsZero() {
		rec.CreatedAt = meta.StoredTime(h.CreatedAt)
	}
	b := s.db.NewBatch()
	s.scratch = encodeHost(s.scratch[:0], &rec)
	b.Set(hostKey(rec.ID, hostSuffixRecord), s.scratch, nil)
	b.Set(hostKey(rec.ID, hostSuffixCursor), u64(uint64(rec.Cursor)), nil)
	b.Set(nameKey, u64(rec.ID), nil)
	b.Set(keyHostSeq, u64(rec.ID), nil)
	err := s.applyLocked(b)
	if err == nil {
		s.lastHost = rec.ID
	}
	s.mu.Unlock()
	if err == nil {
		err = s.syncWAL()
	}
	if err != nil {
		return fmt.Errorf("pebblestore: create host: %w", err)
	}
	*h = rec
	return nil
}

// GetHost implements meta.Store.
func (s *Store) GetHost(_ context.Context, id uint64) (*meta.Host, error) {
	if s.closed.Load() {
		return nil, meta.ErrClosed
	}
	return s.getHost(id)
}

func (s *Store) getHost(id uint64) (*meta.Host, error) {
	h := &meta.Host{ID: id}
	if err := s.get(hostKey(id, hostSuffixRecord), func(v []byte) error { return decodeHost(v, h) }); err != nil {
		return nil, err
	}
	cursor, err := s.getUint64(hostKey(id, hostSuffixCursor))
	if err != nil && !errors.Is(err, meta.ErrNotFound) {
		return nil, err
	}
	h.Cursor = int64(cursor)
	return h, nil
}

// GetHostByName implements meta.Store.
func (s *Store) GetHostByName(_ context.Context, hostname string) (*meta.Host, error) {
	if s.closed.Load() {
		return nil, meta.ErrClosed
	}
	id, err := s.getUint64(stringKey(prefixHostName, meta.NormalizeHostname(hostname)))
	if err != nil {
		return nil, err
	}
	return s.getHost(id)
}

// ListHosts implements meta.Store. A host's record and cursor keys are
// adjacent, so one scan reads both.
func (s *Store) ListHosts(_ context.Context, afterID uint64, limit int) ([]*meta.Host, error) {
	if s.closed.Load() {
		return nil, meta.ErrClosed
	}
	if err := meta.CheckLimit(limit); err != nil {
		return nil, err
	}
	lower, ok := afterKey(prefixHost, afterID)
	if !ok {
		return nil, nil
	}
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: lower, UpperBound: prefixEnd(prefixHost)})
	if err != nil {
		return nil, err
	}
	var hosts []*meta.Host
	for it.First(); it.Valid(); it.Next() {
		k := it.Key()
		if len(k) != idKeyLen+1 {
			it.Close()
			return nil, ErrCorrupt
		}
		id := binary.BigEndian.Uint64(k[1:idKeyLen])
		if k[idKeyLen] == hostSuffixCursor {
			if n := len(hosts); n > 0 && hosts[n-1].ID == id && len(it.Value()) == 8 {
				hosts[n-1].Cursor = int64(binary.BigEndian.Uint64(it.Value()))
			}
			continue
		}
		if len(hosts) == limit {
			break // the last host's cursor key has been read
		}
		h := &meta.Host{ID: id}
		if err := decodeHost(it.Value(), h); err != nil {
			it.Close()
			return nil, err
		}
		hosts = append(hosts, h)
	}
	return hosts, it.Close()
}

// UpdateHost implements meta.Store.
func (s *Store) UpdateHost(_ context.Context, h *meta.Host) error {
	if s.closed.Load() {
		return meta.ErrClosed
	}
	s.mu.Lock()
	rec, err := s.getHost(h.ID)
	if err != nil {
		s.mu.Unlock()
		return err
	}
	rec.NoSSL = h.NoSSL
	rec.Status = meta.DefaultHostStatus(h.Status)
	rec.Trusted = h.Trusted
	rec.Cursor = h.Cursor
	rec.AccountLimit = h.AccountLimit
	rec.Failures = h.Failures
	rec.UpdatedAt = meta.StoredTime(time.Time{})
	b := s.db.NewBatch()
	s.scratch = encodeHost(s.scratch[:0], rec)
	b.Set(hostKey(rec.ID, hostSuffixRecord), s.scratch, nil)
	b.Set(hostKey(rec.ID, hostSuffixCursor), u64(uint64(rec.Cursor)), nil)
	err = s.applyLocked(b)
	s.mu.Unlock()
	if err == nil {
		err = s.syncWAL()
	}
	if err != nil {
		return fmt.Errorf("pebblestore: update host: %w", err)
	}
	h.Status, h.UpdatedAt, h.AccountCount = rec.Status, rec.UpdatedAt, rec.AccountCount
	return nil
}

// UpdateHostCursors implements meta.Store: one batch, one fsync. Cursor
// keys are blind writes, so the flush never waits for mu.
func (s *Store) UpdateHostCursors(_ context.Context, cursors map[uint64]int64) error {
	if s.closed.Load() {
		return meta.ErrClosed
	}
	if len(cursors) == 0 {
		return nil
	}
	b := s.db.NewBatch()
	var val [8]byte
	for id, cursor := range cursors {
		// Hosts are never deleted, so a host seen here stays.
		ok, err := s.exists(hostKey(id, hostSuffixRecord))
		if err != nil {
			b.Close()
			return err
		}
		if !ok {
			continue
		}
		binary.BigEndian.PutUint64(val[:], uint64(cursor))
		b.Set(hostKey(id, hostSuffixCursor), val[:], nil)
	}
	if err := s.applySync(b); err != nil {
		return fmt.Errorf("pebblestore: update host cursors: %w", err)
	}
	return nil
}

// CreateAccount implements meta.Store: the account, its DID index, the
// UID sequence and the host's AccountCount change in one atomic batch.
func (s *Store) CreateAccount(_ context.Context, a *meta.Account) error {
	if s.closed.Load() {
		return meta.ErrClosed
	}
	didKey := stringKey(prefixAccountDID, string(a.DID))
	rec := *a
	rec.Status = meta.DefaultAccountStatus(a.Status)
	rec.UpstreamStatus = meta.DefaultAccountStatus(a.UpstreamStatus)
	rec.CreatedAt = meta.StoredTime(a.CreatedAt)

	s.mu.Lock()
	if ok, err := s.exists(didKey); err != nil || ok {
		s.mu.Unlock()
		if ok {
			return meta.ErrExists
		}
		return err
	}
	host, err := s.getHost(a.HostID)
	if err != nil {
		s.mu.Unlock()
		return err
	}
	host.AccountCount++
	rec.UID = s.lastUID + 1
	b := s.db.NewBatch()
	s.scratch = encodeAccount(s.scratch[:0], &rec)
	b.Set(idKey(prefixAccount, rec.UID), s.scratch, nil)
	b.Set(didKey, u64(rec.UID), nil)
	b.Set(keyAccountSeq, u64(rec.UID), nil)
	s.scratch = encodeHost(s.scratch[:0], host)
	b.Set(hostKey(host.ID, hostSuffixRecord), s.scratch, nil)
	err = s.applyLocked(b)
	if err == nil {
		s.lastUID = rec.UID
	}
	s.mu.Unlock()
	if err == nil {
		err = s.syncWAL()
	}
	if err != nil {
		return fmt.Errorf("pebblestore: create account: %w", err)
	}
	*a = rec
	return nil
}

func (s *Store) getAccount(uid uint64) (*meta.Account, error) {
	a := &meta.Account{UID: uid}
	if err := s.get(idKey(prefixAccount, uid), func(v []byte) error { return decodeAccount(v, a) }); err != nil {
		return nil, err
	}
	return a, nil
}

// GetAccountByDID implements meta.Store.
func (s *Store) GetAccountByDID(_ context.Context, did syntax.DID) (*meta.Account, error) {
	if s.closed.Load() {
		return nil, meta.ErrClosed
	}
	uid, err := s.getUint64(stringKey(prefixAccountDID, string(did)))
	if err != nil {
		return nil, err
	}
	return s.getAccount(uid)
}

// ListAccounts implements meta.Store.
func (s *Store) ListAccounts(_ context.Context, afterUID uint64, limit int) ([]*meta.Account, error) {
	if s.closed.Load() {
		return nil, meta.ErrClosed
	}
	if err := meta.CheckLimit(limit); err != nil {
		return nil, err
	}
	lower, ok := afterKey(prefixAccount, afterUID)
	if !ok {
		return nil, nil
	}
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: lower, UpperBound: prefixEnd(prefixAccount)})
	if err != nil {
		return nil, err
	}
	var accounts []*meta.Account
	for it.First(); it.Valid() && len(accounts) < limit; it.Next() {
		k := it.Key()
		if len(k) != idKeyLen {
			it.Close()
			return nil, ErrCorrupt
		}
		a := &meta.Account{UID: binary.BigEndian.Uint64(k[1:])}
		if err := decodeAccount(it.Value(), a); err != nil {
			it.Close()
			return nil, err
		}
		accounts = append(accounts, a)
	}
	return accounts, it.Close()
}

// UpdateAccount implements meta.Store. A move rewrites both hosts' records
// in the same batch as the account.
func (s *Store) UpdateAccount(_ context.Context, a *meta.Account) error {
	if s.closed.Load() {
		return meta.ErrClosed
	}
	s.mu.Lock()
	rec, err := s.getAccount(a.UID)
	if err != nil {
		s.mu.Unlock()
		return err
	}
	b := s.db.NewBatch()
	if a.HostID != rec.HostID {
		to, err := s.getHost(a.HostID)
		if err != nil {
			s.mu.Unlock()
			b.Close()
			return err
		}
		from, err := s.getHost(rec.HostID)
		if err != nil {
			s.mu.Unlock()
			b.Close()
			return fmt.Errorf("pebblestore: account %d on missing host %d: %w", rec.UID, rec.HostID, err)
		}
		from.AccountCount--
		to.AccountCount++
		s.scratch = encodeHost(s.scratch[:0], from)
		b.Set(hostKey(from.ID, hostSuffixRecord), s.scratch, nil)
		s.scratch = encodeHost(s.scratch[:0], to)
		b.Set(hostKey(to.ID, hostSuffixRecord), s.scratch, nil)
	}
	rec.HostID = a.HostID
	rec.Status = meta.DefaultAccountStatus(a.Status)
	rec.UpstreamStatus = meta.DefaultAccountStatus(a.UpstreamStatus)
	s.scratch = encodeAccount(s.scratch[:0], rec)
	b.Set(idKey(prefixAccount, rec.UID), s.scratch, nil)
	err = s.applyLocked(b)
	s.mu.Unlock()
	if err == nil {
		err = s.syncWAL()
	}
	if err != nil {
		return fmt.Errorf("pebblestore: update account: %w", err)
	}
	a.Status, a.UpstreamStatus = rec.Status, rec.UpstreamStatus
	return nil
}

// GetRepoState implements meta.Store.
func (s *Store) GetRepoState(_ context.Context, uid uint64) (*meta.RepoState, error) {
	if s.closed.Load() {
		return nil, meta.ErrClosed
	}
	r := &meta.RepoState{UID: uid}
	if err := s.get(idKey(prefixRepo, uid), func(v []byte) error { return decodeRepoState(v, r) }); err != nil {
		return nil, err
	}
	return r, nil
}

// PutRepoStates implements meta.Store: one batch, one fsync. Later
// entries for a UID overwrite earlier ones within the batch.
func (s *Store) PutRepoStates(_ context.Context, states []meta.RepoState) error {
	if s.closed.Load() {
		return meta.ErrClosed
	}
	if len(states) == 0 {
		return nil
	}
	b := s.db.NewBatch()
	var key [idKeyLen]byte
	key[0] = prefixRepo
	var val []byte
	for i := range states {
		binary.BigEndian.PutUint64(key[1:], states[i].UID)
		val = encodeRepoState(val[:0], &states[i])
		b.Set(key[:], val, nil) // Set copies key and value into the batch
	}
	if err := s.applySync(b); err != nil {
		return fmt.Errorf("pebblestore: put repo states: %w", err)
	}
	return nil
}

// ListDomainBans implements meta.Store.
func (s *Store) ListDomainBans(_ context.Context) ([]string, error) {
	if s.closed.Load() {
		return nil, meta.ErrClosed
	}
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: []byte{prefixDomainBan}, UpperBound: prefixEnd(prefixDomainBan)})
	if err != nil {
		return nil, err
	}
	var bans []string
	for it.First(); it.Valid(); it.Next() {
		bans = append(bans, string(it.Key()[1:]))
	}
	return bans, it.Close()
}

// AddDomainBan implements meta.Store.
func (s *Store) AddDomainBan(_ context.Context, domain string) error {
	return s.changeDomainBan(domain, true)
}

// RemoveDomainBan implements meta.Store.
func (s *Store) RemoveDomainBan(_ context.Context, domain string) error {
	return s.changeDomainBan(domain, false)
}

func (s *Store) changeDomainBan(domain string, add bool) error {
	if s.closed.Load() {
		return meta.ErrClosed
	}
	key := stringKey(prefixDomainBan, meta.NormalizeHostname(domain))
	s.mu.Lock()
	ok, err := s.exists(key)
	switch {
	case err != nil:
	case add && ok:
		err = meta.ErrExists
	case !add && !ok:
		err = meta.ErrNotFound
	case add:
		err = s.db.Set(key, nil, pebble.NoSync)
	default:
		err = s.db.Delete(key, pebble.NoSync)
	}
	s.mu.Unlock()
	if err != nil {
		return err
	}
	return s.syncWAL()
}

// Ping implements meta.Store: it reads the format version key, which
// exercises the read path.
func (s *Store) Ping(_ context.Context) error {
	if s.closed.Load() {
		return meta.ErrClosed
	}
	v, err := s.getUint64(keyVersion)
	if err == nil && v != formatVersion {
		err = ErrFormat
	}
	return err
}

// Close implements meta.Store; closing twice is harmless.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		s.closed.Store(true)
		s.closeErr = s.db.Close()
	})
	return s.closeErr
}

// slogLogger routes Pebble's log lines to slog. Pebble's informational
// lines (WAL replay, compactions, flushes) are routine, so they go out at
// Debug level.
type slogLogger struct{}

func (slogLogger) Infof(format string, args ...any) {
	slog.Debug(fmt.Sprintf(format, args...), "component", "pebble")
}

// Fatalf is called by Pebble on unrecoverable corruption; like Pebble's
// default logger it ends the process.
func (slogLogger) Fatalf(format string, args ...any) {
	slog.Error(fmt.Sprintf(format, args...), "component", "pebble")
	os.Exit(1)
}

// WriteCheckpoint implements meta.Store: one batch, one fsync. Status
// changes rewrite account records, so the batch is built under mu.
func (s *Store) WriteCheckpoint(_ context.Context, cp *meta.Checkpoint) error {
	if s.closed.Load() {
		return meta.ErrClosed
	}
	b := s.db.NewBatch()
	var key [idKeyLen]byte
	key[0] = prefixRepo
	var val []byte
	for i := range cp.Repos {
		binary.BigEndian.PutUint64(key[1:], cp.Repos[i].UID)
		val = encodeRepoState(val[:0], &cp.Repos[i])
		b.Set(key[:], val, nil)
	}
	var word [8]byte
	for id, cursor := range cp.Cursors {
		ok, err := s.exists(hostKey(id, hostSuffixRecord))
		if err != nil {
			b.Close()
			return err
		}
		if ok {
			binary.BigEndian.PutUint64(word[:], uint64(cursor))
			b.Set(hostKey(id, hostSuffixCursor), word[:], nil)
		}
	}
	val = binary.BigEndian.AppendUint64(val[:0], uint64(cp.Seq))
	val = append(val, cp.Resume...)
	b.Set(keyCheckpoint, val, nil)

	s.mu.Lock()
	deltas := map[uint64]int64{} // host ID -> AccountCount change (deletions)
	for _, c := range meta.LastStatuses(cp.Statuses) {
		rec, err := s.getAccount(c.UID)
		if errors.Is(err, meta.ErrNotFound) {
			continue
		}
		if err != nil {
			s.mu.Unlock()
			b.Close()
			return err
		}
		up := meta.DefaultAccountStatus(c.UpstreamStatus)
		deltas[rec.HostID] += meta.DeletionDelta(rec.UpstreamStatus, up)
		rec.Status = meta.DefaultAccountStatus(c.Status)
		rec.UpstreamStatus = up
		s.scratch = encodeAccount(s.scratch[:0], rec)
		b.Set(idKey(prefixAccount, c.UID), s.scratch, nil)
	}
	for id, d := range deltas {
		if d == 0 {
			continue
		}
		h, err := s.getHost(id)
		if errors.Is(err, meta.ErrNotFound) {
			continue
		}
		if err != nil {
			s.mu.Unlock()
			b.Close()
			return err
		}
		h.AccountCount = max(h.AccountCount+d, 0)
		s.scratch = encodeHost(s.scratch[:0], h)
		b.Set(hostKey(id, hostSuffixRecord), s.scratch, nil)
	}
	err := s.applyLocked(b)
	s.mu.Unlock()
	if err == nil {
		err = s.syncWAL()
	}
	if err != nil {
		return fmt.Errorf("pebblestore: write checkpoint: %w", err)
	}
	return nil
}

// ReadCheckpoint implements meta.Store.
func (s *Store) ReadCheckpoint(_ context.Context) (int64, []byte, error) {
	if s.closed.Load() {
		return 0, nil, meta.ErrClosed
	}
	var seq int64
	var resume []byte
	err := s.get(keyCheckpoint, func(v []byte) error {
		if len(v) < 8 {
			return fmt.Errorf("pebblestore: checkpoint of %d bytes", len(v))
		}
		seq = int64(binary.BigEndian.Uint64(v))
		resume = append([]byte(nil), v[8:]...)
		return nil
	})
	if errors.Is(err, meta.ErrNotFound) {
		return 0, nil, nil
	}
	return seq, resume, err
}

// DeleteHost implements meta.Store: record, cursor and name index in one
// batch.
func (s *Store) DeleteHost(_ context.Context, id uint64) error {
	if s.closed.Load() {
		return meta.ErrClosed
	}
	s.mu.Lock()
	h, err := s.getHost(id)
	if err != nil {
		s.mu.Unlock()
		return err
	}
	var cursor uint64
	if cerr := s.get(hostKey(id, hostSuffixCursor), func(v []byte) error {
		if len(v) == 8 {
			cursor = binary.BigEndian.Uint64(v)
		}
		return nil
	}); cerr != nil && !errors.Is(cerr, meta.ErrNotFound) {
		s.mu.Unlock()
		return cerr
	}
	if h.AccountCount > 0 || cursor > 0 {
		s.mu.Unlock()
		return meta.ErrHostInUse
	}
	b := s.db.NewBatch()
	b.Delete(hostKey(id, hostSuffixRecord), nil)
	b.Delete(hostKey(id, hostSuffixCursor), nil)
	b.Delete(stringKey(prefixHostName, h.Hostname), nil)
	err = s.applyLocked(b)
	s.mu.Unlock()
	if err == nil {
		err = s.syncWAL()
	}
	if err != nil {
		return fmt.Errorf("pebblestore: delete host: %w", err)
	}
	return nil
}
