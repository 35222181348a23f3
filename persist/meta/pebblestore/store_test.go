package pebblestore

import (
	"errors"
	"testing"
	"time"

	"github.com/cockroachdb/pebble"
	"github.com/cockroachdb/pebble/vfs"
	"github.com/relay/relay/persist/meta"
	"github.com/relay/relay/persist/meta/metatest"
)

func openDir(t *testing.T, dir string) *Store {
	t.Helper()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestConformance(t *testing.T) {
	dirs := map[meta.Store]string{}
	open := func(t *testing.T) meta.Store {
		dir := t.TempDir()
		s := openDir(t, dir)
		dirs[s] = dir
		return s
	}
	reopen := func(t *testing.T, s meta.Store) meta.Store {
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		return openDir(t, dirs[s])
	}
	metatest.RunWithReopen(t, open, reopen)
}

func TestRefusesOtherFormat(t *testing.T) {
	dir := t.TempDir()
	db, err := pebble.Open(dir, &pebble.Options{Logger: slogLogger{}})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Set(keyVersion, u64(formatVersion+1), pebble.Sync); err != nil {
		t.Fatal(err)
	}
	db.Close()
	if s, err := Open(dir); !errors.Is(err, ErrFormat) {
		if s != nil {
			s.Close()
		}
		t.Fatalf("Open of a newer format: %v, want ErrFormat", err)
	}
}

func TestCorruptRecord(t *testing.T) {
	dir := t.TempDir()
	s := openDir(t, dir)
	if err := s.db.Set(idKey(prefixAccount, 5), []byte{recordVersion, 1, 200}, pebble.Sync); err != nil {
		t.Fatal(err)
	}
	if _, err := s.getAccount(5); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("GetAccount of a truncated record: %v, want ErrCorrupt", err)
	}
}

func TestRecordRoundTrip(t *testing.T) {
	h := meta.Host{Hostname: "x.example", Status: "custom-status", NoSSL: true, AccountLimit: -3, AccountCount: 1 << 40, Failures: 9,
		CreatedAt: meta.StoredTime(time.Time{}), UpdatedAt: meta.StoredTime(time.Now().Add(time.Hour))}
	var got meta.Host
	if err := decodeHost(encodeHost(nil, &h), &got); err != nil {
		t.Fatal(err)
	}
	if got.Hostname != h.Hostname || got.Status != h.Status || got.NoSSL != h.NoSSL || got.Trusted ||
		got.AccountLimit != h.AccountLimit || got.AccountCount != h.AccountCount || got.Failures != h.Failures ||
		!got.CreatedAt.Equal(h.CreatedAt) || !got.UpdatedAt.Equal(h.UpdatedAt) {
		t.Fatalf("host round trip: got %+v want %+v", got, h)
	}
	enc := encodeHost(nil, &h)
	for i := range enc {
		if err := decodeHost(enc[:i], &got); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("decode of %d/%d bytes: %v, want ErrCorrupt", i, len(enc), err)
		}
	}
}

