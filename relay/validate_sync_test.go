package relay

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	comatproto "github.com/bluesky-social/indigo/api/atproto"
	"github.com/bluesky-social/indigo/atproto/atcrypto"
	"github.com/bluesky-social/indigo/atproto/repo"
	"github.com/bluesky-social/indigo/atproto/syntax"
	"github.com/ipfs/go-cid"
	"github.com/multiformats/go-multihash"

	"github.com/relay/relay/perf"
)

// syncSigner signs #sync messages for one DID with its own key, so tests
// can build commits a perf.Account would never produce (two different
// commits at one rev).
type syncSigner struct {
	key atcrypto.PrivateKey
	did string
}

func newSyncSigner(t testing.TB) *syncSigner {
	t.Helper()
	key, err := atcrypto.GeneratePrivateKeyK256()
	if err != nil {
		t.Fatal(err)
	}
	// did:plc identifiers are 24 base32 characters.
	suffix := fmt.Sprintf("%024d", time.Now().UnixNano())
	b32 := []byte(suffix)
	for i, c := range b32 {
		b32[i] = "abcdefghijklmnopqrstuvwxyz234567"[(c-'0')*3%32]
	}
	return &syncSigner{key: key, did: "did:plc:" + string(b32)}
}

func (s *syncSigner) pub(t testing.TB) atcrypto.PublicKey {
	t.Helper()
	pub, err := s.key.PublicKey()
	if err != nil {
		t.Fatal(err)
	}
	return pub
}

