package collection

import (
	"errors"
	"strings"

	"github.com/cockroachdb/pebble"
)

// Kind is the kind of a Change (the event it comes from).
type Kind uint8

const (
	// KindCommit: a #commit's ops.
	KindCommit Kind = iota + 1
	// KindSync: a #sync (the repo may have changed in ways no op shows).
	KindSync
	// KindAccount: an #account status change.
	KindAccount
)

// Action is a commit op's action.
type Action uint8

const (
	Create Action = iota + 1
	Update
	Delete
)

// Op is the part of a commit op the index needs.
type Op struct {
	Action     Action
	Collection string
}

// Change is one event log record, reduced to what the index needs.
type Change struct {
	Kind Kind
	DID  string
	Rev  string // #commit, #sync
	// First: a #commit whose since is null (the repo's first commit), so
	// every count of the DID starts known at zero.
	First bool
	Ops   []Op
	// #account
	Active bool
	Status string
}

// Resync reasons (the marker values and the metric labels).
const (
	ReasonSync        = "sync"         // a #sync moved the repo to a new rev
	ReasonUnknownZero = "unknown_zero" // a delete would take an unknown count to zero
	ReasonInconsist   = "inconsistent" // an op contradicts an exact count
	ReasonReactivated = "reactivated"  // an account removed before is active again
	ReasonBackfill    = "backfill"     // a DID from a backfill
	ReasonAdmin       = "admin"
)

// Result reports what Apply decided besides the index changes.
type Result struct {
	// Resync lists DIDs newly owed a resync (their markers are durable
	// in the same batch).
	Resync []string
	// Reasons[i] is why Resync[i] is owed.
	Reasons []string
}

// delta is one applied op remembered for a resync in flight.
type delta struct {
	rev  string
	coll string
	d    int8
}

type inflight struct {
	startRev   string
	maxSyncRev string
	deltas     []delta
	overflow   bool
}

// applier stages one batch. Caches are write-through (every change is in
// the batch at once); they only spare Gets. They are bounded by the
// batch, which the caller bounds.
type applier struct {
	ix        *Index
	b         *pebble.Batch // indexed: reads see its writes
	dids      map[string]*didState
	counts    map[string]*cachedCount
	colls     map[string]int64 // current listing size of touched collections
	collsOrig map[string]int64
	entries   int64
	pending   int64
	res       Result
	deltas    map[string][]delta // for DIDs with a resync in flight
}

type cachedCount struct {
	c      countVal
	exists bool
}

func (ix *Index) newApplier() *applier {
	return &applier{
		ix:        ix,
		b:         ix.db.NewIndexedBatch(),
		dids:      map[string]*didState{},
		counts:    map[string]*cachedCount{},
		colls:     map[string]int64{},
		collsOrig: map[string]int64{},
	}
}

// Apply applies changes, the records of the event log through seq
// through (records that produced no change included), in one atomic
// batch with the checkpoint. Records at or below the checkpoint must not
// be passed again (the follower reads from Applied()).
func (ix *Index) Apply(changes []Change, through int64) (Result, error) {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	if ix.closed.Load() {
		return Result{}, ErrClosed
	}
	a := ix.newApplier()
	defer a.b.Close()
	for i := range changes {
		if err := a.change(&changes[i]); err != nil {
			return Result{}, err
		}
	}
	if through > ix.applied.Load() {
		if err := a.b.Set(keyApplied, encodeInt(through), nil); err != nil {
			return Result{}, err
		}
	}
	if err := a.commit(); err != nil {
		return Result{}, err
	}
	if through > ix.applied.Load() {
		ix.applied.Store(through)
	}
	ix.signal()
	return a.res, nil
}

// commit writes the totals and commits the batch, then publishes the
// totals and the deltas of resyncs in flight. Caller holds ix.mu.
func (a *applier) commit() error {
	ix := a.ix
	collections := ix.collections.Load()
	for c, n := range a.colls {
		o := a.collsOrig[c]
		if n == o {
			continue
		}
		if o == 0 && n > 0 {
			collections++
		} else if o > 0 && n == 0 {
			collections--
		}
		var err error
		if n == 0 {
			err = a.b.Delete(collKey(c), nil)
		} else {
			err = a.b.Set(collKey(c), encodeInt(n), nil)
		}
		if err != nil {
			return err
		}
	}
	entries := ix.entries.Load() + a.entries
	pending := ix.pending.Load() + a.pending
	for _, kv := range []struct {
		k []byte
		v int64
	}{{keyEntries, entries}, {keyCollections, collections}, {keyPending, pending}} {
		if err := a.b.Set(kv.k, encodeInt(kv.v), nil); err != nil {
			return err
		}
	}
	if err := a.b.Commit(pebble.NoSync); err != nil {
		ix.hot.reset() // the staged values are not the DB's
		return err
	}
	ix.hot.merge(a)
	ix.entries.Store(entries)
	ix.collections.Store(collections)
	ix.pending.Store(pending)
	for did, ds := range a.deltas {
		f := ix.inflight[did]
		if f == nil || f.overflow {
			continue
		}
		if len(f.deltas)+len(ds) > MaxInflightDeltas {
			f.overflow, f.deltas = true, nil
			continue
		}
		f.deltas = append(f.deltas, ds...)
	}
	return nil
}

