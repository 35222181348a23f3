package relay

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	comatproto "github.com/bluesky-social/indigo/api/atproto"
	"github.com/bluesky-social/indigo/api/bsky"
	"github.com/bluesky-social/indigo/atproto/atcrypto"
	"github.com/bluesky-social/indigo/atproto/repo"
	"github.com/bluesky-social/indigo/atproto/repo/mst"
	"github.com/bluesky-social/indigo/atproto/syntax"
	lexutil "github.com/bluesky-social/indigo/lex/util"
	"github.com/ipfs/go-cid"
	"github.com/ipfs/go-datastore"
	blockstore "github.com/ipfs/go-ipfs-blockstore"
	"github.com/ipld/go-car"
	carutil "github.com/ipld/go-car/util"
	"github.com/multiformats/go-multihash"
)

// commitProofFixture is one entry of indigo's
// atproto/repo/testdata/commit-proof-fixtures.json (the atproto interop
// MST commit-proof fixtures).
type commitProofFixture struct {
	Comment    string   `json:"comment"`
	LeafValue  string   `json:"leafValue"`
	Keys       []string `json:"keys"`
	Adds       []string `json:"adds"`
	Dels       []string `json:"dels"`
	RootBefore string   `json:"rootBeforeCommit"`
	RootAfter  string   `json:"rootAfterCommit"`
	InProof    []string `json:"blocksInProof"`
}

// proofOp is one record operation of a test commit: value nil is a
// delete, prev nil a create.
type proofOp struct {
	path        string
	value, prev *cid.Cid
}

// proofCommit is a signed #commit built from an MST and a list of ops,
// with its pieces kept so that tests can break them one at a time.
type proofCommit struct {
	key      atcrypto.PrivateKey
	did, rev string
	ops      []proofOp
	prevData cid.Cid
	data     cid.Cid
	mstBlks  map[cid.Cid][]byte // MST nodes written by the commit
	records  map[cid.Cid][]byte // record blocks of creates
}

