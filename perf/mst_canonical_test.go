package perf

import (
	"context"
	"testing"

	"github.com/bluesky-social/indigo/atproto/repo"
	"github.com/bluesky-social/indigo/atproto/repo/mst"
)

// TestCommitsKeepCanonicalTree checks that after every commit the account's
// data root is the root of a tree built from scratch from its records, and
// that every commit inverts to its prevData. Young repos are where it
// fails: a tree emptied by deletes once kept a stale root height, and about
// one account in 60 then produced a commit no relay could invert.
func TestCommitsKeepCanonicalTree(t *testing.T) {
	const (
		accounts = 600
		commits  = 6
	)
	ctx := context.Background()
	for k := range accounts {
		kt := K256
		if k%4 == 0 {
			kt = P256
		}
		a, err := NewAccount(kt, "canon.test", nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		for i := range commits {
			c, err := a.Commit(1 + i%2)
			if err != nil {
				t.Fatal(err)
			}
			if c.PrevData != nil {
				if _, err := repo.VerifyCommitMessage(ctx, c); err != nil {
					for _, op := range c.Ops {
						t.Logf("op %s %s h=%d", op.Action, op.Path, mst.HeightForKey([]byte(op.Path)))
					}
					for _, r := range a.records {
						t.Logf("now %s h=%d", r.path, mst.HeightForKey([]byte(r.path)))
					}
					mst.DebugPrintTree(a.tree.Root, 0)
					t.Fatalf("account %d commit %d: %v", k, i, err)
				}
			}
			fresh := mst.NewEmptyTree()
			for _, r := range a.records {
				v := r.cid
				if _, err := repo.ApplyOp(&fresh, r.path, &v); err != nil {
					t.Fatal(err)
				}
			}
			if a.profile != nil {
				if _, err := repo.ApplyOp(&fresh, collProfile+"/self", a.profile); err != nil {
					t.Fatal(err)
				}
			}
			root, err := fresh.RootCID()
			if err != nil {
				t.Fatal(err)
			}
			if *root != *a.data {
				t.Fatalf("account %d after commit %d: data %s, canonical %s", k, i, a.data, root)
			}
		}
	}
}
