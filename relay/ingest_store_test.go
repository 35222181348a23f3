package relay

import (
	"github.com/bluesky-social/indigo/atproto/syntax"

	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/relay/relay/perf"
	"github.com/relay/relay/persist/meta"
)

// errStoreDown is the failure flakyStore injects.
var errStoreDown = errors.New("test: store unavailable")

// flakyStore fails a set number of account reads and creations, then
// behaves like the store it wraps.
type flakyStore struct {
	meta.Store
	mu            sync.Mutex
	failLookups   int
	failCreations int
	hangLookups   int // lookups that hang until the caller's deadline
}

func (f *flakyStore) GetAccountByDID(ctx context.Context, did syntax.DID) (*meta.Account, error) {
	f.mu.Lock()
	fail := f.failLookups > 0
	if fail {
		f.failLookups--
	}
	hang := !fail && f.hangLookups > 0
	if hang {
		f.hangLookups--
	}
	f.mu.Unlock()
	if fail {
		return nil, errStoreDown
	}
	if hang {
		<-ctx.Done() // a store that never answers
		return nil, ctx.Err()
	}
	return f.Store.GetAccountByDID(ctx, did)
}

func (f *flakyStore) CreateAccount(ctx context.Context, a *meta.Account) error {
	f.mu.Lock()
	fail := f.failCreations > 0
	if fail {
		f.failCreations--
	}
	f.mu.Unlock()
	if fail {
		return errStoreDown
	}
	return f.Store.CreateAccount(ctx, a)
}

// A store failure while validating holds the account's events and retries
// them: nothing is lost or reordered, other accounts keep flowing, and the
// host's cursor still reaches the end.
func TestIngestStoreErrorsAreRetried(t *testing.T) {
	var flaky *flakyStore
	n := startTestNetHooked(t, 1, nil, func(r *Relay) {
		flaky = &flakyStore{Store: r.ing.store, failLookups: 2, failCreations: 1}
		r.ing.store = flaky
	})
	p := n.hosts[0]
	a, err := perf.NewAccount(perf.K256, "flaky.test", n.plc, p)
	if err != nil {
		t.Fatal(err)
	}
	n.crawl(t, p)
	c := dialConsumer(t, n.r.Addr(), "")
	var want []string
	for i := 0; i < 3; i++ {
		want = append(want, emitCommit(t, a, p, 1))
	}
	got := collectEvents(t, c, len(want), 20*time.Second)
	for i, e := range got {
		if e.did != a.DID || e.rev != want[i] {
			t.Fatalf("event %d: %v, want rev %s", i, e, want[i])
		}
	}
	expectNoEvent(t, c, 300*time.Millisecond)
	if got := n.r.metrics.storeRetries.Get(); got != 3 {
		t.Errorf("relay_ingest_store_retries_total = %d, want 3 (two lookups, one creation)", got)
	}
	h := hostRecord(t, n.r, p.Host())
	if len(h.Drops) != 0 || h.Cursor != p.LastSeq() {
		t.Errorf("host drops %v cursor %d, want no drops and cursor %d", h.Drops, h.Cursor, p.LastSeq())
	}
	if subs := p.Cursors(); len(subs) != 1 {
		t.Errorf("PDS subscriptions %v: a store error must not cost a reconnection", subs)
	}
}

// A store that hangs does not stall a worker for good: the call has a
// deadline, the event is held and retried (counted), and then relayed.
func TestIngestHungStoreCallTimesOut(t *testing.T) {
	var flaky *flakyStore
	n := startTestNetHooked(t, 1, nil, func(r *Relay) {
		flaky = &flakyStore{Store: r.ing.store, hangLookups: 2}
		r.ing.store = flaky
		r.ing.storeTimeout = 50 * time.Millisecond
	})
	p := n.hosts[0]
	a, err := perf.NewAccount(perf.K256, "hung.test", n.plc, p)
	if err != nil {
		t.Fatal(err)
	}
	n.crawl(t, p)
	c := dialConsumer(t, n.r.Addr(), "")
	rev := emitCommit(t, a, p, 1)
	got := collectEvents(t, c, 1, 20*time.Second)
	if got[0].did != a.DID || got[0].rev != rev {
		t.Fatalf("event %v, want rev %s", got[0], rev)
	}
	if got := n.r.metrics.storeRetries.Get(); got != 2 {
		t.Errorf("relay_ingest_store_retries_total = %d, want 2 (two timed-out lookups)", got)
	}
}
