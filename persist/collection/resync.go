package collection

import (
	"encoding/json"
	"sort"
)

// BeginResync registers a resync of did: from now until FinishResync or
// AbortResync, the ops Apply applies to did are remembered (bounded by
// MaxInflightDeltas) so that a snapshot older than them loses nothing.
// Fetch the snapshot only after BeginResync returns.
func (ix *Index) BeginResync(did string) error {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	if ix.closed.Load() {
		return ErrClosed
	}
	if len(ix.inflight) >= MaxInflight || ix.inflight[did] != nil {
		return ErrBusy
	}
	f := &inflight{}
	v, ok, err := getCopy(ix.db, didKey(did))
	if err != nil {
		return err
	}
	if ok {
		st, err := decodeDID(v)
		if err != nil {
			return err
		}
		f.startRev = st.rev
	}
	ix.inflight[did] = f
	return nil
}

// AbortResync forgets a resync in flight (the DID stays owed one).
func (ix *Index) AbortResync(did string) {
	ix.mu.Lock()
	delete(ix.inflight, did)
	ix.mu.Unlock()
}

// FinishResync replaces did's counts with a snapshot of its repo at rev
// (records per collection), plus the creates and deletes applied since
// BeginResync with a rev above the snapshot's. Counts become exact, the
// DID's rev becomes max(rev, its current rev), and its resync marker is
// cleared, in one batch.
//
// ErrStale: the snapshot is older than what the index applied before
// the resync began, or than a #sync seen during it; ErrOverflow: too
// many ops during the resync; ErrRemoved: the account was taken down or
// deleted meanwhile. In each case nothing is written and the DID stays
// owed a resync (except ErrRemoved: nothing is owed).
func (ix *Index) FinishResync(did string, counts map[string]int64, rev string) error {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	if ix.closed.Load() {
		return ErrClosed
	}
	f := ix.inflight[did]
	if f == nil {
		return ErrNoResync
	}
	delete(ix.inflight, did)
	switch {
	case f.overflow:
		return ErrOverflow
	case rev < f.startRev || rev < f.maxSyncRev:
		return ErrStale
	}
	a := ix.newApplier()
	defer a.b.Close()
	st, err := a.did(did)
	if err != nil {
		return err
	}
	ns := didState{status: statusActive, rev: rev}
	if st != nil {
		if st.status == statusRemoved {
			return ErrRemoved
		}
		ns.status = st.status
		if st.rev > rev {
			ns.rev = st.rev
		}
	}
	ns.flags = didBorn
	final := make(map[string]int64, len(counts))
	for c, n := range counts {
		if n > 0 && validColl(c) {
			final[c] = n
		}
	}
	for _, d := range f.deltas {
		if d.rev > rev {
			final[d.coll] += int64(d.d)
		}
	}
	// Drop what the DID had, then write the snapshot.
	if st != nil {
		if err := a.remove(did, st, false); err != nil {
			return err
		}
	}
	if err := a.putDID(did, ns); err != nil {
		return err
	}
	nst := a.dids[did]
	colls := make([]string, 0, len(final))
	for c := range final {
		colls = append(colls, c)
	}
	sort.Strings(colls)
	for _, c := range colls {
		n := final[c]
		if n <= 0 {
			continue
		}
		cc, err := a.count(did, c)
		if err != nil {
			return err
		}
		if err := a.setCount(did, c, nst, cc, countVal{n: n}, true); err != nil {
			return err
		}
	}
	if err := a.clearOwed(did); err != nil {
		return err
	}
	return a.commit()
}

// MarkResync records that did is owed a resync (admin). It returns
// false if the index holds nothing for did and create is false.
func (ix *Index) MarkResync(did, reason string, create bool) (bool, error) {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	if ix.closed.Load() {
		return false, ErrClosed
	}
	a := ix.newApplier()
	defer a.b.Close()
	st, err := a.did(did)
	if err != nil {
		return false, err
	}
	if st == nil {
		if !create {
			return false, nil
		}
		if err := a.putDID(did, didState{status: statusActive}); err != nil {
			return false, err
		}
	} else if st.status == statusRemoved {
		return false, nil
	}
	if err := a.owe(did, reason); err != nil {
		return false, err
	}
	return true, a.commit()
}

