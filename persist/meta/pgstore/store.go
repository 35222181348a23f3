// Package pgstore is the Postgres meta.Store, used when DATABASE_URL is
// set. Open runs the embedded migrations; every write is a single SQL
// statement (batches included), so each is atomic and costs one round
// trip.
package pgstore

import (
	"github.com/bluesky-social/indigo/atproto/syntax"

	"context"
	"errors"
	"fmt"
	"math"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/relay/relay/persist/meta"
)

// Store is a meta.Store on Postgres.
type Store struct {
	pool   *pgxpool.Pool
	closed atomic.Bool
}

var _ meta.Store = (*Store)(nil)

// Open connects to the database at url (a postgres:// URL or key=value
// DSN, as pgx accepts) and migrates its schema.
func Open(ctx context.Context, url string) (*Store, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("pgstore: %w", err)
	}
	return OpenConfig(ctx, cfg)
}

// OpenConfig is Open with a parsed pool configuration, for callers that
// set pool sizes or runtime parameters such as search_path.
func OpenConfig(ctx context.Context, cfg *pgxpool.Config) (*Store, error) {
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("pgstore: %w", err)
	}
	if err := migrate(ctx, pool); err != nil {
		pool.Close()
		return nil, fmt.Errorf("pgstore: migrate: %w", err)
	}
	return &Store{pool: pool}, nil
}

// Postgres IDs are bigint: an ID above math.MaxInt64 was never assigned.
func validID(id uint64) bool { return id > 0 && id <= math.MaxInt64 }

// notFound maps an empty result to meta.ErrNotFound.
func notFound(err error) error {
	if errors.Is(err, pgx.ErrNoRows) {
		return meta.ErrNotFound
	}
	return err
}

const hostColumns = `id, hostname, no_ssl, status, trusted, last_seq, account_limit, account_count, failures, created_at, updated_at`

func scanHost(row pgx.Row) (*meta.Host, error) {
	var (
		h      meta.Host
		id     int64
		status string
	)
	err := row.Scan(&id, &h.Hostname, &h.NoSSL, &status, &h.Trusted, &h.Cursor,
		&h.AccountLimit, &h.AccountCount, &h.Failures, &h.CreatedAt, &h.UpdatedAt)
	if err != nil {
		return nil, err
	}
	h.ID = uint64(id)
	h.Status = meta.HostStatus(status)
	h.CreatedAt, h.UpdatedAt = h.CreatedAt.UTC(), h.UpdatedAt.UTC()
	return &h, nil
}

// CreateHost implements meta.Store.
func (s *Store) CreateHost(ctx context.Context, h *meta.Host) error {
	if s.closed.Load() {
		return meta.ErrClosed
	}
	rec := *h
	rec.Hostname = meta.NormalizeHostname(h.Hostname)
	rec.Status = meta.DefaultHostStatus(h.Status)
	rec.AccountCount = 0
	rec.UpdatedAt = meta.StoredTime(time.Time{})
	rec.CreatedAt = rec.UpdatedAt
	if !h.CreatedAt.IsZero() {
		rec.CreatedAt = meta.StoredTime(h.CreatedAt)
	}
	var id int64
	err := s.pool.QueryRow(ctx, `INSERT INTO host
		(hostname, no_ssl, status, trusted, last_seq, account_limit, failures, created_at, updated_at)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
		ON CONFLICT (hostname) DO NOTHING RETURNING id`,
		rec.Hostname, rec.NoSSL, string(rec.Status), rec.Trusted, rec.Cursor, rec.AccountLimit,
		rec.Failures, rec.CreatedAt, rec.UpdatedAt).Scan(&id)
	if errors.Is(err, pgx.ErrNoRows) {
		return meta.ErrExists
	}
	if err != nil {
		return fmt.Errorf("pgstore: create host: %w", err)
	}
	rec.ID = uint64(id)
	*h = rec
	return nil
}

// GetHost implements meta.Store.
func (s *Store) GetHost(ctx context.Context, id uint64) (*meta.Host, error) {
	if s.closed.Load() {
		return nil, meta.ErrClosed
	}
	if !validID(id) {
		return nil, meta.ErrNotFound
	}
	h, err := scanHost(s.pool.QueryRow(ctx, `SELECT `+hostColumns+` FROM host WHERE id = $1`, int64(id)))
	return h, notFound(err)
}

// GetHostByName implements meta.Store.
func (s *Store) GetHostByName(ctx context.Context, hostname string) (*meta.Host, error) {
	if s.closed.Load() {
		return nil, meta.ErrClosed
	}
	h, err := scanHost(s.pool.QueryRow(ctx, `SELECT `+hostColumns+` FROM host WHERE hostname = $1`,
		meta.NormalizeHostname(hostname)))
	return h, notFound(err)
}

