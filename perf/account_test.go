package perf

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	comatproto "github.com/bluesky-social/indigo/api/atproto"
	"github.com/bluesky-social/indigo/atproto/identity"
	"github.com/bluesky-social/indigo/atproto/repo"
	"github.com/bluesky-social/indigo/atproto/repo/mst"
	"github.com/bluesky-social/indigo/atproto/syntax"
	"github.com/ipfs/go-cid"
)

func TestMain(m *testing.M) {
	// repo.VerifyCommitMessage logs an INFO line through slog.Default for
	// every first commit (prevData null); keep test output readable.
	slog.SetDefault(slog.New(slog.NewTextHandler(io.Discard, nil)))
	os.Exit(m.Run())
}

// testEnv is a PLC, a PDS and a directory resolving through the PLC.
type testEnv struct {
	plc *PLC
	pds *PDS
	dir *identity.BaseDirectory
}

func newTestEnv(t *testing.T) *testEnv {
	t.Helper()
	plc, err := StartPLC()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(plc.Close)
	pds, err := StartPDS(PDSOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pds.Close)
	return &testEnv{
		plc: plc,
		pds: pds,
		dir: &identity.BaseDirectory{PLCURL: plc.URL(), SkipHandleVerification: true},
	}
}

// commitData returns the MST root named by the signed commit in msg.Blocks.
func commitData(t *testing.T, msg *comatproto.SyncSubscribeRepos_Commit) cid.Cid {
	t.Helper()
	c, _, err := repo.LoadCommitFromCAR(context.Background(), bytes.NewReader(msg.Blocks))
	if err != nil {
		t.Fatal(err)
	}
	return c.Data
}

// applyOps replays msg's ops on an independent full tree, as a mirror of the
// repo would, and checks the result is the commit's data root.
func applyOps(t *testing.T, tree *mst.Tree, msg *comatproto.SyncSubscribeRepos_Commit) {
	t.Helper()
	for _, op := range msg.Ops {
		var val *cid.Cid
		if op.Cid != nil {
			val = (*cid.Cid)(op.Cid)
		}
		prev, err := repo.ApplyOp(tree, op.Path, val)
		if err != nil {
			t.Fatalf("apply %s %s: %v", op.Action, op.Path, err)
		}
		switch op.Action {
		case "create":
			if prev.Prev != nil {
				t.Fatalf("create %s over an existing record", op.Path)
			}
		case "update", "delete":
			if prev.Prev == nil || op.Prev == nil || *prev.Prev != *(*cid.Cid)(op.Prev) {
				t.Fatalf("%s %s: op prev %v, tree had %v", op.Action, op.Path, op.Prev, prev.Prev)
			}
		}
	}
	root, err := tree.RootCID()
	if err != nil {
		t.Fatal(err)
	}
	if want := commitData(t, msg); *root != want {
		t.Fatalf("mirror root %s != commit data %s", root, want)
	}
}

func TestCommitChainVerifies(t *testing.T) {
	for _, kt := range []KeyType{K256, P256} {
		t.Run(kt.String(), func(t *testing.T) {
			env := newTestEnv(t)
			ctx := context.Background()
			a, err := NewAccount(kt, "alice.test", env.plc, env.pds)
			if err != nil {
				t.Fatal(err)
			}
			mirror := mst.NewEmptyTree()
			var prevData *cid.Cid
			prevRev := ""
			kinds := map[string]int{}
			const chain = 50
			for i := range chain {
				n := 1 + i%7
				if i == chain-1 {
					n = MaxCommitOps
				}
				msg, err := a.Commit(n)
				if err != nil {
					t.Fatal(err)
				}
				if len(msg.Ops) != n {
					t.Fatalf("commit %d: %d ops, want %d", i, len(msg.Ops), n)
				}
				if _, err := repo.VerifyCommitMessage(ctx, msg); err != nil {
					t.Fatalf("commit %d: VerifyCommitMessage: %v", i, err)
				}
				if err := repo.VerifyCommitSignature(ctx, env.dir, msg); err != nil {
					t.Fatalf("commit %d: VerifyCommitSignature: %v", i, err)
				}
				if prevData == nil {
					if msg.PrevData != nil || msg.Since != nil {
						t.Fatalf("first commit has prevData %v since %v", msg.PrevData, msg.Since)
					}
				} else {
					if msg.PrevData == nil || *(*cid.Cid)(msg.PrevData) != *prevData {
						t.Fatalf("commit %d: prevData %v, want %s", i, msg.PrevData, prevData)
					}
					if msg.Since == nil || *msg.Since != prevRev {
						t.Fatalf("commit %d: since %v, want %s", i, msg.Since, prevRev)
					}
				}
				if msg.Rev <= prevRev {
					t.Fatalf("commit %d: rev %s not after %s", i, msg.Rev, prevRev)
				}
				if _, err := syntax.ParseDatetime(msg.Time); err != nil {
					t.Fatal(err)
				}
				applyOps(t, &mirror, msg)
				for _, op := range msg.Ops {
					kinds[op.Action]++
					coll, _, _ := strings.Cut(op.Path, "/")
					kinds[coll]++
				}
				d := commitData(t, msg)
				prevData = &d
				prevRev = msg.Rev
			}
			if a.Rev() != prevRev || *a.Data() != *prevData {
				t.Fatalf("account state %s %s, last commit %s %s", a.Rev(), a.Data(), prevRev, prevData)
			}
			for _, k := range []string{"create", "delete", collPost, collLike, collFollow, collRepost} {
				if kinds[k] == 0 {
					t.Errorf("no %q op in %d commits: %v", k, chain, kinds)
				}
			}
		})
	}
}