func (a *applier) did(did string) (*didState, error) {
	if s, ok := a.dids[did]; ok {
		return s, nil
	}
	if e, ok := a.ix.hot.dids[did]; ok {
		var s *didState
		if e.ok {
			st := e.st
			s = &st
		}
		a.dids[did] = s
		return s, nil
	}
	v, ok, err := getCopy(a.b, didKey(did))
	if err != nil {
		return nil, err
	}
	var s *didState
	if ok {
		st, err := decodeDID(v)
		if err != nil {
			return nil, err
		}
		s = &st
	}
	a.dids[did] = s
	return s, nil
}

func (a *applier) putDID(did string, s didState) error {
	a.dids[did] = &s
	return a.b.Set(didKey(did), encodeDID(s), nil)
}

func (a *applier) count(did, coll string) (*cachedCount, error) {
	k := string(countKey(did, coll))
	if c, ok := a.counts[k]; ok {
		return c, nil
	}
	if c, ok := a.ix.hot.counts[k]; ok {
		cc := c
		a.counts[k] = &cc
		return &cc, nil
	}
	v, ok, err := getCopy(a.b, []byte(k))
	if err != nil {
		return nil, err
	}
	cc := &cachedCount{exists: ok}
	if ok {
		if cc.c, err = decodeCount(v); err != nil {
			return nil, err
		}
	}
	a.counts[k] = cc
	return cc, nil
}

func (a *applier) collSize(coll string) (int64, error) {
	if n, ok := a.colls[coll]; ok {
		return n, nil
	}
	if n, ok := a.ix.hot.colls[coll]; ok {
		a.colls[coll], a.collsOrig[coll] = n, n
		return n, nil
	}
	n, err := getInt(a.b, collKey(coll))
	if err != nil {
		return 0, err
	}
	a.colls[coll], a.collsOrig[coll] = n, n
	return n, nil
}

// listed adds or removes the listing key (collection, did) and keeps the
// totals.
func (a *applier) listed(coll, did string, on bool) error {
	n, err := a.collSize(coll)
	if err != nil {
		return err
	}
	if on {
		a.colls[coll] = n + 1
		a.entries++
		return a.b.Set(listKey(coll, did), nil, nil)
	}
	a.colls[coll] = n - 1
	a.entries--
	return a.b.Delete(listKey(coll, did), nil)
}

// setCount writes a count; exists=false deletes it. Listing follows.
func (a *applier) setCount(did, coll string, st *didState, cc *cachedCount, nc countVal, exists bool) error {
	was := cc.exists
	k := countKey(did, coll)
	var err error
	if exists {
		err = a.b.Set(k, encodeCount(nc), nil)
	} else {
		err = a.b.Delete(k, nil)
	}
	if err != nil {
		return err
	}
	cc.c, cc.exists = nc, exists
	if st.status == statusActive && was != exists {
		return a.listed(coll, did, exists)
	}
	return nil
}

// owe writes a resync marker for did (kept if one exists).
func (a *applier) owe(did, reason string) error {
	_, ok, err := getCopy(a.b, resyncKey(did))
	if err != nil || ok {
		return err
	}
	a.pending++
	a.res.Resync = append(a.res.Resync, did)
	a.res.Reasons = append(a.res.Reasons, reason)
	return a.b.Set(resyncKey(did), []byte(reason), nil)
}

func (a *applier) clearOwed(did string) error {
	_, ok, err := getCopy(a.b, resyncKey(did))
	if err != nil || !ok {
		return err
	}
	a.pending--
	return a.b.Delete(resyncKey(did), nil)
}