// ListHosts implements meta.Store.
func (s *Store) ListHosts(ctx context.Context, afterID uint64, limit int) ([]*meta.Host, error) {
	if s.closed.Load() {
		return nil, meta.ErrClosed
	}
	if err := meta.CheckLimit(limit); err != nil {
		return nil, err
	}
	if afterID >= math.MaxInt64 {
		return nil, nil
	}
	rows, err := s.pool.Query(ctx, `SELECT `+hostColumns+` FROM host WHERE id > $1 ORDER BY id LIMIT $2`,
		int64(afterID), limit)
	if err != nil {
		return nil, err
	}
	var hosts []*meta.Host
	for rows.Next() {
		h, err := scanHost(rows)
		if err != nil {
			rows.Close()
			return nil, err
		}
		hosts = append(hosts, h)
	}
	return hosts, rows.Err()
}

// UpdateHost implements meta.Store.
func (s *Store) UpdateHost(ctx context.Context, h *meta.Host) error {
	if s.closed.Load() {
		return meta.ErrClosed
	}
	if !validID(h.ID) {
		return meta.ErrNotFound
	}
	status := meta.DefaultHostStatus(h.Status)
	now := meta.StoredTime(time.Time{})
	var count int64
	err := s.pool.QueryRow(ctx, `UPDATE host SET no_ssl = $2, status = $3, trusted = $4, last_seq = $5,
		account_limit = $6, failures = $7, updated_at = $8 WHERE id = $1 RETURNING account_count`,
		int64(h.ID), h.NoSSL, string(status), h.Trusted, h.Cursor, h.AccountLimit, h.Failures, now).Scan(&count)
	if err != nil {
		return notFound(err)
	}
	h.Status, h.UpdatedAt, h.AccountCount = status, now, count
	return nil
}

// UpdateHostCursors implements meta.Store with one UPDATE joined to the
// unnested batch; IDs that match no host update nothing.
func (s *Store) UpdateHostCursors(ctx context.Context, cursors map[uint64]int64) error {
	if s.closed.Load() {
		return meta.ErrClosed
	}
	if len(cursors) == 0 {
		return nil
	}
	ids := make([]int64, 0, len(cursors))
	seqs := make([]int64, 0, len(cursors))
	for id, seq := range cursors {
		if validID(id) {
			ids = append(ids, int64(id))
			seqs = append(seqs, seq)
		}
	}
	_, err := s.pool.Exec(ctx, `UPDATE host SET last_seq = c.seq
		FROM unnest($1::bigint[], $2::bigint[]) AS c(id, seq) WHERE host.id = c.id`, ids, seqs)
	if err != nil {
		return fmt.Errorf("pgstore: update host cursors: %w", err)
	}
	return nil
}

const accountColumns = `uid, did, host_id, status, upstream_status, created_at`

func scanAccount(row pgx.Row) (*meta.Account, error) {
	var (
		a                meta.Account
		uid, hostID      int64
		status, upstream string
	)
	if err := row.Scan(&uid, &a.DID, &hostID, &status, &upstream, &a.CreatedAt); err != nil {
		return nil, err
	}
	a.UID, a.HostID = uint64(uid), uint64(hostID)
	a.Status, a.UpstreamStatus = meta.AccountStatus(status), meta.AccountStatus(upstream)
	a.CreatedAt = a.CreatedAt.UTC()
	return &a, nil
}

// CreateAccount implements meta.Store in one statement: the insert (which
// selects the host, so an unknown host inserts nothing) and the host's
// AccountCount increment commit together or not at all.
func (s *Store) CreateAccount(ctx context.Context, a *meta.Account) error {
	if s.closed.Load() {
		return meta.ErrClosed
	}
	if !validID(a.HostID) {
		return meta.ErrNotFound
	}
	rec := *a
	rec.Status = meta.DefaultAccountStatus(a.Status)
	rec.UpstreamStatus = meta.DefaultAccountStatus(a.UpstreamStatus)
	rec.CreatedAt = meta.StoredTime(a.CreatedAt)
	var (
		uid        *int64
		hostExists bool
	)
	err := s.pool.QueryRow(ctx, `WITH ins AS (
			INSERT INTO account (did, host_id, status, upstream_status, created_at)
			SELECT $1, id, $3, $4, $5 FROM host WHERE id = $2
			ON CONFLICT (did) DO NOTHING
			RETURNING uid, host_id
		), cnt AS (
			UPDATE host SET account_count = account_count + 1 FROM ins WHERE host.id = ins.host_id
		)
		SELECT (SELECT uid FROM ins), EXISTS (SELECT 1 FROM host WHERE id = $2)`,
		rec.DID, int64(rec.HostID), string(rec.Status), string(rec.UpstreamStatus), rec.CreatedAt).
		Scan(&uid, &hostExists)
	switch {
	case err != nil:
		return fmt.Errorf("pgstore: create account: %w", err)
	case uid != nil:
		rec.UID = uint64(*uid)
		*a = rec
		return nil
	case !hostExists:
		return meta.ErrNotFound
	default:
		return meta.ErrExists
	}
}