// message encodes the commit as a firehose #commit; skip names an MST
// block to leave out of the CAR.
func (pc *proofCommit) message(t *testing.T, prevData cid.Cid, ops []proofOp, skip *cid.Cid) *comatproto.SyncSubscribeRepos_Commit {
	t.Helper()
	sc := repo.Commit{DID: pc.did, Version: repo.ATPROTO_REPO_VERSION, Data: pc.data, Rev: pc.rev}
	if err := sc.Sign(pc.key); err != nil {
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
	if err := writeProofCAR(&car, commitCID, cb.Bytes(), pc.mstBlks, pc.records, skip); err != nil {
		t.Fatal(err)
	}
	evt := &comatproto.SyncSubscribeRepos_Commit{
		Repo: pc.did, Rev: pc.rev, Time: syntax.DatetimeNow().String(),
		Commit: lexutil.LexLink(commitCID), Blocks: car.Bytes(),
		PrevData: (*lexutil.LexLink)(&prevData), Blobs: []lexutil.LexLink{},
	}
	for _, op := range ops {
		rop := &comatproto.SyncSubscribeRepos_RepoOp{Path: op.path, Action: "create"}
		switch {
		case op.value == nil:
			rop.Action = "delete"
		case op.prev != nil:
			rop.Action = "update"
		}
		rop.Cid = (*lexutil.LexLink)(op.value)
		rop.Prev = (*lexutil.LexLink)(op.prev)
		evt.Ops = append(evt.Ops, rop)
	}
	return evt
}

func writeProofCAR(w *bytes.Buffer, root cid.Cid, commit []byte, mstBlks, records map[cid.Cid][]byte, skip *cid.Cid) error {
	if err := car.WriteHeader(&car.CarHeader{Roots: []cid.Cid{root}, Version: 1}, w); err != nil {
		return err
	}
	if err := carutil.LdWrite(w, root.Bytes(), commit); err != nil {
		return err
	}
	for _, set := range []map[cid.Cid][]byte{mstBlks, records} {
		keys := make([]cid.Cid, 0, len(set))
		for c := range set {
			keys = append(keys, c)
		}
		sort.Slice(keys, func(i, j int) bool { return keys[i].KeyString() < keys[j].KeyString() })
		for _, c := range keys {
			if skip != nil && c == *skip {
				continue
			}
			if err := carutil.LdWrite(w, c.Bytes(), set[c]); err != nil {
				return err
			}
		}
	}
	return nil
}

// buildProofCommit starts from the tree of before (path -> value), applies
// ops, and signs a commit whose blocks are the MST nodes the change wrote
// (the proof) plus the records of creates. It checks the tree's root
// against wantBefore and wantAfter when they are set.
func buildProofCommit(t *testing.T, before map[string]cid.Cid, ops []proofOp, records map[cid.Cid][]byte, wantBefore, wantAfter string) *proofCommit {
	t.Helper()
	tree, err := mst.LoadTreeFromMap(before)
	if err != nil {
		t.Fatal(err)
	}
	root, err := tree.RootCID() // also marks the tree clean
	if err != nil {
		t.Fatal(err)
	}
	if wantBefore != "" && root.String() != wantBefore {
		t.Fatalf("tree before the commit: root %s, fixture says %s", root, wantBefore)
	}
	for _, op := range ops {
		if _, err := repo.ApplyOp(tree, op.path, op.value); err != nil {
			t.Fatalf("apply %s: %v", op.path, err)
		}
	}
	ctx := context.Background()
	//lint:ignore SA1019 indigo's MST writes into this blockstore interface (boxo is not in the module graph)
	bs := blockstore.NewBlockstore(datastore.NewMapDatastore())
	after, err := tree.WriteDiffBlocks(ctx, bs)
	if err != nil {
		t.Fatal(err)
	}
	if wantAfter != "" && after.String() != wantAfter {
		t.Fatalf("tree after the commit: root %s, fixture says %s", after, wantAfter)
	}
	key, err := atcrypto.GeneratePrivateKeyK256()
	if err != nil {
		t.Fatal(err)
	}
	pc := &proofCommit{
		key: key, did: "did:plc:proofproofproofproofproof", rev: syntax.NewTIDNow(0).String(),
		ops: ops, prevData: *root, data: *after, mstBlks: map[cid.Cid][]byte{}, records: records,
	}
	keys, err := bs.AllKeysChan(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for c := range keys {
		blk, err := bs.Get(ctx, c)
		if err != nil {
			t.Fatal(err)
		}
		// The blockstore keys blocks by multihash and lists them as raw
		// CIDs; MST nodes are dag-cbor.
		pc.mstBlks[cid.NewCidV1(cid.DagCBOR, c.Hash())] = blk.RawData()
	}
	return pc
}

// recordBlock is a real post record: the fixtures' leaf value is a
// placeholder CID whose block does not exist, and a create's record must
// be in the commit's blocks.
func recordBlock(t *testing.T) (cid.Cid, []byte) {
	t.Helper()
	var b bytes.Buffer
	post := bsky.FeedPost{LexiconTypeID: "app.bsky.feed.post", Text: "commit proof", CreatedAt: "2025-05-01T00:00:00.000Z"}
	if err := post.MarshalCBOR(&b); err != nil {
		t.Fatal(err)
	}
	c, err := cid.NewPrefixV1(cid.DagCBOR, multihash.SHA2_256).Sum(b.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	return c, b.Bytes()
}

// The interop commit-proof fixtures through validator.Commit's inversion
// path (repo.VerifyCommitMessage): valid proofs pass, and each way of
// breaking one (wrong prevData, a missing or extra op, a wrong prev CID, a
// proof block left out) is refused as inversion_failed.
//
// What can run through the validator, and why not all of it:
//   - Every fixture is first checked at the MST level, as indigo's own
//     test does: the before and after roots and the proof blocks match.
//   - Forward (the fixture's own commit): only "split with earlier leaves
//     on same layer". The others add keys like "D2/269196", which are not
//     repo paths (the collection is not an NSID), and VerifyCommitMessage
//     refuses creates on such paths before inverting. The added record's
//     value is replaced by a real record block (the fixture's leafValue is
//     a placeholder CID with no block, and a create's record must be in
//     the blocks); the MST shape depends on keys only, and the inverted
//     root must still equal the fixture's rootBeforeCommit exactly.
//   - Reverse (the commit that undoes the fixture: deletes of its adds):
//     every fixture without deletions. Deletes need no record block and
//     no repo-path parse, and both roots are the fixture's, exactly. The
//     two multi-op fixtures delete keys, so their reverse creates keys
//     that are not repo paths: they are covered at the MST level only.
func TestCommitProofFixturesThroughValidator(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join(indigoDir(t), "atproto", "repo", "testdata", "commit-proof-fixtures.json"))
	if err != nil {
		t.Fatal(err)
	}
	var fixtures []commitProofFixture
	if err := json.Unmarshal(raw, &fixtures); err != nil {
		t.Fatal(err)
	}
	if len(fixtures) == 0 {
		t.Fatal("no fixtures")
	}
	recCID, recBytes := recordBlock(t)
	ran := 0
	for _, f := range fixtures {
		t.Run(f.Comment, func(t *testing.T) {
			leaf, err := cid.Decode(f.LeafValue)
			if err != nil {
				t.Fatal(err)
			}
			before := map[string]cid.Cid{}
			for _, k := range f.Keys {
				before[k] = leaf
			}
			var fwd []proofOp
			for _, k := range f.Adds {
				fwd = append(fwd, proofOp{path: k, value: &leaf})
			}
			for _, k := range f.Dels {
				fwd = append(fwd, proofOp{path: k, prev: &leaf})
			}
			// MST level, exactly as the fixture states it.
			pc := buildProofCommit(t, before, fwd, nil, f.RootBefore, f.RootAfter)
			for _, s := range f.InProof {
				c, err := cid.Decode(s)
				if err != nil {
					t.Fatal(err)
				}
				if _, ok := pc.mstBlks[c]; !ok {
					t.Errorf("proof block %s is not among the blocks the commit wrote", s)
				}
			}

			ops := make([]proofOp, 0, len(fwd))
			for _, k := range f.Adds {
				ops = append(ops, proofOp{path: k, value: &recCID})
			}
			for _, k := range f.Dels {
				ops = append(ops, proofOp{path: k, prev: &leaf})
			}
			fwdCommit := buildProofCommit(t, before, ops, map[cid.Cid][]byte{recCID: recBytes}, f.RootBefore, "")
			if allRepoPaths(f.Adds) {
				t.Run("forward", func(t *testing.T) { checkProof(t, fwdCommit) })
				ran++
			} else {
				// Why the forward commit cannot be used: if this starts to
				// pass, indigo accepts such paths and the test should run it.
				pub, _ := fwdCommit.key.PublicKey()
				v := validator{enforceInversion: true, now: time.Now}
				_, err := v.Commit(context.Background(), fwdCommit.message(t, fwdCommit.prevData, ops, nil), pub, nil)
				if err == nil || !strings.Contains(err.Error(), "invalid repo path") {
					t.Errorf("forward commit creating non-repo paths: got %v, want the invalid repo path refusal", err)
				}
			}
			if len(f.Dels) == 0 {
				after := map[string]cid.Cid{}
				for k, v := range before {
					after[k] = v
				}
				var rev []proofOp
				for _, k := range f.Adds {
					after[k] = leaf
					rev = append(rev, proofOp{path: k, prev: &leaf})
				}
				pc := buildProofCommit(t, after, rev, nil, f.RootAfter, f.RootBefore)
				t.Run("reverse", func(t *testing.T) { checkProof(t, pc) })
				ran++
			}
		})
	}
	if ran < 5 {
		t.Fatalf("only %d fixture commits ran through the validator, want at least 5", ran)
	}
}

// allRepoPaths reports whether every path is collection/rkey with an NSID
// collection, as VerifyCommitMessage requires of creates.
func allRepoPaths(paths []string) bool {
	for _, p := range paths {
		if _, _, err := syntax.ParseRepoPath(p); err != nil {
			return false
		}
	}
	return true
}

// checkProof runs the valid commit and its broken variants through
// validator.Commit.
func checkProof(t *testing.T, pc *proofCommit) {
	ctx := context.Background()
	pub, err := pc.key.PublicKey()
	if err != nil {
		t.Fatal(err)
	}
	v := validator{enforceInversion: true, now: time.Now}
	res, err := v.Commit(ctx, pc.message(t, pc.prevData, pc.ops, nil), pub, nil)
	if err != nil {
		t.Fatalf("valid proof refused: %v", err)
	}
	if res.dataCID != pc.data.String() || res.inversionErr != nil {
		t.Fatalf("valid proof: data %s inversionErr %v, want data %s", res.dataCID, res.inversionErr, pc.data)
	}

	refused := func(what string, evt *comatproto.SyncSubscribeRepos_Commit) {
		t.Helper()
		_, err := v.Commit(ctx, evt, pub, nil)
		if err == nil || dropReason(err) != "inversion_failed" {
			t.Errorf("%s: got %v, want an inversion_failed refusal", what, err)
		}
		lax := validator{enforceInversion: false, now: time.Now}
		res, err := lax.Commit(ctx, evt, pub, nil)
		if err != nil || res.inversionErr == nil {
			t.Errorf("%s with inversion not enforced: err %v, inversionErr %v; want accepted and the failure reported", what, err, res)
		}
	}
	refused("prevData is the new root", pc.message(t, pc.data, pc.ops, nil))
	other, err := cid.NewPrefixV1(cid.DagCBOR, multihash.SHA2_256).Sum([]byte("another tree"))
	if err != nil {
		t.Fatal(err)
	}
	refused("prevData is another tree", pc.message(t, other, pc.ops, nil))
	if len(pc.ops) > 0 {
		refused("an op left out", pc.message(t, pc.prevData, pc.ops[1:], nil))
	}
	extra := append(append([]proofOp(nil), pc.ops...), proofOp{path: "app.bsky.feed.like/3lzzzzzzzzzz2", prev: &other})
	refused("an op that did not happen", pc.message(t, pc.prevData, extra, nil))
	for i, op := range pc.ops {
		if op.value == nil {
			wrong := append([]proofOp(nil), pc.ops...)
			wrong[i].prev = &other
			refused("a delete with the wrong prev CID", pc.message(t, pc.prevData, wrong, nil))
			break
		}
	}
	// Every MST block the commit wrote is needed: leaving any out makes
	// the tree unloadable or the inversion incomplete.
	for c := range pc.mstBlks {
		refused("proof block "+c.String()+" left out", pc.message(t, pc.prevData, pc.ops, &c))
	}
}