// TestCrashDurability simulates a crash right after each kind of write:
// the strict in-memory file system drops everything that was not fsynced.
// Each write is the last before its crash, so no later synced write can
// cover for it. Writes under mu are applied without sync and synced
// afterwards; this checks that the later WAL sync covers them.
func TestCrashDurability(t *testing.T) {
	fs := vfs.NewStrictMem()
	const dir = "meta"
	if err := fs.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	// The strict file system forgets a directory entry that was not synced.
	root, err := fs.OpenDir("")
	if err != nil {
		t.Fatal(err)
	}
	if err := root.Sync(); err != nil {
		t.Fatal(err)
	}
	root.Close()
	s, err := open(dir, fs, DefaultCacheBytes)
	if err != nil {
		t.Fatal(err)
	}
	crash := func() {
		t.Helper()
		// Control: a write that was never synced must be lost, or the
		// test proves nothing.
		if err := s.db.Set([]byte("zz-unsynced"), nil, pebble.NoSync); err != nil {
			t.Fatal(err)
		}
		fs.SetIgnoreSyncs(true)
		s.Close()
		fs.ResetToSyncedState()
		fs.SetIgnoreSyncs(false)
		if s, err = open(dir, fs, DefaultCacheBytes); err != nil {
			t.Fatal(err)
		}
		if ok, err := s.exists([]byte("zz-unsynced")); err != nil || ok {
			t.Fatalf("unsynced control write survived the crash (%v)", err)
		}
	}
	defer func() { s.Close() }()
	ctx := t.Context()

	h := &meta.Host{Hostname: "pds.example.com"}
	if err := s.CreateHost(ctx, h); err != nil {
		t.Fatal(err)
	}
	crash()
	if _, err := s.GetHostByName(ctx, h.Hostname); err != nil {
		t.Fatalf("CreateHost lost: %v", err)
	}
	h2 := &meta.Host{Hostname: "two.example.com"}
	if err := s.CreateHost(ctx, h2); err != nil {
		t.Fatal(err)
	}
	h.Failures = 4
	if err := s.UpdateHost(ctx, h); err != nil {
		t.Fatal(err)
	}
	crash()
	if got, err := s.GetHost(ctx, h.ID); err != nil || got.Failures != 4 {
		t.Fatalf("UpdateHost lost: %+v, %v", got, err)
	}
	if err := s.UpdateHostCursors(ctx, map[uint64]int64{h.ID: 321}); err != nil {
		t.Fatal(err)
	}
	crash()
	if got, err := s.GetHost(ctx, h.ID); err != nil || got.Cursor != 321 {
		t.Fatalf("UpdateHostCursors lost: %+v, %v", got, err)
	}
	a := &meta.Account{DID: "did:plc:durable", HostID: h.ID}
	if err := s.CreateAccount(ctx, a); err != nil {
		t.Fatal(err)
	}
	crash()
	if got, err := s.GetAccountByDID(ctx, a.DID); err != nil || got.UID != a.UID {
		t.Fatalf("CreateAccount lost: %+v, %v", got, err)
	}
	if s.lastUID != a.UID || s.lastHost != h2.ID {
		t.Fatalf("sequences after crash: host %d uid %d", s.lastHost, s.lastUID)
	}
	a.HostID = h2.ID
	if err := s.UpdateAccount(ctx, a); err != nil {
		t.Fatal(err)
	}
	crash()
	if got, err := s.GetAccountByDID(ctx, a.DID); err != nil || got.HostID != h2.ID {
		t.Fatalf("UpdateAccount lost: %+v, %v", got, err)
	}
	if got, err := s.GetHost(ctx, h2.ID); err != nil || got.AccountCount != 1 {
		t.Fatalf("AccountCount of move lost: %+v, %v", got, err)
	}
	if err := s.PutRepoStates(ctx, []meta.RepoState{{UID: a.UID, Rev: "rev1"}}); err != nil {
		t.Fatal(err)
	}
	crash()
	if rs, err := s.GetRepoState(ctx, a.UID); err != nil || rs.Rev != "rev1" {
		t.Fatalf("PutRepoStates lost: %+v, %v", rs, err)
	}
	if err := s.AddDomainBan(ctx, "banned.example"); err != nil {
		t.Fatal(err)
	}
	crash()
	if bans, err := s.ListDomainBans(ctx); err != nil || len(bans) != 1 {
		t.Fatalf("AddDomainBan lost: %v, %v", bans, err)
	}
	if err := s.RemoveDomainBan(ctx, "banned.example"); err != nil {
		t.Fatal(err)
	}
	crash()
	if bans, err := s.ListDomainBans(ctx); err != nil || len(bans) != 0 {
		t.Fatalf("RemoveDomainBan lost: %v, %v", bans, err)
	}
}
