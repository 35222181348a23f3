// Package metatest is the conformance suite every meta.Store backend runs
// from its own tests, so the embedded and Postgres stores behave the same
// in everything the relay relies on.
package metatest

import (
	"github.com/bluesky-social/indigo/atproto/syntax"

	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/relay/relay/persist/meta"
)

// OpenFunc returns a new, empty store. It registers a t.Cleanup that closes
// the store and removes its data.
type OpenFunc func(t *testing.T) meta.Store

// ReopenFunc closes s and opens the same data again, the way a restarted
// relay would. The returned store must also be closed by a cleanup.
type ReopenFunc func(t *testing.T, s meta.Store) meta.Store

// Run runs the conformance suite against stores made by open.
func Run(t *testing.T, open OpenFunc) {
	RunWithReopen(t, open, nil)
}

// RunWithReopen runs the conformance suite, and when reopen is not nil also
// checks that everything written survives a close and reopen.
func RunWithReopen(t *testing.T, open OpenFunc, reopen ReopenFunc) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s meta.Store)
	}{
		{"HostCreateGet", testHostCreateGet},
		{"HostList", testHostList},
		{"HostUpdate", testHostUpdate},
		{"HostCursors", testHostCursors},
		{"HostDelete", testHostDelete},
		{"AccountCreateGet", testAccountCreateGet},
		{"AccountList", testAccountList},
		{"AccountUpdateMove", testAccountUpdateMove},
		{"AccountConcurrentCreate", testAccountConcurrentCreate},
		{"RepoStates", testRepoStates},
		{"Checkpoint", testCheckpoint},
		{"DomainBans", testDomainBans},
		{"ListLimits", testListLimits},
		{"Closed", testClosed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, open(t)) })
	}
	if reopen != nil {
		t.Run("Reopen", func(t *testing.T) { testReopen(t, open(t), reopen) })
	}
}

func ctx(t *testing.T) context.Context { return t.Context() }

func mustHost(t *testing.T, s meta.Store, name string) *meta.Host {
	t.Helper()
	h := &meta.Host{Hostname: name, AccountLimit: 100}
	if err := s.CreateHost(ctx(t), h); err != nil {
		t.Fatalf("CreateHost(%q): %v", name, err)
	}
	return h
}

func mustAccount(t *testing.T, s meta.Store, did string, hostID uint64) *meta.Account {
	t.Helper()
	a := &meta.Account{DID: syntax.DID(did), HostID: hostID}
	if err := s.CreateAccount(ctx(t), a); err != nil {
		t.Fatalf("CreateAccount(%q): %v", did, err)
	}
	return a
}

func wantErr(t *testing.T, what string, got, want error) {
	t.Helper()
	if !errors.Is(got, want) {
		t.Fatalf("%s: got error %v, want %v", what, got, want)
	}
}

func equalHost(t *testing.T, what string, got, want *meta.Host) {
	t.Helper()
	if got.ID != want.ID || got.Hostname != want.Hostname || got.NoSSL != want.NoSSL ||
		got.Status != want.Status || got.Trusted != want.Trusted || got.Cursor != want.Cursor ||
		got.AccountLimit != want.AccountLimit || got.AccountCount != want.AccountCount ||
		got.Failures != want.Failures || !got.CreatedAt.Equal(want.CreatedAt) ||
		!got.UpdatedAt.Equal(want.UpdatedAt) {
		t.Fatalf("%s:\n got %+v\nwant %+v", what, *got, *want)
	}
}

func equalAccount(t *testing.T, what string, got, want *meta.Account) {
	t.Helper()
	if got.UID != want.UID || got.DID != want.DID || got.HostID != want.HostID ||
		got.Status != want.Status || got.UpstreamStatus != want.UpstreamStatus ||
		!got.CreatedAt.Equal(want.CreatedAt) {
		t.Fatalf("%s:\n got %+v\nwant %+v", what, *got, *want)
	}
}

func hostCount(t *testing.T, s meta.Store, id uint64) int64 {
	t.Helper()
	h, err := s.GetHost(ctx(t), id)
	if err != nil {
		t.Fatalf("GetHost(%d): %v", id, err)
	}
	return h.AccountCount
}

