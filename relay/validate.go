package relay

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	comatproto "github.com/bluesky-social/indigo/api/atproto"
	"github.com/bluesky-social/indigo/atproto/repo"
	"github.com/bluesky-social/indigo/atproto/repo/mst"
	"github.com/bluesky-social/indigo/atproto/syntax"
	"github.com/ipfs/go-cid"
	"github.com/ipld/go-car"
)

// Protocol limits enforced on every event (the reference relay's values).
const (
	// MaxBlocksBytes bounds a #commit's or #sync's CAR blocks.
	MaxBlocksBytes = 2_000_000
	// MaxCommitOps bounds the ops of one #commit.
	MaxCommitOps = 200
	// FutureRevTolerance is how far a rev's timestamp may be ahead of now.
	FutureRevTolerance = 5 * time.Minute
)

// A rejection carries the drop reason label counted in
// relay_events_dropped_total.
type rejection struct {
	reason string
	err    error
}

func (r *rejection) Error() string { return r.reason + ": " + r.err.Error() }
func (r *rejection) Unwrap() error { return r.err }

func reject(reason string, format string, args ...any) error {
	return &rejection{reason: reason, err: fmt.Errorf(format, args...)}
}

// dropReason returns the label of a validation error.
func dropReason(err error) string {
	var rj *rejection
	if errors.As(err, &rj) {
		return rj.reason
	}
	return "invalid_commit"
}

// Validation errors worth telling apart.
var (
	ErrBadSignature = errors.New("relay: commit signature does not verify")
	ErrStaleRev     = errors.New("relay: rev not after the stored rev")
)

// validator checks #commit and #sync messages against an account's key and
// previous repo state. It holds no state of its own.
type validator struct {
	lenient          bool
	enforceInversion bool
	now              func() time.Time
}

// verified is the repo head an accepted message moves the account to.
type verified struct {
	rev       string
	commitCID string
	dataCID   string
	// inversionErr is set when the MST inversion check failed but was not
	// enforced; the caller counts it per host.
	inversionErr error
	// prevDataMismatch: prevData differs from the stored data CID (the
	// relay missed something): counted, as the reference relay does.
	prevDataMismatch bool
}

// checkRev enforces rev syntax, order against the stored rev, and the
// future tolerance.
func (v *validator) checkRev(rev, prevRev string) error {
	tid, err := syntax.ParseTID(rev)
	if err != nil {
		return reject("invalid_commit", "rev syntax: %w", err)
	}
	if prevRev != "" && rev <= prevRev {
		return &rejection{reason: "stale_rev", err: fmt.Errorf("%w: %s <= %s", ErrStaleRev, rev, prevRev)}
	}
	if tid.Time().After(v.now().Add(FutureRevTolerance)) {
		return reject("future_rev", "rev %s is %s in the future", rev, tid.Time().Sub(v.now()).Round(time.Second))
	}
	return nil
}

// loadSignedCommit reads the commit object from CAR blocks and verifies its
// structure and signature, and that it belongs to did at rev.
func loadSignedCommit(ctx context.Context, blocks []byte, did, rev string, key commitKey) (*repo.Commit, string, error) {
	commit, commitCID, err := repo.LoadCommitFromCAR(ctx, bytes.NewReader(blocks))
	if err != nil {
		return nil, "", reject("invalid_commit", "load commit from CAR: %w", err)
	}
	if commit.DID != did {
		return nil, "", reject("invalid_commit", "commit DID %s does not match event %s", commit.DID, did)
	}
	if commit.Rev != rev {
		return nil, "", reject("invalid_commit", "commit rev %s does not match event %s", commit.Rev, rev)
	}
	if err := verifyCommitSignature(commit, key); err != nil {
		return nil, "", &rejection{reason: "bad_signature", err: fmt.Errorf("%w: %w", ErrBadSignature, err)}
	}
	return commit, commitCID.String(), nil
}

