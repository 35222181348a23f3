package relay

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	comatproto "github.com/bluesky-social/indigo/api/atproto"
	"github.com/bluesky-social/indigo/atproto/atcrypto"
	"github.com/bluesky-social/indigo/atproto/repo"
	lexutil "github.com/bluesky-social/indigo/lex/util"
	"github.com/ipfs/go-cid"
	"github.com/ipld/go-car"
	carutil "github.com/ipld/go-car/util"
	"github.com/multiformats/go-multihash"

	"github.com/relay/relay/perf"
)

// referenceVerdict is what validator.Commit decided before it parsed the
// CAR once: repo.LoadCommitFromCAR and the signature, then
// repo.VerifyCommitMessage when prevData is set. It returns the drop
// reason, or "" for accepted.
func referenceVerdict(evt *comatproto.SyncSubscribeRepos_Commit, key atcrypto.PublicKey) string {
	ctx := context.Background()
	commit, _, err := repo.LoadCommitFromCAR(ctx, bytes.NewReader(evt.Blocks))
	if err != nil || commit.DID != evt.Repo || commit.Rev != evt.Rev {
		return "invalid_commit"
	}
	if err := commit.VerifySignature(key); err != nil {
		return "bad_signature"
	}
	if evt.PrevData != nil {
		if _, err := repo.VerifyCommitMessage(ctx, evt); err != nil {
			return "inversion_failed"
		}
	}
	return ""
}

// rebuildCAR re-encodes a commit's CAR keeping the blocks keep accepts.
func rebuildCAR(t *testing.T, blocks []byte, keep func(c cid.Cid) bool) []byte {
	t.Helper()
	cr, err := car.NewCarReader(bytes.NewReader(blocks))
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := car.WriteHeader(cr.Header, &out); err != nil {
		t.Fatal(err)
	}
	for {
		blk, err := cr.Next()
		if err != nil {
			break
		}
		if keep(blk.Cid()) {
			if err := carutil.LdWrite(&out, blk.Cid().Bytes(), blk.RawData()); err != nil {
				t.Fatal(err)
			}
		}
	}
	return out.Bytes()
}

func carCIDs(t *testing.T, blocks []byte) []cid.Cid {
	t.Helper()
	cr, err := car.NewCarReader(bytes.NewReader(blocks))
	if err != nil {
		t.Fatal(err)
	}
	var out []cid.Cid
	for {
		blk, err := cr.Next()
		if err != nil {
			return out
		}
		out = append(out, blk.Cid())
	}
}

// TestCommitMatchesIndigo checks that validator.Commit, which parses the
// CAR once, reaches the verdict (accepted, or the same drop reason) of
// indigo's two-parse path on valid commits of both key types and on
// broken variants of each: a wrong prevData, a left-out op, a wrong op CID,
// each block left out in turn, legacy ops without prev, a truncated CAR,
// a corrupted block, and another account's key.
func TestCommitMatchesIndigo(t *testing.T) {
	// indigo's path logs a line per legacy op and null prevData.
	prevLogger := slog.Default()
	slog.SetDefault(slog.New(slog.NewTextHandler(io.Discard, nil)))
	t.Cleanup(func() { slog.SetDefault(prevLogger) })
	v := validator{enforceInversion: true, lenient: true, now: time.Now}
	ctx := context.Background()
	other, err := cid.NewPrefixV1(cid.DagCBOR, multihash.SHA2_256).Sum([]byte("another tree"))
	if err != nil {
		t.Fatal(err)
	}
	stranger, err := perf.NewAccount(perf.K256, "stranger.test", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	cases, rejected := 0, 0
	check := func(name string, evt *comatproto.SyncSubscribeRepos_Commit, key atcrypto.PublicKey) {
		t.Helper()
		want := referenceVerdict(evt, key)
		got := ""
		if _, err := v.Commit(ctx, evt, key, nil); err != nil {
			got = dropReason(err)
		}
		if got != want {
			t.Errorf("%s: validator.Commit says %q, indigo's path %q", name, got, want)
		}
		cases++
		if want != "" {
			rejected++
		}
	}
	for _, kt := range []perf.KeyType{perf.K256, perf.P256} {
		a, err := perf.NewAccount(kt, "diff-"+kt.String()+".test", nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 40; i++ {
			evt, err := a.Commit(1 + i%5)
			if err != nil {
				t.Fatal(err)
			}
			name := fmt.Sprintf("%s commit %d", kt, i)
			key := a.PublicKey()
			check(name, evt, key)
			check(name+" signed by another key", evt, stranger.PublicKey())
			if evt.PrevData == nil {
				continue
			}
			mut := *evt
			pd := lexutil.LexLink(other)
			mut.PrevData = &pd
			check(name+" wrong prevData", &mut, key)
			if len(evt.Ops) > 1 {
				mut = *evt
				mut.Ops = evt.Ops[1:]
				check(name+" an op left out", &mut, key)
			}
			for j, op := range evt.Ops {
				mut = *evt
				mut.Ops = append([]*comatproto.SyncSubscribeRepos_RepoOp(nil), evt.Ops...)
				cp := *op
				if cp.Cid != nil {
					oc := lexutil.LexLink(other)
					cp.Cid = &oc
				} else {
					cp.Prev = nil // a legacy delete
				}
				mut.Ops[j] = &cp
				check(fmt.Sprintf("%s op %d changed", name, j), &mut, key)
				if cp.Prev != nil && op.Action == "update" {
					cp2 := *op
					cp2.Prev = nil // a legacy update
					mut.Ops[j] = &cp2
					check(fmt.Sprintf("%s op %d legacy update", name, j), &mut, key)
				}
			}
			for _, c := range carCIDs(t, evt.Blocks) {
				mut = *evt
				mut.Blocks = rebuildCAR(t, evt.Blocks, func(x cid.Cid) bool { return x != c })
				check(name+" block "+c.String()+" left out", &mut, key)
			}
			mut = *evt
			mut.Blocks = evt.Blocks[:len(evt.Blocks)-7]
			check(name+" truncated CAR", &mut, key)
			mut = *evt
			mut.Blocks = append([]byte(nil), evt.Blocks...)
			mut.Blocks[len(mut.Blocks)-3] ^= 0xff
			check(name+" last block corrupted", &mut, key)
		}
	}
	// Real captured commits (no keys: the inversion step alone).
	matches, err := filepath.Glob(filepath.Join(indigoDir(t), "atproto", "repo", "testdata", "firehose_commit_*.json"))
	if err != nil || len(matches) == 0 {
		t.Fatalf("no firehose_commit fixtures: %v", err)
	}
	for _, p := range matches {
		raw, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		var evt comatproto.SyncSubscribeRepos_Commit
		if err := json.Unmarshal(raw, &evt); err != nil {
			t.Fatal(err)
		}
		_, refErr := repo.VerifyCommitMessage(ctx, &evt)
		c, err := readCommitCAR(ctx, evt.Blocks)
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		var gotErr error = fmt.Errorf("prevData is null")
		if evt.PrevData != nil {
			gotErr = c.invert(ctx, &evt)
		} else if refErr == nil {
			gotErr = nil
		}
		if (refErr == nil) != (gotErr == nil) {
			t.Errorf("%s: inversion says %v, indigo %v", filepath.Base(p), gotErr, refErr)
		}
		cases++
	}
	if rejected < 100 || cases-rejected < 50 {
		t.Fatalf("%d cases, %d rejected: too few of one kind", cases, rejected)
	}
	t.Logf("%d cases, %d rejected by both", cases, rejected)
}
