package relay

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/relay/relay/perf"
)

// The PDS drops the relay's connection several times while it emits: the
// relay reconnects from its cursor each time, and the consumer sees every
// event exactly once, in per-account order, with gapless relay seqs.
func TestIngestReconnectsFromCursorMidStream(t *testing.T) {
	const (
		accounts   = 6
		perAccount = 50
		drops      = 4
	)
	n := startTestNetHooked(t, 1, nil, fastRedial)
	p := n.hosts[0]
	var accts []*perf.Account
	for i := 0; i < accounts; i++ {
		a, err := perf.NewAccount([]perf.KeyType{perf.K256, perf.P256}[i%2], fmt.Sprintf("r%d.test", i), n.plc, p)
		if err != nil {
			t.Fatal(err)
		}
		accts = append(accts, a)
	}
	n.crawl(t, p)
	c := dialConsumer(t, n.r.Addr(), "")

	// Build every commit first so that emission is fast and steady.
	type emitted struct {
		ev  perf.Event
		did string
		rev string
	}
	var plan []emitted
	wantRevs := map[string][]string{}
	for i := 0; i < perAccount; i++ {
		for _, a := range accts {
			cm, err := a.Commit(1 + i%3)
			if err != nil {
				t.Fatal(err)
			}
			plan = append(plan, emitted{perf.Event{Commit: cm}, a.DID, cm.Rev})
			wantRevs[a.DID] = append(wantRevs[a.DID], cm.Rev)
		}
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i, e := range plan {
			p.Emit(e.ev)
			if i%10 == 9 {
				time.Sleep(2 * time.Millisecond)
			}
		}
	}()
	for i := 0; i < drops; i++ {
		time.Sleep(15 * time.Millisecond)
		p.DropConnections()
	}
	wg.Wait()

	got := collectEvents(t, c, len(plan), 60*time.Second)
	expectNoEvent(t, c, 500*time.Millisecond)
	next := map[string]int{}
	for i, e := range got {
		if e.seq != int64(i+1) {
			t.Fatalf("event %d has relay seq %d: gap or duplicate", i, e.seq)
		}
		revs := wantRevs[e.did]
		k := next[e.did]
		if k >= len(revs) || revs[k] != e.rev {
			t.Fatalf("event %d: %v out of order or duplicated (account's event %d)", i, e, k)
		}
		next[e.did] = k + 1
	}
	cursors := p.Cursors()
	t.Logf("subscription cursors: %v", cursors)
	if len(cursors) < 2 {
		t.Fatalf("PDS saw %d subscriptions, want reconnections after %d drops", len(cursors), drops)
	}
	for i, cur := range cursors[1:] {
		if cur < cursors[i] && cursors[i] != -1 {
			t.Errorf("subscription cursors went backwards: %v", cursors)
		}
		if cur < 0 {
			t.Errorf("reconnection %d without a cursor: %v", i+1, cursors)
		}
	}
	if h := hostRecord(t, n.r, p.Host()); h.Cursor != p.LastSeq() {
		t.Errorf("host cursor %d, want the PDS's last seq %d", h.Cursor, p.LastSeq())
	}
}