func testHostCreateGet(t *testing.T, s meta.Store) {
	before := time.Now().Add(-time.Second)
	h := &meta.Host{Hostname: "PDS.Example.COM", NoSSL: true, Trusted: true, Cursor: 42, AccountLimit: 500, Failures: 3, AccountCount: 77}
	if err := s.CreateHost(ctx(t), h); err != nil {
		t.Fatal(err)
	}
	if h.ID == 0 {
		t.Fatal("CreateHost assigned ID 0")
	}
	if h.Hostname != "pds.example.com" {
		t.Fatalf("hostname not lower-cased: %q", h.Hostname)
	}
	if h.Status != meta.HostActive {
		t.Fatalf("empty status stored as %q, want active", h.Status)
	}
	if h.AccountCount != 0 {
		t.Fatalf("new host AccountCount = %d, want 0 (store-maintained)", h.AccountCount)
	}
	if h.CreatedAt.Before(before) || h.UpdatedAt.Before(h.CreatedAt) {
		t.Fatalf("timestamps not set: created %v updated %v", h.CreatedAt, h.UpdatedAt)
	}
	got, err := s.GetHost(ctx(t), h.ID)
	if err != nil {
		t.Fatal(err)
	}
	equalHost(t, "GetHost", got, h)
	for _, name := range []string{"pds.example.com", "PDS.EXAMPLE.COM", "Pds.Example.Com"} {
		got, err = s.GetHostByName(ctx(t), name)
		if err != nil {
			t.Fatalf("GetHostByName(%q): %v", name, err)
		}
		equalHost(t, "GetHostByName", got, h)
	}

	created := time.Date(2024, 3, 1, 12, 30, 45, 123456789, time.FixedZone("x", 3600))
	h2 := &meta.Host{Hostname: "localhost:2583", Status: meta.HostBlocked, CreatedAt: created}
	if err := s.CreateHost(ctx(t), h2); err != nil {
		t.Fatal(err)
	}
	if h2.ID <= h.ID {
		t.Fatalf("second host ID %d not above first %d", h2.ID, h.ID)
	}
	if want := created.Truncate(meta.TimePrecision); !h2.CreatedAt.Equal(want) {
		t.Fatalf("given CreatedAt stored as %v, want %v", h2.CreatedAt, want)
	}
	got, err = s.GetHost(ctx(t), h2.ID)
	if err != nil {
		t.Fatal(err)
	}
	equalHost(t, "GetHost(second)", got, h2)

	wantErr(t, "duplicate hostname", s.CreateHost(ctx(t), &meta.Host{Hostname: "pds.EXAMPLE.com"}), meta.ErrExists)
	_, err = s.GetHost(ctx(t), h2.ID+1000)
	wantErr(t, "GetHost(unknown)", err, meta.ErrNotFound)
	_, err = s.GetHost(ctx(t), 0)
	wantErr(t, "GetHost(0)", err, meta.ErrNotFound)
	_, err = s.GetHostByName(ctx(t), "nope.example.com")
	wantErr(t, "GetHostByName(unknown)", err, meta.ErrNotFound)
}

func testHostList(t *testing.T, s meta.Store) {
	got, err := s.ListHosts(ctx(t), 0, 10)
	if err != nil || len(got) != 0 {
		t.Fatalf("ListHosts on empty store = %d hosts, %v", len(got), err)
	}
	var want []*meta.Host
	for i := range 7 {
		h := mustHost(t, s, fmt.Sprintf("host%d.example.com", 7-i)) // names out of ID order
		want = append(want, h)
	}
	if err := s.UpdateHostCursors(ctx(t), map[uint64]int64{want[2].ID: 99}); err != nil {
		t.Fatal(err)
	}
	want[2].Cursor = 99
	var all []*meta.Host
	var after uint64
	for page := 0; ; page++ {
		got, err := s.ListHosts(ctx(t), after, 3)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) > 3 {
			t.Fatalf("page %d has %d hosts, limit 3", page, len(got))
		}
		if len(got) == 0 {
			break
		}
		all = append(all, got...)
		after = got[len(got)-1].ID
	}
	if len(all) != len(want) {
		t.Fatalf("paged through %d hosts, want %d", len(all), len(want))
	}
	for i := range want {
		if want[i].UpdatedAt.Before(all[i].UpdatedAt) {
			want[i].UpdatedAt = all[i].UpdatedAt // the cursor flush may touch UpdatedAt
		}
		equalHost(t, fmt.Sprintf("host %d", i), all[i], want[i])
	}
	got, err = s.ListHosts(ctx(t), want[3].ID, 2)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].ID != want[4].ID || got[1].ID != want[5].ID {
		t.Fatalf("ListHosts(after %d, 2) = %v", want[3].ID, hostIDs(got))
	}
	got, err = s.ListHosts(ctx(t), want[6].ID, 5)
	if err != nil || len(got) != 0 {
		t.Fatalf("ListHosts past the end = %v, %v", hostIDs(got), err)
	}
	got, err = s.ListHosts(ctx(t), ^uint64(0), 5)
	if err != nil || len(got) != 0 {
		t.Fatalf("ListHosts(after max uint64) = %v, %v", hostIDs(got), err)
	}
}

func hostIDs(hs []*meta.Host) []uint64 {
	var ids []uint64
	for _, h := range hs {
		ids = append(ids, h.ID)
	}
	return ids
}