// GetAccountByDID implements meta.Store.
func (s *Store) GetAccountByDID(ctx context.Context, did syntax.DID) (*meta.Account, error) {
	if s.closed.Load() {
		return nil, meta.ErrClosed
	}
	a, err := scanAccount(s.pool.QueryRow(ctx, `SELECT `+accountColumns+` FROM account WHERE did = $1`, string(did)))
	return a, notFound(err)
}

// ListAccounts implements meta.Store.
func (s *Store) ListAccounts(ctx context.Context, afterUID uint64, limit int) ([]*meta.Account, error) {
	if s.closed.Load() {
		return nil, meta.ErrClosed
	}
	if err := meta.CheckLimit(limit); err != nil {
		return nil, err
	}
	if afterUID >= math.MaxInt64 {
		return nil, nil
	}
	rows, err := s.pool.Query(ctx, `SELECT `+accountColumns+` FROM account WHERE uid > $1 ORDER BY uid LIMIT $2`,
		int64(afterUID), limit)
	if err != nil {
		return nil, err
	}
	var accounts []*meta.Account
	for rows.Next() {
		a, err := scanAccount(rows)
		if err != nil {
			rows.Close()
			return nil, err
		}
		accounts = append(accounts, a)
	}
	return accounts, rows.Err()
}

// UpdateAccount implements meta.Store in one statement. The account row is
// locked first, so concurrent moves of one account each see the host the
// previous one left it on, and the counts stay exact.
func (s *Store) UpdateAccount(ctx context.Context, a *meta.Account) error {
	if s.closed.Load() {
		return meta.ErrClosed
	}
	if !validID(a.UID) || !validID(a.HostID) {
		return meta.ErrNotFound
	}
	status := meta.DefaultAccountStatus(a.Status)
	upstream := meta.DefaultAccountStatus(a.UpstreamStatus)
	var found, hostFound bool
	err := s.pool.QueryRow(ctx, `WITH old AS (
			SELECT uid, host_id FROM account WHERE uid = $1 FOR UPDATE
		), newhost AS (
			SELECT id FROM host WHERE id = $2
		), upd AS (
			UPDATE account SET host_id = newhost.id, status = $3, upstream_status = $4
			FROM old, newhost WHERE account.uid = old.uid
			RETURNING old.host_id AS old_host
		), dec AS (
			UPDATE host SET account_count = account_count - 1
			FROM upd WHERE host.id = upd.old_host AND upd.old_host <> $2
		), inc AS (
			UPDATE host SET account_count = account_count + 1
			FROM upd WHERE host.id = $2 AND upd.old_host <> $2
		)
		SELECT EXISTS (SELECT 1 FROM old), EXISTS (SELECT 1 FROM newhost)`,
		int64(a.UID), int64(a.HostID), string(status), string(upstream)).Scan(&found, &hostFound)
	switch {
	case err != nil:
		return fmt.Errorf("pgstore: update account: %w", err)
	case !found || !hostFound:
		return meta.ErrNotFound
	}
	a.Status, a.UpstreamStatus = status, upstream
	return nil
}

// GetRepoState implements meta.Store.
func (s *Store) GetRepoState(ctx context.Context, uid uint64) (*meta.RepoState, error) {
	if s.closed.Load() {
		return nil, meta.ErrClosed
	}
	if !validID(uid) {
		return nil, meta.ErrNotFound
	}
	r := &meta.RepoState{UID: uid}
	err := s.pool.QueryRow(ctx, `SELECT rev, commit_cid, data_cid FROM account_repo WHERE uid = $1`, int64(uid)).
		Scan(&r.Rev, &r.CommitCID, &r.DataCID)
	if err != nil {
		return nil, notFound(err)
	}
	return r, nil
}

