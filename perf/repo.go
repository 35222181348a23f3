package perf

import (
	"context"
	"errors"
	"net/http"

	"github.com/bluesky-social/indigo/atproto/repo/mst"
	"github.com/ipfs/go-cid"
)

// ErrNoRepo: the account has not committed yet (getRepo answers
// RepoNotFound).
var ErrNoRepo = errors.New("perf: account has no repo yet")

// RepoCAR is a CAR of the account's current repo, as getRepo serves it:
// the signed commit (the root) and every MST node. The synthetic account
// does not keep record bodies (only their CIDs, in the MST), so record
// blocks are not in the CAR; the MST, which is what a reader walks to
// list the records, is complete.
func (a *Account) RepoCAR() ([]byte, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.rev == "" {
		return nil, ErrNoRepo
	}
	m := map[string]cid.Cid{}
	if err := a.tree.WriteToMap(m); err != nil {
		return nil, err
	}
	// A tree rebuilt from its keys has every node dirty, so WriteDiffBlocks
	// writes all of them; the root must be the one the commit signed.
	full, err := mst.LoadTreeFromMap(m)
	if err != nil {
		return nil, err
	}
	diff := newDiffBlocks()
	root, err := full.WriteDiffBlocks(context.Background(), diff)
	if err != nil {
		return nil, err
	}
	if a.data == nil || !root.Equals(*a.data) {
		return nil, errors.New("perf: rebuilt MST root differs from the commit's data")
	}
	blks := make([]carBlock, 0, 1+len(diff.list))
	blks = append(blks, carBlock{cid: a.head, data: a.headBlk})
	for _, b := range diff.list {
		blks = append(blks, carBlock{cid: b.Cid(), data: b.RawData()})
	}
	return writeCAR(a.head, blks)
}

// addRepo makes the account's repo served by getRepo on p.
func (p *PDS) addRepo(a *Account) { p.repos.Store(a.DID, a) }

// getRepo serves com.atproto.sync.getRepo?did= for accounts created on or
// moved to this PDS (and still here).
func (p *PDS) getRepo(w http.ResponseWriter, r *http.Request) {
	did := r.URL.Query().Get("did")
	v, ok := p.repos.Load(did)
	if !ok || v.(*Account).PDS() != p {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "RepoNotFound", "message": "no repo for " + did})
		return
	}
	car, err := v.(*Account).RepoCAR()
	if errors.Is(err, ErrNoRepo) {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "RepoNotFound", "message": err.Error()})
		return
	}
	if err != nil {
		writeJSON(w, http.StatusInternalServerError, map[string]string{"error": "InternalServerError", "message": err.Error()})
		return
	}
	w.Header().Set("Content-Type", "application/vnd.ipld.car")
	_, _ = w.Write(car)
}