func testHostUpdate(t *testing.T, s meta.Store) {
	h := mustHost(t, s, "pds.example.com")
	other := mustHost(t, s, "other.example.com")
	mustAccount(t, s, "did:plc:aaaa", h.ID)
	created, updated := h.CreatedAt, h.UpdatedAt

	h.Status = meta.HostThrottled
	h.NoSSL = true
	h.Trusted = true
	h.Cursor = 12345
	h.AccountLimit = 7
	h.Failures = 15
	h.AccountCount = 999           // store-maintained: ignored
	h.Hostname = "renamed.example" // not an updatable field
	if err := s.UpdateHost(ctx(t), h); err != nil {
		t.Fatal(err)
	}
	if h.AccountCount != 1 {
		t.Fatalf("UpdateHost left AccountCount %d in the struct, want the stored 1", h.AccountCount)
	}
	if h.UpdatedAt.Before(updated) {
		t.Fatalf("UpdatedAt went back: %v -> %v", updated, h.UpdatedAt)
	}
	got, err := s.GetHost(ctx(t), h.ID)
	if err != nil {
		t.Fatal(err)
	}
	want := *h
	want.Hostname = "pds.example.com"
	want.CreatedAt = created
	equalHost(t, "after UpdateHost", got, &want)
	if _, err := s.GetHostByName(ctx(t), "renamed.example"); !errors.Is(err, meta.ErrNotFound) {
		t.Fatalf("UpdateHost renamed the host: %v", err)
	}

	// The other host is untouched.
	got, err = s.GetHost(ctx(t), other.ID)
	if err != nil {
		t.Fatal(err)
	}
	equalHost(t, "other host", got, other)

	wantErr(t, "UpdateHost(unknown)", s.UpdateHost(ctx(t), &meta.Host{ID: other.ID + 100, Status: meta.HostActive}), meta.ErrNotFound)
}

func testHostCursors(t *testing.T, s meta.Store) {
	a := mustHost(t, s, "a.example.com")
	b := mustHost(t, s, "b.example.com")
	c := mustHost(t, s, "c.example.com")
	a.Status, a.Failures = meta.HostIdle, 2
	if err := s.UpdateHost(ctx(t), a); err != nil {
		t.Fatal(err)
	}
	if err := s.UpdateHostCursors(ctx(t), nil); err != nil {
		t.Fatalf("empty cursor batch: %v", err)
	}
	err := s.UpdateHostCursors(ctx(t), map[uint64]int64{a.ID: 1000, b.ID: 2000, c.ID + 500: 7})
	if err != nil {
		t.Fatalf("cursor batch with an unknown host: %v", err)
	}
	for _, tc := range []struct {
		h    *meta.Host
		want int64
	}{{a, 1000}, {b, 2000}, {c, 0}} {
		got, err := s.GetHost(ctx(t), tc.h.ID)
		if err != nil {
			t.Fatal(err)
		}
		if got.Cursor != tc.want {
			t.Fatalf("host %s cursor = %d, want %d", tc.h.Hostname, got.Cursor, tc.want)
		}
		if got.Status != tc.h.Status || got.Failures != tc.h.Failures || got.Hostname != tc.h.Hostname {
			t.Fatalf("cursor flush changed other fields: %+v", *got)
		}
	}
	if _, err := s.GetHost(ctx(t), c.ID+500); !errors.Is(err, meta.ErrNotFound) {
		t.Fatalf("cursor flush created unknown host: %v", err)
	}
	// A stale cursor may be reset backwards.
	if err := s.UpdateHostCursors(ctx(t), map[uint64]int64{a.ID: 5}); err != nil {
		t.Fatal(err)
	}
	got, err := s.GetHost(ctx(t), a.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.Cursor != 5 {
		t.Fatalf("cursor reset to 5 reads %d", got.Cursor)
	}
	if hs, err := s.ListHosts(ctx(t), 0, 10); err != nil || len(hs) != 3 || hs[0].Cursor != 5 || hs[1].Cursor != 2000 {
		t.Fatalf("ListHosts after cursor flush: %v", err)
	}
}

func testAccountCreateGet(t *testing.T, s meta.Store) {
	h := mustHost(t, s, "pds.example.com")
	other := mustHost(t, s, "other.example.com")
	before := time.Now().Add(-time.Second)

	a := &meta.Account{DID: "did:plc:ewvi7nxzyoun6zhxrhs64oiz", HostID: h.ID}
	if err := s.CreateAccount(ctx(t), a); err != nil {
		t.Fatal(err)
	}
	if a.UID == 0 {
		t.Fatal("CreateAccount assigned UID 0")
	}
	if a.Status != meta.AccountActive || a.UpstreamStatus != meta.AccountActive {
		t.Fatalf("empty statuses stored as %q/%q, want active", a.Status, a.UpstreamStatus)
	}
	if a.CreatedAt.Before(before) {
		t.Fatalf("CreatedAt not set: %v", a.CreatedAt)
	}
	if !a.IsActive() {
		t.Fatal("new account not active")
	}
	created := time.Date(2023, 5, 6, 7, 8, 9, 987654321, time.UTC)
	b := &meta.Account{DID: "did:web:example.com", HostID: h.ID, Status: meta.AccountThrottled, UpstreamStatus: meta.AccountDeactivated, CreatedAt: created}
	if err := s.CreateAccount(ctx(t), b); err != nil {
		t.Fatal(err)
	}
	if b.UID <= a.UID {
		t.Fatalf("second UID %d not above first %d", b.UID, a.UID)
	}
	if !b.CreatedAt.Equal(created.Truncate(meta.TimePrecision)) {
		t.Fatalf("given CreatedAt stored as %v", b.CreatedAt)
	}
	if b.IsActive() {
		t.Fatal("upstream-deactivated account reported active")
	}
	for _, want := range []*meta.Account{a, b} {
		got, err := s.GetAccountByDID(ctx(t), want.DID)
		if err != nil {
			t.Fatal(err)
		}
		equalAccount(t, "GetAccountByDID", got, want)
	}
	if n := hostCount(t, s, h.ID); n != 2 {
		t.Fatalf("AccountCount = %d after two creates, want 2", n)
	}

	// Duplicate DID: refused, and the count does not move.
	wantErr(t, "duplicate DID", s.CreateAccount(ctx(t), &meta.Account{DID: a.DID, HostID: other.ID}), meta.ErrExists)
	if n := hostCount(t, s, other.ID); n != 0 {
		t.Fatalf("failed create counted on host: %d", n)
	}
	// Unknown host: refused, nothing stored.
	wantErr(t, "unknown host", s.CreateAccount(ctx(t), &meta.Account{DID: "did:plc:orphan", HostID: other.ID + 100}), meta.ErrNotFound)
	_, err := s.GetAccountByDID(ctx(t), "did:plc:orphan")
	wantErr(t, "account of failed create", err, meta.ErrNotFound)

	_, err = s.GetAccountByDID(ctx(t), "did:plc:unknown")
	wantErr(t, "GetAccountByDID(unknown)", err, meta.ErrNotFound)
	// DIDs are case-sensitive identifiers, unlike hostnames.
	_, err = s.GetAccountByDID(ctx(t), "did:plc:EWVI7NXZYOUN6ZHXRHS64OIZ")
	wantErr(t, "GetAccountByDID(upper-cased)", err, meta.ErrNotFound)
}

func testAccountList(t *testing.T, s meta.Store) {
	h := mustHost(t, s, "pds.example.com")
	got, err := s.ListAccounts(ctx(t), 0, 5)
	if err != nil || len(got) != 0 {
		t.Fatalf("ListAccounts on empty store: %d, %v", len(got), err)
	}
	const n = 25
	var want []*meta.Account
	for i := range n {
		// DIDs in reverse order of UIDs, so a DID-ordered scan would fail.
		want = append(want, mustAccount(t, s, fmt.Sprintf("did:plc:%03d", n-i), h.ID))
	}
	var all []*meta.Account
	var after uint64
	for {
		got, err := s.ListAccounts(ctx(t), after, 4)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) > 4 {
			t.Fatalf("page of %d accounts, limit 4", len(got))
		}
		if len(got) == 0 {
			break
		}
		all = append(all, got...)
		after = got[len(got)-1].UID
	}
	if len(all) != n {
		t.Fatalf("paged through %d accounts, want %d", len(all), n)
	}
	for i := range want {
		equalAccount(t, fmt.Sprintf("account %d", i), all[i], want[i])
	}
	got, err = s.ListAccounts(ctx(t), want[10].UID, 3)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 || got[0].UID != want[11].UID || got[2].UID != want[13].UID {
		t.Fatalf("ListAccounts(after %d, 3) wrong page", want[10].UID)
	}
	got, err = s.ListAccounts(ctx(t), ^uint64(0), 3)
	if err != nil || len(got) != 0 {
		t.Fatalf("ListAccounts(after max) = %d, %v", len(got), err)
	}
}

