package relay

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/url"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/relay/relay/perf"
)

// postgresURL returns a DATABASE_URL for a fresh schema of the database
// at TEST_DATABASE_URL (dropped when the test ends), or skips.
func postgresURL(t *testing.T) string {
	t.Helper()
	base := os.Getenv("TEST_DATABASE_URL")
	if base == "" {
		t.Skip("TEST_DATABASE_URL not set")
	}
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, base)
	if err != nil {
		t.Fatalf("connect to TEST_DATABASE_URL: %v", err)
	}
	defer conn.Close(ctx)
	schema := fmt.Sprintf("relay_e2e_%d", rand.Uint64())
	if _, err := conn.Exec(ctx, "CREATE SCHEMA "+schema); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c, err := pgx.Connect(context.Background(), base)
		if err != nil {
			return
		}
		defer c.Close(context.Background())
		_, _ = c.Exec(context.Background(), "DROP SCHEMA "+schema+" CASCADE")
	})
	u, err := url.Parse(base)
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	return u.String()
}

// The whole relay on the Postgres metadata store: ingest, accounts, repo
// heads and host cursors persist across a restart.
func TestRelayOnPostgres(t *testing.T) {
	dbURL := postgresURL(t)
	n := startTestNet(t, 2, func(c *Config) { c.DatabaseURL = dbURL })
	var accounts []*perf.Account
	for i := 0; i < 4; i++ {
		a, err := perf.NewAccount(perf.KeyType(i%2), fmt.Sprintf("pg%d.test", i), n.plc, n.hosts[i%2])
		if err != nil {
			t.Fatal(err)
		}
		accounts = append(accounts, a)
	}
	for _, p := range n.hosts {
		n.crawl(t, p)
	}
	c := dialConsumer(t, n.r.Addr(), "")
	for round := 0; round < 3; round++ {
		for _, a := range accounts {
			a.PDS().Emit(mustCommit(t, a, 1))
		}
	}
	frames := collect(t, c, 12, 30*time.Second)
	for i, f := range frames {
		if f.t != "#commit" || f.seq != int64(i+1) {
			t.Fatalf("frame %d: %+v", i, f)
		}
	}
	cfg := n.r.cfg
	if err := n.r.Close(context.Background()); err != nil {
		t.Fatal(err)
	}

	// Restart on the same database and data dir: the hosts are redialed
	// from their cursors, nothing is replayed twice, and new commits chain
	// onto the stored heads.
	cfg.Listen, cfg.MetricsListen = "127.0.0.1:0", "127.0.0.1:0"
	r2 := startRelay(t, cfg)
	if got := len(r2.hosts.Hosts()); got != 2 {
		t.Fatalf("%d hosts after restart, want 2", got)
	}
	c2 := dialConsumer(t, r2.Addr(), "?cursor=12")
	deadline := time.Now().Add(10 * time.Second)
	for _, p := range n.hosts {
		for p.Subscribers() == 0 {
			if time.Now().After(deadline) {
				t.Fatalf("host %s not redialed after restart", p.Host())
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	for _, a := range accounts {
		a.PDS().Emit(mustCommit(t, a, 1))
	}
	frames = collect(t, c2, 4, 30*time.Second)
	for i, f := range frames {
		if f.t != "#commit" || f.seq != int64(13+i) {
			t.Fatalf("after restart, frame %d: %+v", i, f)
		}
	}
	expectQuiet(t, c2, 300*time.Millisecond)
	if got := r2.metrics.Dropped("stale_rev").Get(); got != 0 {
		t.Fatalf("%d stale_rev drops after restart: events were replayed past the stored cursor", got)
	}
}