// Commit validates a #commit. prev is the stored repo state (nil when the
// relay has none for the account).
//
// The CAR is parsed once (commitCAR): the signature, the structure and the
// MST inversion all run over the same decoded blocks. The checks and their
// drop reasons are those of repo.LoadCommitFromCAR followed by
// repo.VerifyCommitMessage (TestCommitMatchesIndigo compares them).
func (v *validator) Commit(ctx context.Context, evt *comatproto.SyncSubscribeRepos_Commit, key commitKey, prev *repoHead) (*verified, error) {
	if len(evt.Blocks) > MaxBlocksBytes {
		return nil, reject("blocks_too_big", "blocks are %d bytes, limit %d", len(evt.Blocks), MaxBlocksBytes)
	}
	if len(evt.Ops) > MaxCommitOps {
		return nil, reject("too_many_ops", "%d ops, limit %d", len(evt.Ops), MaxCommitOps)
	}
	prevRev := ""
	if prev != nil {
		prevRev = prev.rev
	}
	if err := v.checkRev(evt.Rev, prevRev); err != nil {
		return nil, err
	}
	if !v.lenient {
		if len(evt.Blocks) == 0 {
			return nil, reject("invalid_commit", "commit has no blocks")
		}
		if evt.TooBig {
			return nil, reject("invalid_commit", "deprecated tooBig flag set")
		}
		if evt.Rebase {
			return nil, reject("invalid_commit", "deprecated rebase flag set")
		}
		if evt.PrevData == nil && prev != nil {
			return nil, reject("invalid_commit", "missing prevData")
		}
	}
	if _, err := syntax.ParseDatetime(evt.Time); err != nil {
		return nil, reject("invalid_commit", "time syntax: %w", err)
	}
	car, err := readCommitCAR(ctx, evt.Blocks)
	if err != nil {
		return nil, reject("invalid_commit", "load commit from CAR: %w", err)
	}
	commit := &car.commit
	if err := checkSignedCommit(commit, evt.Repo, evt.Rev, key); err != nil {
		return nil, err
	}
	out := &verified{rev: evt.Rev, commitCID: car.commitCID.String(), dataCID: commit.Data.String()}
	if evt.PrevData != nil {
		if prev != nil && prev.dataCID != "" && evt.PrevData.String() != prev.dataCID {
			out.prevDataMismatch = true
		}
		// The op CIDs must be in the MST of the blocks, and inverting the
		// ops must lead back to prevData. Skipped when prevData is null
		// (nothing to invert to).
		if err := car.invert(ctx, evt); err != nil {
			if v.enforceInversion {
				return nil, reject("inversion_failed", "MST inversion: %w", err)
			}
			out.inversionErr = err
		}
	}
	return out, nil
}

// commitCAR is a #commit's CAR, parsed once: every block (hash-checked by
// go-car), the root commit CID and the decoded commit object.
type commitCAR struct {
	blocks    *repo.TinyBlockstore
	commitCID cid.Cid
	commit    repo.Commit
	// tailErr is a CAR error met after the commit block: the signature
	// check does not need those blocks (repo.LoadCommitFromCAR stops at the
	// commit), the inversion does and fails with it.
	tailErr error
}

// readCommitCAR parses blocks with go-car, keeps every block and decodes
// and structure-checks the commit object named by the CAR root.
func readCommitCAR(ctx context.Context, blocks []byte) (*commitCAR, error) {
	cr, err := car.NewCarReader(bytes.NewReader(blocks))
	if err != nil {
		return nil, err
	}
	if cr.Header.Version != 1 {
		return nil, fmt.Errorf("unsupported CAR file version: %d", cr.Header.Version)
	}
	if len(cr.Header.Roots) < 1 {
		return nil, repo.ErrNoRoot
	}
	out := &commitCAR{blocks: repo.NewTinyBlockstore(), commitCID: cr.Header.Roots[0]}
	var commitBlock []byte
	for {
		blk, err := cr.Next()
		if err != nil {
			if err == io.EOF {
				break
			}
			if commitBlock == nil {
				return nil, err
			}
			out.tailErr = err
			break
		}
		if commitBlock == nil && blk.Cid().Equals(out.commitCID) {
			commitBlock = blk.RawData()
		}
		if err := out.blocks.Put(ctx, blk); err != nil {
			return nil, err
		}
	}
	if commitBlock == nil {
		return nil, repo.ErrNoCommit
	}
	if err := out.commit.UnmarshalCBOR(bytes.NewReader(commitBlock)); err != nil {
		return nil, fmt.Errorf("parsing commit block from CAR file: %w", err)
	}
	if err := out.commit.VerifyStructure(); err != nil {
		return nil, fmt.Errorf("parsing commit block from CAR file: %w", err)
	}
	return out, nil
}

// invert checks the message's ops against the MST in the CAR and inverts
// them, which must yield prevData: the checks of repo.VerifyCommitMessage
// after its CAR load, over the blocks already parsed. The tree is loaded
// for this call only, so it is inverted in place (no copy).
func (c *commitCAR) invert(ctx context.Context, msg *comatproto.SyncSubscribeRepos_Commit) error {
	if c.tailErr != nil {
		return c.tailErr
	}
	tree, err := mst.LoadTreeFromStore(ctx, c.blocks, c.commit.Data)
	if err != nil {
		return fmt.Errorf("reading MST from CAR file: %w", err)
	}
	for _, op := range msg.Ops {
		if (op.Action == "create" || op.Action == "update") && op.Cid != nil {
			if _, _, err := syntax.ParseRepoPath(op.Path); err != nil {
				return fmt.Errorf("invalid repo path in ops list: %w", err)
			}
			val, err := tree.Get([]byte(op.Path))
			if err != nil {
				return err
			}
			if val == nil {
				return repo.ErrNotFound
			}
			// The record block itself must be in the CAR.
			if _, err := c.blocks.Get(ctx, *val); err != nil {
				return err
			}
			if cid.Cid(*op.Cid) != *val {
				return fmt.Errorf("record op doesn't match MST tree value")
			}
		}
	}
	for _, o := range msg.Ops {
		if (o.Action == "delete" || o.Action == "update") && o.Prev == nil {
			// A legacy op cannot be inverted: repo.VerifyCommitMessage
			// accepts the commit without the root check.
			return nil
		}
	}
	ops, err := commitOps(msg.Ops)
	if err != nil {
		return err
	}
	if ops, err = repo.NormalizeOps(ops); err != nil {
		return err
	}
	for i := range ops {
		if err := repo.InvertOp(tree, &ops[i]); err != nil {
			return err
		}
	}
	computed, err := tree.RootCID()
	if err != nil {
		return err
	}
	if *computed != cid.Cid(*msg.PrevData) {
		return fmt.Errorf("inverted tree root didn't match prevData")
	}
	return nil
}

