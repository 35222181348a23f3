package relay

import (
	"context"
	"fmt"
	"testing"
	"time"

	comatproto "github.com/bluesky-social/indigo/api/atproto"

	"github.com/relay/relay/perf"
	"github.com/relay/relay/relay/lexicon"
)

// What a consumer has received, the API knows: after each frame arrives,
// the same goroutine asks getLatestCommit, getRepoStatus, listRepos and
// getHostStatus, which must already reflect it (no waiting for a flush).
func TestAPIAgreesWithFirehose(t *testing.T) {
	testAPIAgreesWithFirehose(t, nil)
}

func TestAPIAgreesWithFirehosePostgres(t *testing.T) {
	dbURL := postgresURL(t)
	testAPIAgreesWithFirehose(t, func(c *Config) { c.DatabaseURL = dbURL })
}

func testAPIAgreesWithFirehose(t *testing.T, mutate func(*Config)) {
	n := startTestNet(t, 1, mutate)
	p := n.hosts[0]
	var accounts []*perf.Account
	for i := 0; i < 4; i++ {
		a, err := perf.NewAccount(perf.KeyType(i%2), fmt.Sprintf("agree%d.test", i), n.plc, p)
		if err != nil {
			t.Fatal(err)
		}
		accounts = append(accounts, a)
	}
	n.crawl(t, p)
	c := dialConsumer(t, n.r.Addr(), "")
	xc := xrpcClient(n.r)
	ctx := context.Background()
	for round := 0; round < 15; round++ {
		a := accounts[round%len(accounts)]
		ev := mustCommit(t, a, 1)
		useq := p.Emit(ev)
		got, err := c.nextEvent(10 * time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if got.t != "#commit" || got.did != a.DID || got.rev != ev.Commit.Rev {
			t.Fatalf("round %d: frame %v", round, got)
		}
		// Now, in the same goroutine:
		lc, err := comatproto.SyncGetLatestCommit(ctx, xc, a.DID)
		if err != nil || lc.Rev != ev.Commit.Rev || lc.Cid != ev.Commit.Commit.String() {
			t.Fatalf("round %d: getLatestCommit after the frame = %+v, %v; want rev %s", round, lc, err, ev.Commit.Rev)
		}
		rs, err := comatproto.SyncGetRepoStatus(ctx, xc, a.DID)
		if err != nil || !rs.Active || rs.Rev == nil || *rs.Rev != ev.Commit.Rev {
			t.Fatalf("round %d: getRepoStatus after the frame = %+v, %v", round, rs, err)
		}
		lr, err := comatproto.SyncListRepos(ctx, xc, "", 1000)
		if err != nil {
			t.Fatal(err)
		}
		found := false
		for _, r := range lr.Repos {
			if r.Did == a.DID {
				found = r.Rev == ev.Commit.Rev && r.Head == ev.Commit.Commit.String()
			}
		}
		if !found {
			t.Fatalf("round %d: listRepos after the frame does not show %s at %s", round, a.DID, ev.Commit.Rev)
		}
		hs, err := comatproto.SyncGetHostStatus(ctx, xc, p.Host())
		if err != nil || hs.Seq == nil || *hs.Seq < useq {
			t.Fatalf("round %d: getHostStatus after the frame = %+v, %v; want seq >= %d", round, hs, err, useq)
		}
	}
	// An account status change is known as soon as its #account frame is.
	a := accounts[0]
	p.Emit(perf.Event{Account: a.AccountEvent(false, "deactivated")})
	got, err := c.nextEvent(10 * time.Second)
	if err != nil || got.t != "#account" || got.active {
		t.Fatalf("deactivation frame %v, %v", got, err)
	}
	rs, err := comatproto.SyncGetRepoStatus(ctx, xc, a.DID)
	if err != nil || rs.Active || rs.Status == nil || *rs.Status != "deactivated" {
		t.Fatalf("getRepoStatus right after #account = %+v, %v", rs, err)
	}
	if _, err := comatproto.SyncGetLatestCommit(ctx, xc, a.DID); xrpcErrName(err) != lexicon.RepoDeactivated {
		t.Fatalf("getLatestCommit of a deactivated repo: %v", err)
	}
}