// PutRepoStates implements meta.Store: the batch travels as four arrays in
// one upsert statement. Postgres refuses to upsert one row twice in a
// statement, so DISTINCT ON keeps the last entry per UID (highest
// ordinality), matching the embedded store's last-write-wins.
func (s *Store) PutRepoStates(ctx context.Context, states []meta.RepoState) error {
	if s.closed.Load() {
		return meta.ErrClosed
	}
	if len(states) == 0 {
		return nil
	}
	uids := make([]int64, len(states))
	revs := make([]string, len(states))
	commits := make([]string, len(states))
	datas := make([]string, len(states))
	for i := range states {
		uids[i] = int64(states[i].UID)
		revs[i], commits[i], datas[i] = states[i].Rev, states[i].CommitCID, states[i].DataCID
	}
	_, err := s.pool.Exec(ctx, `INSERT INTO account_repo (uid, rev, commit_cid, data_cid)
		SELECT DISTINCT ON (uid) uid, rev, commit_cid, data_cid
		FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[]) WITH ORDINALITY AS b(uid, rev, commit_cid, data_cid, n)
		ORDER BY uid, n DESC
		ON CONFLICT (uid) DO UPDATE SET rev = excluded.rev, commit_cid = excluded.commit_cid, data_cid = excluded.data_cid`,
		uids, revs, commits, datas)
	if err != nil {
		return fmt.Errorf("pgstore: put repo states: %w", err)
	}
	return nil
}

// ListDomainBans implements meta.Store. COLLATE "C" orders by bytes, as
// the embedded store does, whatever the database's locale.
func (s *Store) ListDomainBans(ctx context.Context) ([]string, error) {
	if s.closed.Load() {
		return nil, meta.ErrClosed
	}
	rows, err := s.pool.Query(ctx, `SELECT domain FROM domain_ban ORDER BY domain COLLATE "C"`)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}

// AddDomainBan implements meta.Store.
func (s *Store) AddDomainBan(ctx context.Context, domain string) error {
	if s.closed.Load() {
		return meta.ErrClosed
	}
	tag, err := s.pool.Exec(ctx, `INSERT INTO domain_ban (domain) VALUES ($1) ON CONFLICT DO NOTHING`,
		meta.NormalizeHostname(domain))
	if err != nil {
		return fmt.Errorf("pgstore: add domain ban: %w", err)
	}
	if tag.RowsAffected() == 0 {
		return meta.ErrExists
	}
	return nil
}

// RemoveDomainBan implements meta.Store.
func (s *Store) RemoveDomainBan(ctx context.Context, domain string) error {
	if s.closed.Load() {
		return meta.ErrClosed
	}
	tag, err := s.pool.Exec(ctx, `DELETE FROM domain_ban WHERE domain = $1`, meta.NormalizeHostname(domain))
	if err != nil {
		return fmt.Errorf("pgstore: remove domain ban: %w", err)
	}
	if tag.RowsAffected() == 0 {
		return meta.ErrNotFound
	}
	return nil
}

// Ping implements meta.Store.
func (s *Store) Ping(ctx context.Context) error {
	if s.closed.Load() {
		return meta.ErrClosed
	}
	return s.pool.Ping(ctx)
}

// Close implements meta.Store; closing twice is harmless.
func (s *Store) Close() error {
	if !s.closed.Swap(true) {
		s.pool.Close()
	}
	return nil
}