// DropResync clears did's resync marker without changing its counts
// (the resync cannot succeed: the repo is gone, or the account has no
// PDS). The counts stay as they are.
func (ix *Index) DropResync(did string) error {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	if ix.closed.Load() {
		return ErrClosed
	}
	a := ix.newApplier()
	defer a.b.Close()
	if err := a.clearOwed(did); err != nil {
		return err
	}
	return a.commit()
}

// RemoveDID deletes everything the index holds for did (the cleaner, or
// a resync that found the repo gone).
func (ix *Index) RemoveDID(did string) (bool, error) {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	if ix.closed.Load() {
		return false, ErrClosed
	}
	a := ix.newApplier()
	defer a.b.Close()
	st, err := a.did(did)
	if err != nil || st == nil {
		return false, err
	}
	if err := a.remove(did, st, false); err != nil {
		return false, err
	}
	return true, a.commit()
}

// BackfillProgress is a backfill's state, stored in the index.
type BackfillProgress struct {
	Source      string   `json:"source"`
	Collections []string `json:"collections"`
	// Next is the index in Collections being paged, Cursor the source's
	// cursor within it ("" = its start).
	Next   int    `json:"next"`
	Cursor string `json:"cursor,omitempty"`
	Added  int64  `json:"added"` // (collection, did) pairs added
	Pages  int64  `json:"pages"`
	State  string `json:"state"` // running, done, cancelled, failed
	Error  string `json:"error,omitempty"`
}

// Backfill returns the stored backfill progress (ok=false if none).
func (ix *Index) Backfill() (BackfillProgress, bool, error) {
	v, ok, err := ix.getMeta(keyBackfill)
	if err != nil || !ok {
		return BackfillProgress{}, ok, err
	}
	var p BackfillProgress
	return p, true, json.Unmarshal(v, &p)
}

// SaveBackfill stores progress alone.
func (ix *Index) SaveBackfill(p BackfillProgress) error {
	return ix.AddBackfilled("", nil, p)
}

// AddBackfilled adds dids as holders of coll, from a backfill, and stores
// the progress p in the same batch (so a resumed backfill neither skips
// nor re-counts a page). A DID the index knows keeps its counts; a new
// DID gets an unknown count (lower bound 1: the source listed it) and is
// owed a resync; a removed DID is skipped.
func (ix *Index) AddBackfilled(coll string, dids []string, p BackfillProgress) error {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	if ix.closed.Load() {
		return ErrClosed
	}
	a := ix.newApplier()
	defer a.b.Close()
	if coll != "" && validColl(coll) {
		for _, did := range dids {
			if did == "" {
				continue
			}
			st, err := a.did(did)
			if err != nil {
				return err
			}
			if st == nil {
				if err := a.putDID(did, didState{status: statusActive, flags: didBackfilled}); err != nil {
					return err
				}
				if err := a.owe(did, ReasonBackfill); err != nil {
					return err
				}
				st = a.dids[did]
			} else if st.status == statusRemoved {
				continue
			}
			cc, err := a.count(did, coll)
			if err != nil {
				return err
			}
			if cc.exists {
				continue
			}
			if st.flags&didBorn != 0 {
				// The index saw this repo from its first commit (or a
				// resync): its own count of zero is exact.
				continue
			}
			if err := a.setCount(did, coll, st, cc, countVal{n: 1, unknown: true}, true); err != nil {
				return err
			}
		}
	}
	b, err := json.Marshal(p)
	if err != nil {
		return err
	}
	if err := a.b.Set(keyBackfill, b, nil); err != nil {
		return err
	}
	return a.commit()
}
