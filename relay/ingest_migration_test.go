package relay

import (
	"github.com/bluesky-social/indigo/atproto/syntax"

	"context"
	"testing"
	"time"

	"github.com/relay/relay/perf"
)

// An account moves from one PDS to another: the relay follows the DID
// document, moves the account and its count, keeps delivering its events
// from the new host, and drops what the old host still sends for it.
func TestIngestAccountMigration(t *testing.T) {
	n := startTestNet(t, 2, nil)
	oldPDS, newPDS := n.hosts[0], n.hosts[1]
	mover, err := perf.NewAccount(perf.K256, "mover.test", n.plc, oldPDS)
	if err != nil {
		t.Fatal(err)
	}
	stayer, err := perf.NewAccount(perf.P256, "stayer.test", n.plc, oldPDS)
	if err != nil {
		t.Fatal(err)
	}
	n.crawl(t, oldPDS)
	n.crawl(t, newPDS)
	c := dialConsumer(t, n.r.Addr(), "")

	emitCommit(t, mover, oldPDS, 1)
	emitCommit(t, stayer, oldPDS, 1)
	for _, e := range collectEvents(t, c, 2, 20*time.Second) {
		if e.t != "#commit" {
			t.Fatalf("before the move: %v", e)
		}
	}
	oldID := n.r.hosts.byHostname(oldPDS.Host()).id
	newID := n.r.hosts.byHostname(newPDS.Host()).id
	if got := hostRecord(t, n.r, oldPDS.Host()).AccountCount; got != 2 {
		t.Fatalf("old host counts %d accounts before the move, want 2", got)
	}

	mover.MoveTo(n.plc, newPDS)
	moved := []string{emitCommit(t, mover, newPDS, 2), emitCommit(t, mover, newPDS, 1)}
	for i, e := range collectEvents(t, c, 2, 20*time.Second) {
		if e.t != "#commit" || e.did != mover.DID || e.rev != moved[i] {
			t.Fatalf("after the move, event %d: %v, want the commit of rev %s", i, e, moved[i])
		}
	}

	ctx := context.Background()
	acct, err := n.r.store.GetAccountByDID(ctx, syntax.DID(mover.DID))
	if err != nil {
		t.Fatal(err)
	}
	if acct.HostID != newID {
		t.Errorf("stored account is on host %d, want the new host %d", acct.HostID, newID)
	}
	for _, hc := range []struct {
		id   uint64
		name string
		want int64
	}{{oldID, oldPDS.Host(), 1}, {newID, newPDS.Host(), 1}} {
		stored, err := n.r.store.GetHost(ctx, hc.id)
		if err != nil {
			t.Fatal(err)
		}
		if stored.AccountCount != hc.want {
			t.Errorf("stored host %s counts %d accounts, want %d", hc.name, stored.AccountCount, hc.want)
		}
		if live := hostRecord(t, n.r, hc.name).AccountCount; live != hc.want {
			t.Errorf("live host %s counts %d accounts, want %d", hc.name, live, hc.want)
		}
	}
	if got := n.r.metrics.accountMigrations.Get(); got != 1 {
		t.Errorf("relay_account_migrations_total = %d, want 1", got)
	}

	// The old host keeps sending for the account it lost: a validly signed
	// commit and an #account deactivation. Both are dropped as wrong_host,
	// and neither changes the account, whose next commit from its new host
	// is delivered. The account that stayed keeps flowing from the old host.
	wrongBefore := n.r.metrics.Dropped("wrong_host").Get()
	emitCommit(t, mover, oldPDS, 1)
	oldPDS.Emit(perf.Event{Account: mover.AccountEvent(false, "deactivated")})
	stayRev := emitCommit(t, stayer, oldPDS, 1)
	moverRev := emitCommit(t, mover, newPDS, 1)
	got := collectEvents(t, c, 2, 20*time.Second)
	seen := map[string]string{}
	for _, e := range got {
		if e.t != "#commit" {
			t.Fatalf("unexpected %v", e)
		}
		seen[e.did] = e.rev
	}
	if seen[stayer.DID] != stayRev || seen[mover.DID] != moverRev {
		t.Fatalf("got %v, want the stayer's %s from the old host and the mover's %s from the new one", got, stayRev, moverRev)
	}
	expectNoEvent(t, c, 300*time.Millisecond)
	if d := n.r.metrics.Dropped("wrong_host").Get() - wrongBefore; d != 2 {
		t.Errorf("wrong_host drops after the move: %d, want 2 (a commit and an #account)", d)
	}
	if drops := hostRecord(t, n.r, oldPDS.Host()).Drops["wrong_host"]; drops != 2 {
		t.Errorf("old host wrong_host drops: %d, want 2", drops)
	}
	acct, err = n.r.store.GetAccountByDID(ctx, syntax.DID(mover.DID))
	if err != nil {
		t.Fatal(err)
	}
	if acct.HostID != newID || !acct.IsActive() {
		t.Errorf("after the old host's events the account is %+v, want active on host %d", acct, newID)
	}
}