func testAccountUpdateMove(t *testing.T, s meta.Store) {
	h1 := mustHost(t, s, "one.example.com")
	h2 := mustHost(t, s, "two.example.com")
	a := mustAccount(t, s, "did:plc:mover", h1.ID)
	mustAccount(t, s, "did:plc:stayer", h1.ID)
	created := a.CreatedAt

	// Status only: counts unchanged.
	a.Status = meta.AccountTakendown
	a.UpstreamStatus = meta.AccountSuspended
	if err := s.UpdateAccount(ctx(t), a); err != nil {
		t.Fatal(err)
	}
	if c1, c2 := hostCount(t, s, h1.ID), hostCount(t, s, h2.ID); c1 != 2 || c2 != 0 {
		t.Fatalf("status update changed counts: %d %d", c1, c2)
	}
	got, err := s.GetAccountByDID(ctx(t), a.DID)
	if err != nil {
		t.Fatal(err)
	}
	equalAccount(t, "after status update", got, a)

	// Move: one count goes from h1 to h2.
	a.HostID = h2.ID
	a.Status = meta.AccountActive
	a.DID = "did:plc:renamed"     // not updatable
	a.CreatedAt = time.Unix(1, 0) // not updatable
	if err := s.UpdateAccount(ctx(t), a); err != nil {
		t.Fatal(err)
	}
	if c1, c2 := hostCount(t, s, h1.ID), hostCount(t, s, h2.ID); c1 != 1 || c2 != 1 {
		t.Fatalf("after move counts = %d, %d; want 1, 1", c1, c2)
	}
	got, err = s.GetAccountByDID(ctx(t), "did:plc:mover")
	if err != nil {
		t.Fatal(err)
	}
	want := *a
	want.DID, want.CreatedAt = "did:plc:mover", created
	equalAccount(t, "after move", got, &want)
	if _, err := s.GetAccountByDID(ctx(t), "did:plc:renamed"); !errors.Is(err, meta.ErrNotFound) {
		t.Fatalf("UpdateAccount changed the DID index: %v", err)
	}

	// Moving to an unknown host fails and changes nothing.
	bad := want
	bad.HostID = h2.ID + 100
	bad.Status = meta.AccountSuspended
	wantErr(t, "move to unknown host", s.UpdateAccount(ctx(t), &bad), meta.ErrNotFound)
	got, err = s.GetAccountByDID(ctx(t), want.DID)
	if err != nil {
		t.Fatal(err)
	}
	equalAccount(t, "after failed move", got, &want)
	if c1, c2 := hostCount(t, s, h1.ID), hostCount(t, s, h2.ID); c1 != 1 || c2 != 1 {
		t.Fatalf("failed move changed counts: %d, %d", c1, c2)
	}

	// Moving back restores the counts.
	want.HostID = h1.ID
	if err := s.UpdateAccount(ctx(t), &want); err != nil {
		t.Fatal(err)
	}
	if c1, c2 := hostCount(t, s, h1.ID), hostCount(t, s, h2.ID); c1 != 2 || c2 != 0 {
		t.Fatalf("after move back counts = %d, %d; want 2, 0", c1, c2)
	}
	wantErr(t, "UpdateAccount(unknown)", s.UpdateAccount(ctx(t), &meta.Account{UID: a.UID + 100, HostID: h1.ID}), meta.ErrNotFound)
}

