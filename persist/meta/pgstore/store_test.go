package pgstore

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"os"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/relay/relay/persist/meta"
	"github.com/relay/relay/persist/meta/metatest"
)

// testDB returns TEST_DATABASE_URL, or skips the test when it is unset.
func testDB(t testing.TB) string {
	t.Helper()
	url := os.Getenv("TEST_DATABASE_URL")
	if url == "" {
		t.Skip("TEST_DATABASE_URL not set; skipping Postgres tests")
	}
	return url
}

// newSchema creates an empty schema of its own for one test, so concurrent
// test packages and runs never share tables, and drops it at cleanup.
func newSchema(t testing.TB, url string) string {
	t.Helper()
	var b [6]byte
	rand.Read(b[:])
	schema := "metatest_" + hex.EncodeToString(b[:])
	conn, err := pgx.Connect(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(context.Background(), "CREATE SCHEMA "+schema); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn, err := pgx.Connect(context.Background(), url)
		if err != nil {
			t.Errorf("drop schema %s: %v", schema, err)
			return
		}
		defer conn.Close(context.Background())
		if _, err := conn.Exec(context.Background(), "DROP SCHEMA "+schema+" CASCADE"); err != nil {
			t.Errorf("drop schema %s: %v", schema, err)
		}
	})
	return schema
}

// openSchema opens a store whose connections all use schema.
func openSchema(t testing.TB, url, schema string) *Store {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	cfg.ConnConfig.RuntimeParams["search_path"] = schema
	s, err := OpenConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() }) // before the schema drop: cleanups run last-in first-out
	return s
}

func TestConformance(t *testing.T) {
	url := testDB(t)
	schemas := map[meta.Store]string{}
	open := func(t *testing.T) meta.Store {
		schema := newSchema(t, url)
		s := openSchema(t, url, schema)
		schemas[s] = schema
		return s
	}
	reopen := func(t *testing.T, s meta.Store) meta.Store {
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		return openSchema(t, url, schemas[s])
	}
	metatest.RunWithReopen(t, open, reopen)
}

func TestMigrations(t *testing.T) {
	url := testDB(t)
	schema := newSchema(t, url)
	s := openSchema(t, url, schema)
	ms, err := loadMigrations()
	if err != nil {
		t.Fatal(err)
	}
	var version, rows int
	if err := s.pool.QueryRow(t.Context(), "SELECT max(version), count(*) FROM schema_version").Scan(&version, &rows); err != nil {
		t.Fatal(err)
	}
	if version != len(ms) || rows != len(ms) {
		t.Fatalf("schema_version max %d rows %d, want %d", version, rows, len(ms))
	}
	for _, table := range []string{"host", "account", "account_repo", "domain_ban", "backfill_progress"} {
		var exists bool
		err := s.pool.QueryRow(t.Context(),
			"SELECT EXISTS (SELECT 1 FROM information_schema.tables WHERE table_schema = $1 AND table_name = $2)",
			schema, table).Scan(&exists)
		if err != nil || !exists {
			t.Fatalf("table %s missing from schema %s (%v)", table, schema, err)
		}
	}

	// Opening again applies nothing new.
	s2 := openSchema(t, url, schema)
	if err := s2.pool.QueryRow(t.Context(), "SELECT count(*) FROM schema_version").Scan(&rows); err != nil || rows != len(ms) {
		t.Fatalf("reopen changed schema_version: %d rows, %v", rows, err)
	}

	// A database migrated by a newer binary is refused.
	if _, err := s.pool.Exec(t.Context(), "INSERT INTO schema_version (version, name) VALUES ($1, 'future')", len(ms)+1); err != nil {
		t.Fatal(err)
	}
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	cfg.ConnConfig.RuntimeParams["search_path"] = schema
	if s3, err := OpenConfig(t.Context(), cfg); !errors.Is(err, ErrSchemaTooNew) {
		if s3 != nil {
			s3.Close()
		}
		t.Fatalf("Open of a newer schema: %v, want ErrSchemaTooNew", err)
	}
}

// TestConcurrentMoves moves one account between hosts from many goroutines
// at once: the row lock in UpdateAccount must keep the counts exact.
func TestConcurrentMoves(t *testing.T) {
	url := testDB(t)
	s := openSchema(t, url, newSchema(t, url))
	ctx := t.Context()
	hosts := make([]*meta.Host, 3)
	for i := range hosts {
		hosts[i] = &meta.Host{Hostname: string(rune('a'+i)) + ".example.com"}
		if err := s.CreateHost(ctx, hosts[i]); err != nil {
			t.Fatal(err)
		}
	}
	a := &meta.Account{DID: "did:plc:moving", HostID: hosts[0].ID}
	if err := s.CreateAccount(ctx, a); err != nil {
		t.Fatal(err)
	}
	const workers, moves = 6, 20
	errs := make(chan error, workers)
	for w := range workers {
		go func() {
			for i := range moves {
				m := *a
				m.HostID = hosts[(w+i)%len(hosts)].ID
				if err := s.UpdateAccount(ctx, &m); err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	for range workers {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	got, err := s.GetAccountByDID(ctx, a.DID)
	if err != nil {
		t.Fatal(err)
	}
	var total int64
	for _, h := range hosts {
		g, err := s.GetHost(ctx, h.ID)
		if err != nil {
			t.Fatal(err)
		}
		want := int64(0)
		if h.ID == got.HostID {
			want = 1
		}
		if g.AccountCount != want {
			t.Fatalf("host %s AccountCount %d, want %d (account on host %d)", h.Hostname, g.AccountCount, want, got.HostID)
		}
		total += g.AccountCount
	}
	if total != 1 {
		t.Fatalf("total AccountCount %d, want 1", total)
	}
}
