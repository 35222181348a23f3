// Package meta defines the relay's metadata: PDS hosts, accounts, the head of
// each account's repo, domain bans and backfill progress, and the Store
// interface that persists them. Two backends implement Store: pebblestore
// (embedded, the default) and pgstore (Postgres, when DATABASE_URL is set).
// Both pass the same conformance suite, metatest.Run, so the relay can treat
// them as interchangeable.
//
// The relay keeps its own in-memory cache in front of a Store; a Store is
// the durable truth. Every method that returns nil has made its write
// durable (fsynced WAL or committed transaction) before returning.
package meta

import (
	"context"
	"errors"
	"time"

	"github.com/bluesky-social/indigo/atproto/syntax"
)

// Errors returned by every Store implementation. Callers compare with
// errors.Is; backends may wrap them with detail.
var (
	// ErrNotFound: the host, account, repo state or domain ban does not
	// exist (also: CreateAccount or UpdateAccount names an unknown host).
	ErrNotFound = errors.New("meta: not found")
	// ErrExists: a host with the hostname, an account with the DID or the
	// domain ban is already stored.
	ErrExists = errors.New("meta: already exists")
	// ErrBadLimit: a List call asked for fewer than 1 or more than
	// MaxListLimit rows.
	ErrBadLimit = errors.New("meta: list limit out of range")
	// ErrClosed: the Store was used after Close.
	ErrClosed = errors.New("meta: store closed")
	// ErrHostInUse: DeleteHost of a host that has accounts or a cursor.
	ErrHostInUse = errors.New("meta: host has accounts or a cursor")
)

// MaxListLimit bounds one page of ListHosts or ListAccounts. A page of
// accounts is about 150 bytes a row, so the largest page is about 15 MB:
// big enough to warm a cache quickly, small enough to never hold a full
// network's 40M accounts in one slice.
const MaxListLimit = 100_000

// HostStatus is the relay's view of a PDS host.
type HostStatus string

// Host statuses. They mirror the reference relay's so listHosts and
// getHostStatus can report them verbatim.
const (
	HostActive    HostStatus = "active"    // connected or connectable
	HostIdle      HostStatus = "idle"      // upstream said FutureCursor; waiting
	HostOffline   HostStatus = "offline"   // too many failed dials
	HostThrottled HostStatus = "throttled" // over its event rate limits
	HostBanned    HostStatus = "banned"    // matched a domain ban
	HostBlocked   HostStatus = "blocked"   // blocked by an admin
)

// Host is one PDS the relay subscribes to.
type Host struct {
	ID       uint64 // assigned by CreateHost
	Hostname string // e.g. "pds.example.com" or "localhost:2583"; stored lower-case
	NoSSL    bool   // dial ws:// instead of wss:// (development hosts)
	Status   HostStatus
	Trusted  bool // trusted hosts get the higher rate limits
	// Cursor is the last upstream seq fully processed; a reconnect resumes
	// from it.
	Cursor       int64
	AccountLimit int64
	// AccountCount is maintained by the store: CreateAccount increments it
	// and an account move (UpdateAccount with a new HostID) moves one count
	// from the old host to the new. UpdateHost ignores the caller's value.
	AccountCount int64
	// Failures counts consecutive failed connection attempts.
	Failures  int
	CreatedAt time.Time // set by CreateHost when zero
	UpdatedAt time.Time // set by the store on every write to the host
}

// AccountStatus is an account's status, either as the relay decided it
// (local) or as the account's PDS reported it (upstream).
type AccountStatus string

// Account statuses. Local statuses are active, takendown, suspended and
// throttled; upstream statuses are any of them.
const (
	AccountActive         AccountStatus = "active"
	AccountDeactivated    AccountStatus = "deactivated"
	AccountDeleted        AccountStatus = "deleted"
	AccountDesynchronized AccountStatus = "desynchronized"
	AccountSuspended      AccountStatus = "suspended"
	AccountTakendown      AccountStatus = "takendown"
	AccountThrottled      AccountStatus = "throttled"
)

// Account is one repository (DID) the relay has seen, and the host it
// currently lives on.
type Account struct {
	UID            uint64 // assigned by CreateAccount; dense, small, used in event log records
	DID            syntax.DID
	HostID         uint64
	Status         AccountStatus // local; "" is stored as active
	UpstreamStatus AccountStatus // from the PDS's #account events; "" is stored as active
	CreatedAt      time.Time     // set by CreateAccount when zero
}

// IsActive reports whether events of the account are relayed: the local
// status is active and the upstream status is active. Unlike the reference
// relay, a throttled account (created past its host's account limit) is not
// active: its events are not relayed until the limit is raised.
func (a *Account) IsActive() bool {
	return (a.Status == AccountActive || a.Status == "") &&
		(a.UpstreamStatus == AccountActive || a.UpstreamStatus == "")
}

// RepoState is the head of an account's repo as last accepted by the relay:
// the rev and commit CID it checks the next commit against, and the MST
// root (data CID) the next commit's prevData must equal.
type RepoState struct {
	UID       uint64
	Rev       string
	CommitCID string
	DataCID   string
}

// StatusChange is an account's local and upstream status as an event in
// the log set them.
type StatusChange struct {
	UID            uint64
	Status         AccountStatus
	UpstreamStatus AccountStatus
}

// DeletionDelta is the change to a host's AccountCount when an account's
// upstream status goes from old to new: an account deleted at its PDS no
// longer counts against the host's account limit, and counts again if it
// comes back.
func DeletionDelta(old, new AccountStatus) int64 {
	switch {
	case old != AccountDeleted && new == AccountDeleted:
		return -1
	case old == AccountDeleted && new != AccountDeleted:
		return 1
	}
	return 0
}