func TestPostTextIsRealistic(t *testing.T) {
	a, err := NewAccount(K256, "text.test", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	for range 20 {
		msg, err := a.Commit(5)
		if err != nil {
			t.Fatal(err)
		}
		r, err := repo.VerifyCommitMessage(context.Background(), msg)
		if err != nil {
			t.Fatal(err)
		}
		for _, op := range msg.Ops {
			if op.Action != "create" || op.Path[:len(collPost)] != collPost {
				continue
			}
			nsid, rkey, err := syntax.ParseRepoPath(op.Path)
			if err != nil {
				t.Fatal(err)
			}
			rec, _, err := r.GetRecordBytes(context.Background(), nsid, rkey)
			if err != nil {
				t.Fatal(err)
			}
			if len(rec) < minPostText || len(rec) > maxPostText+200 {
				t.Fatalf("post record of %d bytes", len(rec))
			}
			return
		}
	}
	t.Fatal("no post in 100 ops")
}

func TestSyncAndIdentity(t *testing.T) {
	env := newTestEnv(t)
	ctx := context.Background()
	a, err := NewAccount(P256, "bob.test", env.plc, env.pds)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Sync(); !errors.Is(err, ErrNoCommit) {
		t.Fatalf("Sync before a commit: %v", err)
	}
	c, err := a.Commit(3)
	if err != nil {
		t.Fatal(err)
	}
	s, err := a.Sync()
	if err != nil {
		t.Fatal(err)
	}
	got, err := repo.VerifySyncMessage(ctx, env.dir, s)
	if err != nil {
		t.Fatal(err)
	}
	if got.Rev != c.Rev || s.Rev != c.Rev || s.Did != a.DID || got.Data != commitData(t, c) {
		t.Fatalf("sync %+v does not name the head %s", got, c.Rev)
	}

	id := a.Identity()
	if id.Did != a.DID || id.Handle == nil || *id.Handle != "bob.test" {
		t.Fatalf("identity event %+v", id)
	}
	ae := a.AccountEvent(false, "deactivated")
	if ae.Active || ae.Status == nil || *ae.Status != "deactivated" {
		t.Fatalf("account event %+v", ae)
	}
	if a.AccountEvent(true, "").Status != nil {
		t.Fatal("active account event carries a status")
	}
}

func TestPLCResolvesThroughIdentity(t *testing.T) {
	env := newTestEnv(t)
	ctx := context.Background()
	a, err := NewAccount(K256, "carol.test", env.plc, env.pds)
	if err != nil {
		t.Fatal(err)
	}
	if d, err := syntax.ParseDID(a.DID); err != nil || d.Method() != "plc" || len(a.DID) != len("did:plc:")+24 {
		t.Fatalf("DID %q is not did:plc-shaped", a.DID)
	}
	ident, err := env.dir.LookupDID(ctx, syntax.DID(a.DID))
	if err != nil {
		t.Fatal(err)
	}
	if ident.PDSEndpoint() != env.pds.URL() {
		t.Fatalf("PDS endpoint %q, want %q", ident.PDSEndpoint(), env.pds.URL())
	}
	declared, err := ident.DeclaredHandle()
	if err != nil || declared.String() != "carol.test" {
		t.Fatalf("declared handle %q %v", declared, err)
	}
	pub, err := ident.PublicKey()
	if err != nil {
		t.Fatal(err)
	}
	if !pub.Equal(a.PublicKey()) {
		t.Fatal("resolved key differs from the account key")
	}

	// Unknown DIDs are 404, which identity reports as not found.
	_, err = env.dir.LookupDID(ctx, syntax.DID("did:plc:aaaaaaaaaaaaaaaaaaaaaaaa"))
	if !errors.Is(err, identity.ErrDIDNotFound) {
		t.Fatalf("unknown DID: %v", err)
	}

	// Key rotation: the document names the new key, and the next commit
	// verifies against it.
	if err := a.RotateKey(env.plc); err != nil {
		t.Fatal(err)
	}
	ident, err = env.dir.LookupDID(ctx, syntax.DID(a.DID))
	if err != nil {
		t.Fatal(err)
	}
	pub2, _ := ident.PublicKey()
	if pub2.Equal(pub) || !pub2.Equal(a.PublicKey()) {
		t.Fatal("rotation not visible in the PLC document")
	}
	msg, err := a.Commit(2)
	if err != nil {
		t.Fatal(err)
	}
	if err := repo.VerifyCommitSignature(ctx, env.dir, msg); err != nil {
		t.Fatalf("commit after rotation: %v", err)
	}

	// Migration: the document names the new PDS.
	other, err := StartPDS(PDSOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	a.MoveTo(env.plc, other)
	ident, err = env.dir.LookupDID(ctx, syntax.DID(a.DID))
	if err != nil {
		t.Fatal(err)
	}
	if ident.PDSEndpoint() != other.URL() || a.PDS() != other {
		t.Fatalf("after MoveTo endpoint %q", ident.PDSEndpoint())
	}
	if env.plc.Requests() < 4 {
		t.Fatalf("PLC counted %d requests", env.plc.Requests())
	}
}

func TestFaultBuilders(t *testing.T) {
	for _, kt := range []KeyType{K256, P256} {
		t.Run(kt.String(), func(t *testing.T) { testFaultBuilders(t, kt) })
	}
}

func testFaultBuilders(t *testing.T, kt KeyType) {
	env := newTestEnv(t)
	ctx := context.Background()
	a, err := NewAccount(kt, "mallory.test", env.plc, env.pds)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.StaleRevCommit(); !errors.Is(err, ErrNoCommit) {
		t.Fatalf("StaleRevCommit before a commit: %v", err)
	}
	good, err := a.Commit(4)
	if err != nil {
		t.Fatal(err)
	}
	headRev, headData := a.Rev(), *a.Data()

	bad, err := a.BadSignatureCommit()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := repo.VerifyCommitMessage(ctx, bad); err != nil {
		t.Fatalf("bad-signature commit should be otherwise valid: %v", err)
	}
	if err := repo.VerifyCommitSignature(ctx, env.dir, bad); err == nil {
		t.Fatal("bad-signature commit verified")
	}

	stale, err := a.StaleRevCommit()
	if err != nil {
		t.Fatal(err)
	}
	if stale.Rev >= good.Rev {
		t.Fatalf("stale rev %s not before %s", stale.Rev, good.Rev)
	}
	if err := repo.VerifyCommitSignature(ctx, env.dir, stale); err != nil {
		t.Fatalf("stale-rev commit signature: %v", err)
	}
	if _, err := repo.VerifyCommitMessage(ctx, stale); err != nil {
		t.Fatalf("stale-rev commit structure: %v", err)
	}

	future, err := a.FutureRevCommit()
	if err != nil {
		t.Fatal(err)
	}
	tid, err := syntax.ParseTID(future.Rev)
	if err != nil {
		t.Fatal(err)
	}
	if !tid.Time().After(time.Now().Add(FutureRevTolerance)) {
		t.Fatalf("future rev dated %s", tid.Time())
	}
	if err := repo.VerifyCommitSignature(ctx, env.dir, future); err != nil {
		t.Fatal(err)
	}

	many, err := a.TooManyOpsCommit()
	if err != nil {
		t.Fatal(err)
	}
	if len(many.Ops) != MaxCommitOps+1 {
		t.Fatalf("too-many-ops commit has %d ops", len(many.Ops))
	}
	if _, err := repo.VerifyCommitMessage(ctx, many); err != nil {
		t.Fatalf("too-many-ops commit should be otherwise valid: %v", err)
	}

	big, err := a.OversizedCommit()
	if err != nil {
		t.Fatal(err)
	}
	if len(big.Blocks) <= MaxBlocksBytes || len(big.Blocks) > 2<<20 || len(big.Ops) > MaxCommitOps {
		t.Fatalf("oversized commit: %d bytes of blocks, %d ops", len(big.Blocks), len(big.Ops))
	}
	frame, err := EncodeEvent(Event{Commit: big}, 1)
	if err != nil {
		t.Fatal(err)
	}
	if len(frame) >= 5_000_000 {
		t.Fatalf("oversized commit frame is %d bytes, over the frame limit", len(frame))
	}
	if _, _, err := DecodeEvent(frame); err != nil {
		t.Fatalf("oversized commit frame does not decode: %v", err)
	}
	if _, err := repo.VerifyCommitMessage(ctx, big); err != nil {
		t.Fatalf("oversized commit should be otherwise valid: %v", err)
	}

	broken, err := a.BrokenPrevDataCommit()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := repo.VerifyCommitMessage(ctx, broken); err == nil {
		t.Fatal("broken-prevData commit passed inversion")
	}
	if err := repo.VerifyCommitSignature(ctx, env.dir, broken); err != nil {
		t.Fatal(err)
	}

	// No fault advanced the account: the next commit chains from the good one.
	if a.Rev() != headRev || *a.Data() != headData {
		t.Fatal("a fault builder advanced the account")
	}
	next, err := a.Commit(2)
	if err != nil {
		t.Fatal(err)
	}
	if *next.Since != good.Rev || *(*cid.Cid)(next.PrevData) != headData {
		t.Fatalf("next commit does not chain from the last good one")
	}
	if _, err := repo.VerifyCommitMessage(ctx, next); err != nil {
		t.Fatal(err)
	}
}

func TestEncodeDecodeEvent(t *testing.T) {
	a, err := NewAccount(K256, "dave.test", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	c, err := a.Commit(3)
	if err != nil {
		t.Fatal(err)
	}
	c.Blobs = nil
	s, err := a.Sync()
	if err != nil {
		t.Fatal(err)
	}
	for i, ev := range []Event{{Commit: c}, {Sync: s}, {Identity: a.Identity()}, {Account: a.AccountEvent(true, "")}} {
		seq := int64(1000 + i)
		b, err := EncodeEvent(ev, seq)
		if err != nil {
			t.Fatal(err)
		}
		got, gotSeq, err := DecodeEvent(b)
		if err != nil {
			t.Fatal(err)
		}
		if gotSeq != seq || got.Type() != ev.Type() || got.DID() != a.DID || got.Rev() != ev.Rev() {
			t.Fatalf("round trip %s: seq %d type %s did %s", ev.Type(), gotSeq, got.Type(), got.DID())
		}
		sc, err := ScanFrame(b)
		if err != nil {
			t.Fatal(err)
		}
		if sc.Seq != seq || sc.Type != ev.Type() || string(sc.DID) != a.DID || string(sc.Rev) != ev.Rev() {
			t.Fatalf("scan %s: %+v", ev.Type(), sc)
		}
	}
	if c.Seq != 0 {
		t.Fatal("EncodeEvent modified its argument")
	}
	if _, err := EncodeEvent(Event{}, 1); !errors.Is(err, ErrEmptyEvent) {
		t.Fatalf("empty event: %v", err)
	}
	if _, err := EncodeEvent(Event{Commit: c, Sync: s}, 1); !errors.Is(err, ErrAmbiguousEvent) {
		t.Fatalf("two members: %v", err)
	}
	ef, err := EncodeErrorFrame("FutureCursor", "x")
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := DecodeEvent(ef); !errors.Is(err, ErrNotMessage) {
		t.Fatalf("error frame decoded as a message: %v", err)
	}
	sc, err := ScanFrame(ef)
	if err != nil || sc.Op != -1 || string(sc.Error) != "FutureCursor" {
		t.Fatalf("scan error frame: %+v %v", sc, err)
	}
}

func BenchmarkCommit(b *testing.B) {
	for _, tc := range []struct {
		name string
		kt   KeyType
		ops  int
	}{
		{name: "K256/1op", kt: K256, ops: 1},
		{name: "K256/3ops", kt: K256, ops: 3},
		{name: "P256/3ops", kt: P256, ops: 3},
		{name: "K256/50ops", kt: K256, ops: 50},
	} {
		b.Run(tc.name, func(b *testing.B) {
			a, err := NewAccount(tc.kt, "bench.test", nil, nil)
			if err != nil {
				b.Fatal(err)
			}
			// A repo of a few hundred records, as a typical account.
			for range 100 {
				if _, err := a.Commit(5); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				c, err := a.Commit(tc.ops)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := EncodeEvent(Event{Commit: c}, 1); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "commits/s")
		})
	}
}