func testAccountConcurrentCreate(t *testing.T, s meta.Store) {
	hosts := []*meta.Host{mustHost(t, s, "a.example.com"), mustHost(t, s, "b.example.com")}
	const workers, perWorker = 8, 25
	var wg sync.WaitGroup
	uids := make(chan uint64, workers*perWorker)
	errs := make(chan error, workers*perWorker+workers)
	var dupWins sync.Map
	for w := range workers {
		wg.Go(func() {
			for i := range perWorker {
				a := &meta.Account{DID: syntax.DID(fmt.Sprintf("did:plc:w%di%d", w, i)), HostID: hosts[(w+i)%2].ID}
				if err := s.CreateAccount(ctx(t), a); err != nil {
					errs <- err
					continue
				}
				uids <- a.UID
			}
			// Every worker races to create the same DID: exactly one wins.
			a := &meta.Account{DID: "did:plc:contested", HostID: hosts[w%2].ID}
			switch err := s.CreateAccount(ctx(t), a); {
			case err == nil:
				dupWins.Store(w, a.HostID)
			case !errors.Is(err, meta.ErrExists):
				errs <- err
			}
		})
	}
	wg.Wait()
	close(uids)
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	seen := map[uint64]bool{}
	for uid := range uids {
		if seen[uid] {
			t.Fatalf("UID %d assigned twice", uid)
		}
		seen[uid] = true
	}
	if len(seen) != workers*perWorker {
		t.Fatalf("%d accounts created, want %d", len(seen), workers*perWorker)
	}
	wins := 0
	var winHost uint64
	dupWins.Range(func(_, v any) bool { wins++; winHost = v.(uint64); return true })
	if wins != 1 {
		t.Fatalf("contested DID created %d times", wins)
	}
	var total int64
	for _, h := range hosts {
		n := hostCount(t, s, h.ID)
		want := int64(workers * perWorker / 2)
		if h.ID == winHost {
			want++
		}
		if n != want {
			t.Fatalf("host %s AccountCount = %d, want %d", h.Hostname, n, want)
		}
		total += n
	}
	if total != workers*perWorker+1 {
		t.Fatalf("total AccountCount %d", total)
	}
}