// forEachCount visits the DID's counts as staged (DB plus batch).
func (a *applier) forEachCount(did string, fn func(coll string) error) error {
	p := countPrefix(did)
	it, err := a.b.NewIter(&pebble.IterOptions{LowerBound: p, UpperBound: prefixEnd(p)})
	if err != nil {
		return err
	}
	var colls []string
	for ok := it.First(); ok; ok = it.Next() {
		colls = append(colls, string(it.Key()[len(p):]))
	}
	err = errors.Join(it.Error(), it.Close())
	if err != nil {
		return err
	}
	for _, c := range colls {
		if err := fn(c); err != nil {
			return err
		}
	}
	return nil
}

func (a *applier) change(c *Change) error {
	if c.DID == "" {
		return nil
	}
	switch c.Kind {
	case KindCommit:
		return a.commitOps(c)
	case KindSync:
		return a.sync(c)
	case KindAccount:
		return a.account(c)
	}
	return nil
}

func (a *applier) commitOps(c *Change) error {
	st, err := a.did(c.DID)
	if err != nil {
		return err
	}
	if st == nil {
		ns := didState{status: statusActive, rev: c.Rev}
		if c.First {
			ns.flags = didBorn
		}
		st = &ns
	} else {
		if st.status == statusRemoved || c.Rev <= st.rev {
			return nil // a removed account's commit, or at or below a resync snapshot
		}
		cp := *st
		cp.rev = c.Rev
		cp.flags &^= didBackfilled
		st = &cp
	}
	if err := a.putDID(c.DID, *st); err != nil {
		return err
	}
	st = a.dids[c.DID]
	born := st.flags&didBorn != 0
	_, tracking := a.ix.inflight[c.DID]
	for _, op := range c.Ops {
		if !validColl(op.Collection) {
			continue
		}
		cc, err := a.count(c.DID, op.Collection)
		if err != nil {
			return err
		}
		cur := cc.c
		var d int8
		switch op.Action {
		case Create:
			d = 1
			if !cc.exists {
				err = a.setCount(c.DID, op.Collection, st, cc, countVal{n: 1, unknown: !born}, true)
			} else {
				err = a.setCount(c.DID, op.Collection, st, cc, countVal{n: cur.n + 1, unknown: cur.unknown}, true)
			}
		case Update:
			// An update proves the record exists: the count is at least 1.
			switch {
			case !cc.exists && born:
				err = a.inconsistent(c.DID, op.Collection, st, cc, 1)
			case !cc.exists:
				err = a.setCount(c.DID, op.Collection, st, cc, countVal{n: 1, unknown: true}, true)
			case cur.n < 1:
				err = a.setCount(c.DID, op.Collection, st, cc, countVal{n: 1, unknown: cur.unknown}, true)
			}
		case Delete:
			d = -1
			switch {
			case !cc.exists && born:
				err = a.inconsistent(c.DID, op.Collection, st, cc, 0)
			case !cc.exists || (cur.unknown && cur.n <= 1):
				// Unknown baseline reaching zero: keep it listed, owe a resync.
				if err = a.setCount(c.DID, op.Collection, st, cc, countVal{n: 0, unknown: true}, true); err == nil {
					err = a.owe(c.DID, ReasonUnknownZero)
				}
			case cur.n <= 1:
				err = a.setCount(c.DID, op.Collection, st, cc, countVal{}, false) // last record deleted
			default:
				err = a.setCount(c.DID, op.Collection, st, cc, countVal{n: cur.n - 1, unknown: cur.unknown}, true)
			}
		}
		if err != nil {
			return err
		}
		if tracking && d != 0 {
			if a.deltas == nil {
				a.deltas = map[string][]delta{}
			}
			a.deltas[c.DID] = append(a.deltas[c.DID], delta{rev: c.Rev, coll: op.Collection, d: d})
		}
	}
	return nil
}

// inconsistent handles an op that contradicts an exact count (possible
// only with lenient validation): the count becomes unknown with lower
// bound n and a resync is owed.
func (a *applier) inconsistent(did, coll string, st *didState, cc *cachedCount, n int64) error {
	if err := a.setCount(did, coll, st, cc, countVal{n: n, unknown: true}, true); err != nil {
		return err
	}
	return a.owe(did, ReasonInconsist)
}

