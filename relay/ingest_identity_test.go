package relay

import (
	"testing"
	"time"

	"github.com/relay/relay/perf"
)

// An #identity event evicts the cached DID document: after a key rotation
// and a handle change announced by #identity, the relay re-emits the
// #identity with the new handle (only a fresh document can confirm it) and
// accepts commits signed with the new key without a signature failure.
func TestIngestIdentityEvictsCachedKey(t *testing.T) {
	n := startTestNet(t, 1, nil)
	p := n.hosts[0]
	a, err := perf.NewAccount(perf.K256, "before.test", n.plc, p)
	if err != nil {
		t.Fatal(err)
	}
	n.crawl(t, p)
	c := dialConsumer(t, n.r.Addr(), "")
	first := emitCommit(t, a, p, 1)
	if e := collectEvents(t, c, 1, 20*time.Second)[0]; e.t != "#commit" || e.rev != first {
		t.Fatalf("first commit: %v", e)
	}
	resolvesBefore := n.plc.Requests()

	a.Handle = "after.test"
	if err := a.RotateKey(n.plc); err != nil {
		t.Fatal(err)
	}
	p.Emit(perf.Event{Identity: a.Identity()})
	revs := []string{emitCommit(t, a, p, 1), emitCommit(t, a, p, 2)}

	got := collectEvents(t, c, 3, 20*time.Second)
	if got[0].t != "#identity" || got[0].did != a.DID || got[0].handle != "after.test" {
		t.Fatalf("re-emitted identity: %v, want #identity with the new handle after.test", got[0])
	}
	for i, rev := range revs {
		if e := got[1+i]; e.t != "#commit" || e.rev != rev {
			t.Fatalf("commit %d after rotation: %v, want rev %s", i, e, rev)
		}
	}
	expectNoEvent(t, c, 300*time.Millisecond)
	if d := n.plc.Requests() - resolvesBefore; d != 1 {
		t.Errorf("%d DID resolutions after the #identity, want exactly 1 (the eviction)", d)
	}
	if got := n.r.metrics.Dropped("bad_signature").Get(); got != 0 {
		t.Errorf("bad_signature drops: %d, want 0", got)
	}
}

// A key rotated without an #identity: the first commit signed with the new
// key fails against the cached key, the relay re-resolves once and accepts
// it. A commit whose signature is really bad is re-resolved once too, and
// then dropped.
func TestIngestKeyRotationWithoutIdentityEvent(t *testing.T) {
	n := startTestNet(t, 1, nil)
	p := n.hosts[0]
	a, err := perf.NewAccount(perf.P256, "rotor.test", n.plc, p)
	if err != nil {
		t.Fatal(err)
	}
	n.crawl(t, p)
	c := dialConsumer(t, n.r.Addr(), "")
	emitCommit(t, a, p, 1)
	collectEvents(t, c, 1, 20*time.Second)

	resolves := n.plc.Requests()
	if err := a.RotateKey(n.plc); err != nil {
		t.Fatal(err)
	}
	rotated := emitCommit(t, a, p, 1)
	next := emitCommit(t, a, p, 1)
	got := collectEvents(t, c, 2, 20*time.Second)
	if got[0].rev != rotated || got[1].rev != next {
		t.Fatalf("after a silent rotation: %v, want revs %s then %s", got, rotated, next)
	}
	if d := n.plc.Requests() - resolves; d != 1 {
		t.Errorf("%d DID resolutions for the silent rotation, want exactly 1", d)
	}
	if got := n.r.metrics.Dropped("bad_signature").Get(); got != 0 {
		t.Errorf("bad_signature drops after a silent rotation: %d, want 0", got)
	}

	resolves = n.plc.Requests()
	bad, err := a.BadSignatureCommit()
	if err != nil {
		t.Fatal(err)
	}
	p.Emit(perf.Event{Commit: bad})
	good := emitCommit(t, a, p, 1)
	if e := collectEvents(t, c, 1, 20*time.Second)[0]; e.rev != good {
		t.Fatalf("after a bad signature: %v, want rev %s", e, good)
	}
	expectNoEvent(t, c, 300*time.Millisecond)
	if got := n.r.metrics.Dropped("bad_signature").Get(); got != 1 {
		t.Errorf("bad_signature drops: %d, want 1", got)
	}
	if d := n.plc.Requests() - resolves; d != 1 {
		t.Errorf("%d DID resolutions for a bad signature, want exactly 1 (re-resolve once)", d)
	}
}