func testRepoStates(t *testing.T, s meta.Store) {
	_, err := s.GetRepoState(ctx(t), 1)
	wantErr(t, "GetRepoState(none)", err, meta.ErrNotFound)
	if err := s.PutRepoStates(ctx(t), nil); err != nil {
		t.Fatalf("empty batch: %v", err)
	}
	const n = 250
	batch := make([]meta.RepoState, n)
	for i := range batch {
		batch[i] = meta.RepoState{
			UID:       uint64(i + 1),
			Rev:       fmt.Sprintf("3l%011d", i),
			CommitCID: fmt.Sprintf("bafyreicommit%d", i),
			DataCID:   fmt.Sprintf("bafyreidata%d", i),
		}
	}
	if err := s.PutRepoStates(ctx(t), batch); err != nil {
		t.Fatal(err)
	}
	for _, want := range batch {
		got, err := s.GetRepoState(ctx(t), want.UID)
		if err != nil {
			t.Fatalf("GetRepoState(%d): %v", want.UID, err)
		}
		if *got != want {
			t.Fatalf("GetRepoState(%d) = %+v, want %+v", want.UID, *got, want)
		}
	}
	// Upsert: overwrite some, add one, and repeat a UID (last entry wins).
	update := []meta.RepoState{
		{UID: 3, Rev: "r3a", CommitCID: "c3a", DataCID: "d3a"},
		{UID: 1000, Rev: "new", CommitCID: "cnew", DataCID: "dnew"},
		{UID: 3, Rev: "r3b", CommitCID: "c3b", DataCID: "d3b"},
		{UID: 7, Rev: "r7", CommitCID: "c7", DataCID: ""},
	}
	if err := s.PutRepoStates(ctx(t), update); err != nil {
		t.Fatal(err)
	}
	for _, want := range []meta.RepoState{update[1], update[2], update[3], batch[0], batch[n-1]} {
		got, err := s.GetRepoState(ctx(t), want.UID)
		if err != nil {
			t.Fatalf("GetRepoState(%d): %v", want.UID, err)
		}
		if *got != want {
			t.Fatalf("after upsert GetRepoState(%d) = %+v, want %+v", want.UID, *got, want)
		}
	}
	_, err = s.GetRepoState(ctx(t), n+1)
	wantErr(t, "GetRepoState(unknown)", err, meta.ErrNotFound)
}

func testDomainBans(t *testing.T, s meta.Store) {
	bans, err := s.ListDomainBans(ctx(t))
	if err != nil || len(bans) != 0 {
		t.Fatalf("ListDomainBans on empty store = %v, %v", bans, err)
	}
	for _, d := range []string{"spam.example", "Bad.Example.COM", "aaa.test"} {
		if err := s.AddDomainBan(ctx(t), d); err != nil {
			t.Fatalf("AddDomainBan(%q): %v", d, err)
		}
	}
	wantErr(t, "duplicate ban", s.AddDomainBan(ctx(t), "SPAM.example"), meta.ErrExists)
	bans, err = s.ListDomainBans(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"aaa.test", "bad.example.com", "spam.example"}; !slices.Equal(bans, want) {
		t.Fatalf("ListDomainBans = %v, want %v", bans, want)
	}
	if err := s.RemoveDomainBan(ctx(t), "BAD.example.com"); err != nil {
		t.Fatal(err)
	}
	wantErr(t, "remove twice", s.RemoveDomainBan(ctx(t), "bad.example.com"), meta.ErrNotFound)
	wantErr(t, "remove unknown", s.RemoveDomainBan(ctx(t), "never.example"), meta.ErrNotFound)
	bans, err = s.ListDomainBans(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"aaa.test", "spam.example"}; !slices.Equal(bans, want) {
		t.Fatalf("ListDomainBans after remove = %v, want %v", bans, want)
	}
	if err := s.AddDomainBan(ctx(t), "bad.example.com"); err != nil {
		t.Fatalf("re-adding a removed ban: %v", err)
	}
}

func testListLimits(t *testing.T, s meta.Store) {
	for _, limit := range []int{0, -1, meta.MaxListLimit + 1} {
		_, err := s.ListHosts(ctx(t), 0, limit)
		wantErr(t, fmt.Sprintf("ListHosts limit %d", limit), err, meta.ErrBadLimit)
		_, err = s.ListAccounts(ctx(t), 0, limit)
		wantErr(t, fmt.Sprintf("ListAccounts limit %d", limit), err, meta.ErrBadLimit)
	}
	h := mustHost(t, s, "pds.example.com")
	mustAccount(t, s, "did:plc:one", h.ID)
	if hs, err := s.ListHosts(ctx(t), 0, meta.MaxListLimit); err != nil || len(hs) != 1 {
		t.Fatalf("ListHosts(MaxListLimit) = %d, %v", len(hs), err)
	}
	if as, err := s.ListAccounts(ctx(t), 0, meta.MaxListLimit); err != nil || len(as) != 1 {
		t.Fatalf("ListAccounts(MaxListLimit) = %d, %v", len(as), err)
	}
}