// LastStatuses returns the last change of each UID in changes, in the
// order of first appearance.
func LastStatuses(changes []StatusChange) []StatusChange {
	if len(changes) < 2 {
		return changes
	}
	at := make(map[uint64]int, len(changes))
	out := make([]StatusChange, 0, len(changes))
	for _, c := range changes {
		if i, ok := at[c.UID]; ok {
			out[i] = c
			continue
		}
		at[c.UID] = len(out)
		out = append(out, c)
	}
	return out
}

// Checkpoint is the metadata derived from the relay's event log through
// the record Seq: repo heads, account statuses, host cursors, and the
// relay's per-host resume detail (opaque to the store). The event log is
// the source of truth; a checkpoint only saves replaying it. After a crash
// the relay replays the log past the last checkpoint and writes the
// result as a new one.
type Checkpoint struct {
	Seq      int64
	Repos    []RepoState
	Statuses []StatusChange
	Cursors  map[uint64]int64
	Resume   []byte
}

// Store persists relay metadata. Implementations are safe for concurrent
// use, except that Close must not race with other calls: the relay stops
// its writers before closing the store. After Close, methods return
// ErrClosed.
type Store interface {
	// CreateHost stores a new host and assigns h.ID, lower-cases
	// h.Hostname, and sets h.CreatedAt (when zero), h.UpdatedAt and
	// h.AccountCount (0). An empty Status is stored as active. ErrExists
	// when the hostname is taken.
	CreateHost(ctx context.Context, h *Host) error
	// GetHost returns the host with the ID, or ErrNotFound.
	GetHost(ctx context.Context, id uint64) (*Host, error)
	// GetHostByName looks the host up by hostname, case-insensitively.
	GetHostByName(ctx context.Context, hostname string) (*Host, error)
	// ListHosts returns up to limit hosts with ID > afterID, by ascending ID.
	// Pass the last ID of one page as afterID of the next.
	ListHosts(ctx context.Context, afterID uint64, limit int) ([]*Host, error)
	// UpdateHost writes NoSSL, Status, Trusted, Cursor, AccountLimit and
	// Failures of the host h.ID, sets h.UpdatedAt and refreshes
	// h.AccountCount from the store. ErrNotFound for an unknown ID.
	UpdateHost(ctx context.Context, h *Host) error
	// DeleteHost removes a host that never relayed anything (no accounts,
	// cursor 0): a host recorded but then refused (a relay). ErrNotFound
	// for an unknown ID, ErrHostInUse otherwise.
	DeleteHost(ctx context.Context, id uint64) error
	// UpdateHostCursors sets many hosts' cursors in one durable batch (the
	// periodic cursor flush). Unknown host IDs are skipped: a flush must not
	// fail because of one stale entry.
	UpdateHostCursors(ctx context.Context, cursors map[uint64]int64) error

	// CreateAccount stores a new account, assigns a.UID, sets a.CreatedAt
	// when zero, and increments the AccountCount of a.HostID, atomically.
	// ErrExists for a known DID, ErrNotFound for an unknown host.
	CreateAccount(ctx context.Context, a *Account) error
	// GetAccountByDID returns the account with the DID, or ErrNotFound.
	// The DID is typed: callers parse it (syntax.ParseDID) where it enters
	// the relay, once.
	GetAccountByDID(ctx context.Context, did syntax.DID) (*Account, error)
	// ListAccounts returns up to limit accounts with UID > afterUID, by
	// ascending UID.
	ListAccounts(ctx context.Context, afterUID uint64, limit int) ([]*Account, error)
	// UpdateAccount writes Status, UpstreamStatus and HostID of the account
	// a.UID. A changed HostID moves one AccountCount from the old host to
	// the new one in the same atomic write. ErrNotFound for an unknown
	// account or new host. DID and CreatedAt never change.
	UpdateAccount(ctx context.Context, a *Account) error

	// GetRepoState returns the account's repo head, or ErrNotFound when
	// none was stored.
	GetRepoState(ctx context.Context, uid uint64) (*RepoState, error)
	// PutRepoStates upserts many repo heads in one durable batch. When a
	// UID appears more than once, the last entry wins.
	PutRepoStates(ctx context.Context, states []RepoState) error

	// WriteCheckpoint applies cp's repo heads, statuses and cursors (a
	// status change to or from upstream "deleted" also moves the host's
	// AccountCount, see DeletionDelta) and
	// records cp.Seq and cp.Resume, all in one atomic, durable write:
	// after a crash either all of it is stored or none. Unknown UIDs and
	// host IDs are skipped. When a UID appears more than once, the last
	// entry wins. A Seq below the stored one is stored as given (recovery
	// may rewrite a checkpoint).
	WriteCheckpoint(ctx context.Context, cp *Checkpoint) error
	// ReadCheckpoint returns the Seq and Resume of the last checkpoint,
	// or 0 and nil when none was written.
	ReadCheckpoint(ctx context.Context) (seq int64, resume []byte, err error)

	// ListDomainBans returns every banned domain, ascending.
	ListDomainBans(ctx context.Context) ([]string, error)
	// AddDomainBan bans a domain (stored lower-case); ErrExists if banned.
	AddDomainBan(ctx context.Context, domain string) error
	// RemoveDomainBan lifts a ban; ErrNotFound if the domain is not banned.
	RemoveDomainBan(ctx context.Context, domain string) error

	// Ping reports whether the store can serve requests (readiness).
	Ping(ctx context.Context) error
	// Close releases the store. It must not race with other calls.
	Close() error
}