// commitOps converts firehose ops to repo operations, with the shape rules
// of indigo's (unexported) parseCommitOps.
func commitOps(in []*comatproto.SyncSubscribeRepos_RepoOp) ([]repo.Operation, error) {
	out := make([]repo.Operation, 0, len(in))
	for _, rop := range in {
		switch rop.Action {
		case "create":
			if rop.Cid == nil || rop.Prev != nil {
				return nil, fmt.Errorf("invalid repoOp: create")
			}
			out = append(out, repo.Operation{Path: rop.Path, Value: (*cid.Cid)(rop.Cid)})
		case "delete":
			if rop.Cid != nil || rop.Prev == nil {
				return nil, fmt.Errorf("invalid repoOp: delete")
			}
			out = append(out, repo.Operation{Path: rop.Path, Prev: (*cid.Cid)(rop.Prev)})
		case "update":
			if rop.Cid == nil || rop.Prev == nil {
				return nil, fmt.Errorf("invalid repoOp: update")
			}
			out = append(out, repo.Operation{Path: rop.Path, Prev: (*cid.Cid)(rop.Prev), Value: (*cid.Cid)(rop.Cid)})
		default:
			return nil, fmt.Errorf("invalid repoOp action: %s", rop.Action)
		}
	}
	return out, nil
}

// checkSignedCommit checks that a decoded commit belongs to did at rev and
// that its signature verifies with key.
func checkSignedCommit(commit *repo.Commit, did, rev string, key commitKey) error {
	if commit.DID != did {
		return reject("invalid_commit", "commit DID %s does not match event %s", commit.DID, did)
	}
	if commit.Rev != rev {
		return reject("invalid_commit", "commit rev %s does not match event %s", commit.Rev, rev)
	}
	if err := verifyCommitSignature(commit, key); err != nil {
		return &rejection{reason: "bad_signature", err: fmt.Errorf("%w: %w", ErrBadSignature, err)}
	}
	return nil
}

// verifyCommitSignature is repo.Commit.VerifySignature with a commitKey.
func verifyCommitSignature(commit *repo.Commit, key commitKey) error {
	if commit.Sig == nil {
		return fmt.Errorf("can not verify unsigned commit")
	}
	b, err := commit.UnsignedBytes()
	if err != nil {
		return err
	}
	return key.HashAndVerify(b, commit.Sig)
}

// Sync validates a #sync: size, signature, DID and rev.
//
// The rev rule differs from a #commit's. A #sync whose rev is newer than the
// stored head moves the head. One whose rev equals the stored head and whose
// signed commit is the stored head commit re-announces the current state (a
// real PDS sends it after account creation and on reactivation): it is
// relayed unchanged and the head stays as it is (the returned head is the
// stored one). An older rev is dropped as "stale_rev"; an equal rev naming
// a different commit (the PDS rewrote history under the same rev) is dropped
// as "sync_rev_conflict". The signature is checked before an equal-rev
// comparison, so a forged re-announcement is a "bad_signature".
func (v *validator) Sync(ctx context.Context, evt *comatproto.SyncSubscribeRepos_Sync, key commitKey, prev *repoHead) (*verified, error) {
	if len(evt.Blocks) > MaxBlocksBytes {
		return nil, reject("blocks_too_big", "blocks are %d bytes, limit %d", len(evt.Blocks), MaxBlocksBytes)
	}
	prevRev := ""
	if prev != nil {
		prevRev = prev.rev
	}
	sameRev := prevRev != "" && evt.Rev == prevRev
	if sameRev {
		// Syntax and future tolerance still apply; order is checked below
		// against the commit.
		if err := v.checkRev(evt.Rev, ""); err != nil {
			return nil, err
		}
	} else if err := v.checkRev(evt.Rev, prevRev); err != nil {
		return nil, err
	}
	commit, commitCID, err := loadSignedCommit(ctx, evt.Blocks, evt.Did, evt.Rev, key)
	if err != nil {
		return nil, err
	}
	if sameRev {
		if prev.commitCID == "" || commitCID != prev.commitCID {
			return nil, reject("sync_rev_conflict", "#sync at the stored rev %s names commit %s, stored head is %q", evt.Rev, commitCID, prev.commitCID)
		}
		return &verified{rev: prev.rev, commitCID: prev.commitCID, dataCID: prev.dataCID}, nil
	}
	return &verified{rev: evt.Rev, commitCID: commitCID, dataCID: commit.Data.String()}, nil
}