func testClosed(t *testing.T, s meta.Store) {
	if err := s.Ping(ctx(t)); err != nil {
		t.Fatalf("Ping: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	wantErr(t, "Ping after Close", s.Ping(ctx(t)), meta.ErrClosed)
	_, err := s.GetHost(ctx(t), 1)
	wantErr(t, "GetHost after Close", err, meta.ErrClosed)
	wantErr(t, "CreateHost after Close", s.CreateHost(ctx(t), &meta.Host{Hostname: "x.example"}), meta.ErrClosed)
	wantErr(t, "PutRepoStates after Close", s.PutRepoStates(ctx(t), []meta.RepoState{{UID: 1}}), meta.ErrClosed)
	_, err = s.GetAccountByDID(ctx(t), "did:plc:x")
	wantErr(t, "GetAccountByDID after Close", err, meta.ErrClosed)
}

func testReopen(t *testing.T, s meta.Store, reopen ReopenFunc) {
	h := mustHost(t, s, "pds.example.com")
	h.Cursor, h.Status, h.Trusted = 77, meta.HostThrottled, true
	if err := s.UpdateHost(ctx(t), h); err != nil {
		t.Fatal(err)
	}
	h2 := mustHost(t, s, "two.example.com")
	if err := s.UpdateHostCursors(ctx(t), map[uint64]int64{h2.ID: 555}); err != nil {
		t.Fatal(err)
	}
	a := mustAccount(t, s, "did:plc:persist", h.ID)
	b := mustAccount(t, s, "did:plc:moved", h.ID)
	b.HostID, b.Status = h2.ID, meta.AccountTakendown
	if err := s.UpdateAccount(ctx(t), b); err != nil {
		t.Fatal(err)
	}
	rs := meta.RepoState{UID: a.UID, Rev: "3lrev", CommitCID: "bafycommit", DataCID: "bafydata"}
	if err := s.PutRepoStates(ctx(t), []meta.RepoState{rs}); err != nil {
		t.Fatal(err)
	}
	if err := s.AddDomainBan(ctx(t), "banned.example"); err != nil {
		t.Fatal(err)
	}

	s = reopen(t, s)

	got, err := s.GetHostByName(ctx(t), "pds.example.com")
	if err != nil {
		t.Fatal(err)
	}
	h.AccountCount = 1
	if got.UpdatedAt.After(h.UpdatedAt) {
		h.UpdatedAt = got.UpdatedAt
	}
	equalHost(t, "host after reopen", got, h)
	got, err = s.GetHost(ctx(t), h2.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.Cursor != 555 || got.AccountCount != 1 {
		t.Fatalf("second host after reopen: cursor %d count %d", got.Cursor, got.AccountCount)
	}
	ga, err := s.GetAccountByDID(ctx(t), a.DID)
	if err != nil {
		t.Fatal(err)
	}
	equalAccount(t, "account after reopen", ga, a)
	gb, err := s.GetAccountByDID(ctx(t), b.DID)
	if err != nil {
		t.Fatal(err)
	}
	equalAccount(t, "moved account after reopen", gb, b)
	grs, err := s.GetRepoState(ctx(t), a.UID)
	if err != nil || *grs != rs {
		t.Fatalf("repo state after reopen: %+v, %v", grs, err)
	}
	if bans, err := s.ListDomainBans(ctx(t)); err != nil || !slices.Equal(bans, []string{"banned.example"}) {
		t.Fatalf("bans after reopen: %v, %v", bans, err)
	}
	// ID sequences continue after the highest ID ever assigned.
	h3 := mustHost(t, s, "three.example.com")
	if h3.ID <= h2.ID {
		t.Fatalf("host ID after reopen %d not above %d", h3.ID, h2.ID)
	}
	c := mustAccount(t, s, "did:plc:after", h3.ID)
	if c.UID <= b.UID {
		t.Fatalf("UID after reopen %d not above %d", c.UID, b.UID)
	}
	wantErr(t, "duplicate DID after reopen", s.CreateAccount(ctx(t), &meta.Account{DID: a.DID, HostID: h3.ID}), meta.ErrExists)
}

func testCheckpoint(t *testing.T, s meta.Store) {
	seq, resume, err := s.ReadCheckpoint(ctx(t))
	if err != nil || seq != 0 || resume != nil {
		t.Fatalf("ReadCheckpoint(none) = %d, %q, %v; want 0, nil, nil", seq, resume, err)
	}
	h := mustHost(t, s, "cp.example.com")
	a := mustAccount(t, s, "did:plc:checkpointa", h.ID)
	b := mustAccount(t, s, "did:plc:checkpointb", h.ID)
	cp := &meta.Checkpoint{
		Seq: 41,
		Repos: []meta.RepoState{
			{UID: a.UID, Rev: "r1", CommitCID: "c1", DataCID: "d1"},
			{UID: b.UID, Rev: "r2", CommitCID: "c2", DataCID: "d2"},
			{UID: a.UID, Rev: "r3", CommitCID: "c3", DataCID: "d3"}, // last wins
		},
		Statuses: []meta.StatusChange{
			{UID: a.UID, Status: meta.AccountActive, UpstreamStatus: meta.AccountDeactivated},
			{UID: b.UID, Status: meta.AccountTakendown, UpstreamStatus: meta.AccountActive},
			{UID: a.UID, Status: meta.AccountActive, UpstreamStatus: meta.AccountDeleted}, // last wins
			{UID: 999999, Status: meta.AccountTakendown},                                  // unknown: skipped
		},
		Cursors: map[uint64]int64{h.ID: 1234, 999999: 5},
		Resume:  []byte("resume detail"),
	}
	if err := s.WriteCheckpoint(ctx(t), cp); err != nil {
		t.Fatal(err)
	}
	seq, resume, err = s.ReadCheckpoint(ctx(t))
	if err != nil || seq != 41 || string(resume) != "resume detail" {
		t.Fatalf("ReadCheckpoint = %d, %q, %v", seq, resume, err)
	}
	rs, err := s.GetRepoState(ctx(t), a.UID)
	if err != nil || rs.Rev != "r3" || rs.CommitCID != "c3" || rs.DataCID != "d3" {
		t.Fatalf("repo a = %+v, %v", rs, err)
	}
	if rs, err := s.GetRepoState(ctx(t), b.UID); err != nil || rs.Rev != "r2" {
		t.Fatalf("repo b = %+v, %v", rs, err)
	}
	ga, err := s.GetAccountByDID(ctx(t), a.DID)
	if err != nil || ga.Status != meta.AccountActive || ga.UpstreamStatus != meta.AccountDeleted || ga.HostID != h.ID || ga.DID != a.DID {
		t.Fatalf("account a = %+v, %v", ga, err)
	}
	gb, err := s.GetAccountByDID(ctx(t), b.DID)
	if err != nil || gb.Status != meta.AccountTakendown || gb.UpstreamStatus != meta.AccountActive {
		t.Fatalf("account b = %+v, %v", gb, err)
	}
	gh, err := s.GetHost(ctx(t), h.ID)
	// a ended deleted upstream: it no longer counts against the host.
	if err != nil || gh.Cursor != 1234 || gh.AccountCount != 1 {
		t.Fatalf("host = %+v, %v", gh, err)
	}
	// An account deleted upstream stops counting against its host, and
	// counts again when it comes back.
	del := &meta.Checkpoint{Seq: 45, Statuses: []meta.StatusChange{{UID: b.UID, Status: meta.AccountTakendown, UpstreamStatus: meta.AccountDeleted}}}
	if err := s.WriteCheckpoint(ctx(t), del); err != nil {
		t.Fatal(err)
	}
	if n := hostCount(t, s, h.ID); n != 0 {
		t.Fatalf("host count after a deletion %d, want 0", n)
	}
	if err := s.WriteCheckpoint(ctx(t), del); err != nil { // the same again: no change
		t.Fatal(err)
	}
	if n := hostCount(t, s, h.ID); n != 0 {
		t.Fatalf("host count after a repeated deletion %d, want 0", n)
	}
	back := &meta.Checkpoint{Seq: 46, Statuses: []meta.StatusChange{{UID: b.UID, Status: meta.AccountActive, UpstreamStatus: meta.AccountActive}}}
	if err := s.WriteCheckpoint(ctx(t), back); err != nil {
		t.Fatal(err)
	}
	if n := hostCount(t, s, h.ID); n != 1 {
		t.Fatalf("host count after the account came back %d, want 1", n)
	}
	// A later checkpoint with nothing but a seq replaces seq and resume.
	if err := s.WriteCheckpoint(ctx(t), &meta.Checkpoint{Seq: 50}); err != nil {
		t.Fatal(err)
	}
	seq, resume, err = s.ReadCheckpoint(ctx(t))
	if err != nil || seq != 50 || len(resume) != 0 {
		t.Fatalf("ReadCheckpoint = %d, %q, %v; want 50, empty", seq, resume, err)
	}
	if rs, _ := s.GetRepoState(ctx(t), a.UID); rs == nil || rs.Rev != "r3" {
		t.Fatalf("repo a changed by an empty checkpoint: %+v", rs)
	}
}

func testHostDelete(t *testing.T, s meta.Store) {
	wantErr(t, "DeleteHost(unknown)", s.DeleteHost(ctx(t), 424242), meta.ErrNotFound)
	idle := mustHost(t, s, "refused.example.com")
	used := mustHost(t, s, "used.example.com")
	mustAccount(t, s, "did:plc:hostdelete", used.ID)
	cursor := mustHost(t, s, "cursor.example.com")
	if err := s.UpdateHostCursors(ctx(t), map[uint64]int64{cursor.ID: 7}); err != nil {
		t.Fatal(err)
	}
	wantErr(t, "DeleteHost(with an account)", s.DeleteHost(ctx(t), used.ID), meta.ErrHostInUse)
	wantErr(t, "DeleteHost(with a cursor)", s.DeleteHost(ctx(t), cursor.ID), meta.ErrHostInUse)
	if err := s.DeleteHost(ctx(t), idle.ID); err != nil {
		t.Fatal(err)
	}
	_, err := s.GetHost(ctx(t), idle.ID)
	wantErr(t, "GetHost(deleted)", err, meta.ErrNotFound)
	_, err = s.GetHostByName(ctx(t), "refused.example.com")
	wantErr(t, "GetHostByName(deleted)", err, meta.ErrNotFound)
	hosts, err := s.ListHosts(ctx(t), 0, 100)
	if err != nil || len(hosts) != 2 {
		t.Fatalf("ListHosts after a delete: %d hosts, %v", len(hosts), err)
	}
	// The name can be used again.
	again := mustHost(t, s, "refused.example.com")
	if again.ID == idle.ID {
		t.Fatalf("a deleted host's ID %d was reused", again.ID)
	}
}