// sync builds a signed #sync at rev whose commit points at a data CID
// derived from seed (a different seed gives a different commit).
func (s *syncSigner) sync(t testing.TB, rev, seed string) (*comatproto.SyncSubscribeRepos_Sync, string) {
	t.Helper()
	data, err := cid.NewPrefixV1(cid.DagCBOR, multihash.SHA2_256).Sum([]byte("data " + seed))
	if err != nil {
		t.Fatal(err)
	}
	sc := repo.Commit{DID: s.did, Version: repo.ATPROTO_REPO_VERSION, Data: data, Rev: rev}
	if err := sc.Sign(s.key); err != nil {
		t.Fatal(err)
	}
	var cb bytes.Buffer
	if err := sc.MarshalCBOR(&cb); err != nil {
		t.Fatal(err)
	}
	commitCID, err := cid.NewPrefixV1(cid.DagCBOR, multihash.SHA2_256).Sum(cb.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	var car bytes.Buffer
	if err := writeProofCAR(&car, commitCID, cb.Bytes(), nil, nil, nil); err != nil {
		t.Fatal(err)
	}
	return &comatproto.SyncSubscribeRepos_Sync{
		Did:    s.did,
		Rev:    rev,
		Blocks: car.Bytes(),
		Time:   syntax.DatetimeNow().String(),
	}, commitCID.String()
}

// revs returns n increasing TIDs.
func revs(n int) []string {
	clock := syntax.NewTIDClock(7)
	out := make([]string, n)
	for i := range out {
		out[i] = clock.Next().String()
	}
	return out
}

func TestValidatorSyncRevRule(t *testing.T) {
	s := newSyncSigner(t)
	pub := s.pub(t)
	rv := revs(3)
	older, cur, newer := rv[0], rv[1], rv[2]
	curSync, curCID := s.sync(t, cur, "current")
	stored := &repoHead{rev: cur, commitCID: curCID, dataCID: "bafystored"}
	v := &validator{now: time.Now}
	ctx := context.Background()

	t.Run("first sync sets the head", func(t *testing.T) {
		res, err := v.Sync(ctx, curSync, pub, nil)
		if err != nil {
			t.Fatal(err)
		}
		if res.rev != cur || res.commitCID != curCID {
			t.Fatalf("head %+v, want rev %s commit %s", res, cur, curCID)
		}
	})
	t.Run("newer rev moves the head", func(t *testing.T) {
		evt, c := s.sync(t, newer, "newer")
		res, err := v.Sync(ctx, evt, pub, stored)
		if err != nil {
			t.Fatal(err)
		}
		if res.rev != newer || res.commitCID != c || res.dataCID == stored.dataCID {
			t.Fatalf("head %+v, want rev %s commit %s and a new data CID", res, newer, c)
		}
	})
	t.Run("equal rev, same commit: relayed, head unchanged", func(t *testing.T) {
		res, err := v.Sync(ctx, curSync, pub, stored)
		if err != nil {
			t.Fatalf("equal-rev #sync naming the stored commit was rejected: %v", err)
		}
		if (repoHead{rev: res.rev, commitCID: res.commitCID, dataCID: res.dataCID}) != *stored {
			t.Fatalf("head moved to %+v, want the stored %+v", res, stored)
		}
	})
	t.Run("equal rev, different commit: sync_rev_conflict", func(t *testing.T) {
		evt, _ := s.sync(t, cur, "rewritten")
		_, err := v.Sync(ctx, evt, pub, stored)
		if err == nil || dropReason(err) != "sync_rev_conflict" {
			t.Fatalf("err %v (reason %q), want sync_rev_conflict", err, dropReason(err))
		}
	})
	t.Run("equal rev, stored head without commit CID: sync_rev_conflict", func(t *testing.T) {
		_, err := v.Sync(ctx, curSync, pub, &repoHead{rev: cur})
		if err == nil || dropReason(err) != "sync_rev_conflict" {
			t.Fatalf("err %v (reason %q), want sync_rev_conflict", err, dropReason(err))
		}
	})
	t.Run("older rev: stale_rev", func(t *testing.T) {
		evt, _ := s.sync(t, older, "older")
		_, err := v.Sync(ctx, evt, pub, stored)
		if err == nil || dropReason(err) != "stale_rev" || !errors.Is(err, ErrStaleRev) {
			t.Fatalf("err %v (reason %q), want stale_rev", err, dropReason(err))
		}
	})
	t.Run("equal rev, same commit, forged signature: bad_signature", func(t *testing.T) {
		other := newSyncSigner(t)
		other.did = s.did
		evt, _ := other.sync(t, cur, "current")
		_, err := v.Sync(ctx, evt, pub, stored)
		if err == nil || dropReason(err) != "bad_signature" {
			t.Fatalf("err %v (reason %q), want bad_signature", err, dropReason(err))
		}
	})
	t.Run("equal rev far in the future: future_rev", func(t *testing.T) {
		future := syntax.NewTIDFromTime(time.Now().Add(time.Hour), 1).String()
		evt, c := s.sync(t, future, "future")
		_, err := v.Sync(ctx, evt, pub, &repoHead{rev: future, commitCID: c})
		if err == nil || dropReason(err) != "future_rev" {
			t.Fatalf("err %v (reason %q), want future_rev", err, dropReason(err))
		}
	})
}

// TestIngestSyncRevRule runs the rule through the whole relay: a fake PDS
// sends the pattern of a real one (a commit, then a #sync at the same rev),
// then the cases that must be dropped, each with its own reason label.
func TestIngestSyncRevRule(t *testing.T) {
	n := startTestNet(t, 1, nil)
	p := n.hosts[0]
	a, err := perf.NewAccount(perf.K256, "alice.test", n.plc, p)
	if err != nil {
		t.Fatal(err)
	}
	s := newSyncSigner(t)
	n.plc.Put(s.did, "sam.test", s.pub(t), p.URL())
	n.crawl(t, p)
	c := dialConsumer(t, n.r.Addr(), "")
	m := n.r.metrics

	// A real PDS's account creation: first #commit, then #sync at its rev.
	rev1 := emitCommit(t, a, p, 1)
	reannounce, err := a.Sync()
	if err != nil {
		t.Fatal(err)
	}
	p.Emit(perf.Event{Sync: reannounce})
	// The next commit chains on the unchanged head (prevData equal to the
	// stored data CID: no mismatch counted).
	rev2 := emitCommit(t, a, p, 1)
	// The earlier #sync is now older than the head.
	p.Emit(perf.Event{Sync: reannounce})

	rv := revs(3)
	first, _ := s.sync(t, rv[1], "first")
	p.Emit(perf.Event{Sync: first})          // new account: head set
	p.Emit(perf.Event{Sync: first})          // re-announced: relayed
	conflict, _ := s.sync(t, rv[1], "other") // same rev, another commit
	p.Emit(perf.Event{Sync: conflict})
	stale, _ := s.sync(t, rv[0], "stale")
	p.Emit(perf.Event{Sync: stale})
	newer, newerCID := s.sync(t, rv[2], "newer")
	p.Emit(perf.Event{Sync: newer}) // head moves
	p.Emit(perf.Event{Sync: first}) // now older: stale

	// Order holds per account (events are partitioned by DID); seq is
	// gapless across both.
	want := map[string][]string{
		a.DID: {"#commit " + rev1, "#sync " + rev1, "#commit " + rev2},
		s.did: {"#sync " + rv[1], "#sync " + rv[1], "#sync " + rv[2]},
	}
	got := collectEvents(t, c, 6, 30*time.Second)
	perDID := map[string][]string{}
	for i, e := range got {
		if e.seq != int64(i+1) {
			t.Fatalf("event %d: seq %d, want %d", i, e.seq, i+1)
		}
		perDID[e.did] = append(perDID[e.did], e.t+" "+e.rev)
	}
	for did, w := range want {
		if fmt.Sprint(perDID[did]) != fmt.Sprint(w) {
			t.Errorf("%s: events %v, want %v", did, perDID[did], w)
		}
	}
	expectNoEvent(t, c, 300*time.Millisecond)

	if got := m.Dropped("sync_rev_conflict").Get(); got != 1 {
		t.Errorf("sync_rev_conflict drops: %d, want 1", got)
	}
	if got := m.Dropped("stale_rev").Get(); got != 3 {
		t.Errorf("stale_rev drops: %d, want 3 (alice's old #sync, sam's older rev, sam's superseded #sync)", got)
	}
	var prom bytes.Buffer
	m.WritePrometheus(&prom)
	if !bytes.Contains(prom.Bytes(), []byte(`relay_events_dropped_total{reason="sync_rev_conflict"} 1`)) {
		t.Errorf("relay_events_dropped_total has no sync_rev_conflict line of 1:\n%s", grepLines(prom.String(), "relay_events_dropped_total"))
	}
	if got := m.prevDataMismatch.Get(); got != 0 {
		t.Errorf("prevData mismatches: %d, want 0 (the equal-rev #sync must not move the head)", got)
	}
	xc := xrpcClient(n.r)
	waitUntil(t, 10*time.Second, "sam's head at the newer #sync", func() bool {
		out, err := comatproto.SyncGetLatestCommit(context.Background(), xc, s.did)
		return err == nil && out.Rev == rv[2] && out.Cid == newerCID
	})
}

func grepLines(s, prefix string) string {
	var b bytes.Buffer
	for _, l := range bytes.Split([]byte(s), []byte("\n")) {
		if bytes.HasPrefix(l, []byte(prefix)) {
			b.Write(l)
			b.WriteByte('\n')
		}
	}
	return b.String()
}