// WriteCheckpoint implements meta.Store in one transaction: repo heads,
// statuses and cursors as set-based statements, then the checkpoint row.
func (s *Store) WriteCheckpoint(ctx context.Context, cp *meta.Checkpoint) error {
	if s.closed.Load() {
		return meta.ErrClosed
	}
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("pgstore: write checkpoint: %w", err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // a no-op after Commit
	if n := len(cp.Repos); n > 0 {
		uids := make([]int64, n)
		revs, commits, datas := make([]string, n), make([]string, n), make([]string, n)
		for i := range cp.Repos {
			uids[i] = int64(cp.Repos[i].UID)
			revs[i], commits[i], datas[i] = cp.Repos[i].Rev, cp.Repos[i].CommitCID, cp.Repos[i].DataCID
		}
		if _, err := tx.Exec(ctx, `INSERT INTO account_repo (uid, rev, commit_cid, data_cid)
			SELECT DISTINCT ON (uid) uid, rev, commit_cid, data_cid
			FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[]) WITH ORDINALITY AS b(uid, rev, commit_cid, data_cid, n)
			ORDER BY uid, n DESC
			ON CONFLICT (uid) DO UPDATE SET rev = excluded.rev, commit_cid = excluded.commit_cid, data_cid = excluded.data_cid`,
			uids, revs, commits, datas); err != nil {
			return fmt.Errorf("pgstore: checkpoint repo heads: %w", err)
		}
	}
	if changes := meta.LastStatuses(cp.Statuses); len(changes) > 0 {
		uids := make([]int64, 0, len(changes))
		st, up := make([]string, 0, len(changes)), make([]string, 0, len(changes))
		for _, c := range changes {
			if validID(c.UID) {
				uids = append(uids, int64(c.UID))
				st = append(st, string(meta.DefaultAccountStatus(c.Status)))
				up = append(up, string(meta.DefaultAccountStatus(c.UpstreamStatus)))
			}
		}
		// One statement: the old upstream statuses (the CTEs all see the
		// snapshot before the update) decide each host's AccountCount
		// change for deletions (meta.DeletionDelta).
		if _, err := tx.Exec(ctx, `WITH c AS (
				SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[]) AS c(uid, status, upstream)
			), old AS (
				SELECT a.uid, a.host_id, a.upstream_status AS old_up, c.status, c.upstream
				FROM account a JOIN c ON a.uid = c.uid FOR UPDATE OF a
			), upd AS (
				UPDATE account SET status = old.status, upstream_status = old.upstream
				FROM old WHERE account.uid = old.uid
			), delta AS (
				SELECT host_id, sum(CASE
					WHEN old_up <> 'deleted' AND upstream = 'deleted' THEN -1
					WHEN old_up = 'deleted' AND upstream <> 'deleted' THEN 1
					ELSE 0 END) AS d
				FROM old GROUP BY host_id
			)
			UPDATE host SET account_count = GREATEST(account_count + delta.d, 0)
			FROM delta WHERE host.id = delta.host_id AND delta.d <> 0`,
			uids, st, up); err != nil {
			return fmt.Errorf("pgstore: checkpoint statuses: %w", err)
		}
	}
	if len(cp.Cursors) > 0 {
		ids := make([]int64, 0, len(cp.Cursors))
		seqs := make([]int64, 0, len(cp.Cursors))
		for id, seq := range cp.Cursors {
			if validID(id) {
				ids = append(ids, int64(id))
				seqs = append(seqs, seq)
			}
		}
		if _, err := tx.Exec(ctx, `UPDATE host SET last_seq = c.seq
			FROM unnest($1::bigint[], $2::bigint[]) AS c(id, seq) WHERE host.id = c.id`, ids, seqs); err != nil {
			return fmt.Errorf("pgstore: checkpoint cursors: %w", err)
		}
	}
	resume := cp.Resume
	if resume == nil {
		resume = []byte{}
	}
	if _, err := tx.Exec(ctx, `INSERT INTO derived_checkpoint (id, seq, resume) VALUES (true, $1, $2)
		ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, resume = excluded.resume`, cp.Seq, resume); err != nil {
		return fmt.Errorf("pgstore: checkpoint row: %w", err)
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("pgstore: write checkpoint: %w", err)
	}
	return nil
}

// ReadCheckpoint implements meta.Store.
func (s *Store) ReadCheckpoint(ctx context.Context) (int64, []byte, error) {
	if s.closed.Load() {
		return 0, nil, meta.ErrClosed
	}
	var seq int64
	var resume []byte
	err := s.pool.QueryRow(ctx, `SELECT seq, resume FROM derived_checkpoint WHERE id`).Scan(&seq, &resume)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, nil, nil
	}
	if err != nil {
		return 0, nil, fmt.Errorf("pgstore: read checkpoint: %w", err)
	}
	return seq, resume, nil
}

// DeleteHost implements meta.Store; accounts are checked by the foreign
// key's table, not only by the count.
func (s *Store) DeleteHost(ctx context.Context, id uint64) error {
	if s.closed.Load() {
		return meta.ErrClosed
	}
	if !validID(id) {
		return meta.ErrNotFound
	}
	var found, deleted bool
	err := s.pool.QueryRow(ctx, `WITH h AS (SELECT id FROM host WHERE id = $1), del AS (
			DELETE FROM host WHERE id = $1 AND account_count = 0 AND last_seq = 0
				AND NOT EXISTS (SELECT 1 FROM account WHERE host_id = $1)
			RETURNING id
		) SELECT EXISTS (SELECT 1 FROM h), EXISTS (SELECT 1 FROM del)`, int64(id)).Scan(&found, &deleted)
	switch {
	case err != nil:
		return fmt.Errorf("pgstore: delete host: %w", err)
	case !found:
		return meta.ErrNotFound
	case !deleted:
		return meta.ErrHostInUse
	}
	return nil
}
