package relay

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	comatproto "github.com/bluesky-social/indigo/api/atproto"
	"github.com/bluesky-social/indigo/atproto/atcrypto"
	"github.com/bluesky-social/indigo/atproto/repo"
	"github.com/bluesky-social/indigo/atproto/syntax"
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
func loadSignedCommit(ctx context.Context, blocks []byte, did, rev string, key atcrypto.PublicKey) (*repo.Commit, string, error) {
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
	if err := commit.VerifySignature(key); err != nil {
		return nil, "", &rejection{reason: "bad_signature", err: fmt.Errorf("%w: %w", ErrBadSignature, err)}
	}
	return commit, commitCID.String(), nil
}

// Commit validates a #commit. prev is the stored repo state (nil when the
// relay has none for the account).
func (v *validator) Commit(ctx context.Context, evt *comatproto.SyncSubscribeRepos_Commit, key atcrypto.PublicKey, prev *repoHead) (*verified, error) {
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
	commit, commitCID, err := loadSignedCommit(ctx, evt.Blocks, evt.Repo, evt.Rev, key)
	if err != nil {
		return nil, err
	}
	out := &verified{rev: evt.Rev, commitCID: commitCID, dataCID: commit.Data.String()}
	if evt.PrevData != nil {
		if prev != nil && prev.dataCID != "" && evt.PrevData.String() != prev.dataCID {
			out.prevDataMismatch = true
		}
		// VerifyCommitMessage checks the op CIDs against the MST in the
		// blocks and inverts the ops back to prevData. It is skipped when
		// prevData is null (nothing to invert to; it would only log).
		if _, err := repo.VerifyCommitMessage(ctx, evt); err != nil {
			if v.enforceInversion {
				return nil, reject("inversion_failed", "MST inversion: %w", err)
			}
			out.inversionErr = err
		}
	}
	return out, nil
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
func (v *validator) Sync(ctx context.Context, evt *comatproto.SyncSubscribeRepos_Sync, key atcrypto.PublicKey, prev *repoHead) (*verified, error) {
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
