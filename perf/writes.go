package perf

import (
	"bytes"
	"context"
	"fmt"

	comatproto "github.com/bluesky-social/indigo/api/atproto"
	"github.com/bluesky-social/indigo/api/bsky"
	"github.com/bluesky-social/indigo/atproto/repo"
	lexutil "github.com/bluesky-social/indigo/lex/util"
	"github.com/ipfs/go-cid"
)

// Write is one chosen repo write for CommitWrites.
type Write struct {
	Action     string // "create", "update" or "delete"
	Collection string
	RKey       string
}

// CommitWrites builds a signed sync-1.1 #commit of exactly these writes
// (any collections: tests of the collection index) and advances the
// account to it. A create of an existing path, or an update or delete of
// a missing one, is an error. Like Commit, the result must not empty the
// repo (keep one record).
func (a *Account) CommitWrites(ws []Write) (*comatproto.SyncSubscribeRepos_Commit, error) {
	if len(ws) < 1 {
		return nil, ErrOpCount
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	tree := a.tree.Copy()
	now := nowDatetime()
	ops := make([]*comatproto.SyncSubscribeRepos_RepoOp, 0, len(ws))
	var recBlocks []carBlock
	live := map[string]cid.Cid{}
	for _, r := range a.records {
		live[r.path] = r.cid
	}
	for i, w := range ws {
		path := w.Collection + "/" + w.RKey
		_, exists := live[path]
		switch w.Action {
		case "delete":
			if !exists {
				return nil, fmt.Errorf("perf: delete of missing %s", path)
			}
			op, err := repo.ApplyOp(&tree, path, nil)
			if err != nil {
				return nil, err
			}
			delete(live, path)
			ops = append(ops, &comatproto.SyncSubscribeRepos_RepoOp{Action: "delete", Path: path, Prev: (*lexutil.LexLink)(op.Prev)})
		case "create", "update":
			if exists != (w.Action == "update") {
				return nil, fmt.Errorf("perf: %s of %s (exists=%v)", w.Action, path, exists)
			}
			rec := bsky.FeedPost{LexiconTypeID: w.Collection, Text: fmt.Sprintf("%s %d %s", a.clock.Next(), i, w.Action), CreatedAt: now}
			var buf bytes.Buffer
			if err := rec.MarshalCBOR(&buf); err != nil {
				return nil, err
			}
			c, err := cborCIDPrefix.Sum(buf.Bytes())
			if err != nil {
				return nil, err
			}
			op, err := repo.ApplyOp(&tree, path, &c)
			if err != nil {
				return nil, err
			}
			live[path] = c
			rop := &comatproto.SyncSubscribeRepos_RepoOp{Action: w.Action, Path: path, Cid: (*lexutil.LexLink)(&c)}
			if op.Prev != nil {
				rop.Prev = (*lexutil.LexLink)(op.Prev)
			}
			ops = append(ops, rop)
			recBlocks = append(recBlocks, carBlock{cid: c, data: buf.Bytes()})
		default:
			return nil, fmt.Errorf("perf: action %q", w.Action)
		}
	}
	diff := newDiffBlocks()
	root, err := tree.WriteDiffBlocks(context.Background(), diff)
	if err != nil {
		return nil, err
	}
	rev := a.clock.Next().String()
	commit := repo.Commit{DID: a.DID, Version: repo.ATPROTO_REPO_VERSION, Data: *root, Rev: rev}
	if err := commit.Sign(a.key); err != nil {
		return nil, err
	}
	var cb bytes.Buffer
	if err := commit.MarshalCBOR(&cb); err != nil {
		return nil, err
	}
	commitCID, err := cborCIDPrefix.Sum(cb.Bytes())
	if err != nil {
		return nil, err
	}
	blks := []carBlock{{cid: commitCID, data: cb.Bytes()}}
	for _, b := range diff.list {
		blks = append(blks, carBlock{cid: b.Cid(), data: b.RawData()})
	}
	blks = append(blks, recBlocks...)
	car, err := writeCAR(commitCID, blks)
	if err != nil {
		return nil, err
	}
	msg := &comatproto.SyncSubscribeRepos_Commit{
		Repo: a.DID, Rev: rev, Commit: lexutil.LexLink(commitCID), Blocks: car,
		Ops: ops, Blobs: []lexutil.LexLink{}, Time: now,
	}
	if a.rev != "" {
		since := a.rev
		msg.Since = &since
		msg.PrevData = (*lexutil.LexLink)(a.data)
	}
	a.tree = tree
	a.rev, a.data, a.head, a.headBlk = rev, root, commitCID, cb.Bytes()
	a.records = a.records[:0]
	for p, c := range live {
		a.records = append(a.records, recordRef{path: p, cid: c})
	}
	return msg, nil
}