func (a *applier) sync(c *Change) error {
	st, err := a.did(c.DID)
	if err != nil {
		return err
	}
	if st == nil {
		if err := a.putDID(c.DID, didState{status: statusActive, rev: c.Rev}); err != nil {
			return err
		}
		return a.owe(c.DID, ReasonSync)
	}
	if st.status == statusRemoved || c.Rev <= st.rev {
		return nil // equal rev: the PDS's announcement of its current head
	}
	if f := a.ix.inflight[c.DID]; f != nil && c.Rev > f.maxSyncRev {
		f.maxSyncRev = c.Rev
	}
	ns := *st
	ns.rev = c.Rev
	ns.flags &^= didBorn | didBackfilled
	if err := a.putDID(c.DID, ns); err != nil {
		return err
	}
	nst := a.dids[c.DID]
	// The repo may have changed in ways no op showed: every count is now
	// a lower bound until the resync.
	err = a.forEachCount(c.DID, func(coll string) error {
		cc, err := a.count(c.DID, coll)
		if err != nil || !cc.exists || cc.c.unknown {
			return err
		}
		return a.setCount(c.DID, coll, nst, cc, countVal{n: cc.c.n, unknown: true}, true)
	})
	if err != nil {
		return err
	}
	return a.owe(c.DID, ReasonSync)
}

// account applies an #account status: takendown and deleted remove the
// DID from every collection; other inactive statuses hide it (counts
// kept); active lists it again.
func (a *applier) account(c *Change) error {
	st, err := a.did(c.DID)
	if err != nil || st == nil {
		return err // nothing indexed for it
	}
	switch {
	case c.Active:
		switch st.status {
		case statusActive:
			return nil
		case statusHidden:
			return a.setStatus(c.DID, st, statusActive)
		default: // removed: nothing is known of its records any more
			ns := *st
			ns.status, ns.flags = statusActive, 0
			if err := a.putDID(c.DID, ns); err != nil {
				return err
			}
			return a.owe(c.DID, ReasonReactivated)
		}
	case c.Status == "takendown" || c.Status == "deleted":
		return a.remove(c.DID, st, true)
	default:
		if st.status == statusActive {
			return a.setStatus(c.DID, st, statusHidden)
		}
		return nil
	}
}

// setStatus moves a DID between active (listed) and hidden.
func (a *applier) setStatus(did string, st *didState, status byte) error {
	ns := *st
	ns.status = status
	err := a.forEachCount(did, func(coll string) error {
		return a.listed(coll, did, status == statusActive)
	})
	if err != nil {
		return err
	}
	return a.putDID(did, ns)
}

// remove deletes the DID's counts, listing and marker; tombstone keeps a
// removed state (so a later reactivation is known to need a resync),
// else the DID's state goes too.
func (a *applier) remove(did string, st *didState, tombstone bool) error {
	err := a.forEachCount(did, func(coll string) error {
		cc, err := a.count(did, coll)
		if err != nil {
			return err
		}
		return a.setCount(did, coll, st, cc, countVal{}, false)
	})
	if err != nil {
		return err
	}
	if err := a.clearOwed(did); err != nil {
		return err
	}
	if !tombstone {
		a.dids[did] = nil
		return a.b.Delete(didKey(did), nil)
	}
	ns := *st
	ns.status, ns.flags = statusRemoved, 0
	return a.putDID(did, ns)
}

// validColl accepts what can be a collection NSID in a key: non-empty,
// bounded, no separator byte. (The relay validated the commit; this
// only protects the key layout.)
func validColl(s string) bool {
	return s != "" && len(s) <= 317 && strings.IndexByte(s, 0) < 0
}

// CollectionOf returns the collection of a repo path "collection/rkey".
func CollectionOf(path string) string {
	i := strings.IndexByte(path, '/')
	if i <= 0 {
		return ""
	}
	return path[:i]
}

// hotCacheMax bounds the entries of the hot cache (each map); when a
// merge would pass it the cache is emptied and refills from the DB. At
// about 100 bytes an entry this is ~25 MB per map at most.
const hotCacheMax = 1 << 18

// hotCache holds committed values of recently touched keys, so the
// follower's reads of hot accounts and collections skip Pebble. It only
// ever holds what the DB holds (merged after a successful commit).
type hotCache struct {
	counts map[string]cachedCount
	dids   map[string]hotDID
	colls  map[string]int64
}

type hotDID struct {
	st didState
	ok bool
}

func (h *hotCache) reset() {
	h.counts = make(map[string]cachedCount)
	h.dids = make(map[string]hotDID)
	h.colls = make(map[string]int64)
}

func (h *hotCache) merge(a *applier) {
	if len(h.counts)+len(a.counts) > hotCacheMax || len(h.dids)+len(a.dids) > hotCacheMax || len(h.colls)+len(a.colls) > hotCacheMax {
		h.reset()
	}
	for k, v := range a.counts {
		h.counts[k] = *v
	}
	for k, v := range a.dids {
		if v == nil {
			h.dids[k] = hotDID{}
		} else {
			h.dids[k] = hotDID{st: *v, ok: true}
		}
	}
	for k, v := range a.colls {
		h.colls[k] = v
	}
}
