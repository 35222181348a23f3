package relay

import (
	"github.com/bluesky-social/indigo/atproto/syntax"

	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"math"
	"sync"
	"sync/atomic"
	"time"

	comatproto "github.com/bluesky-social/indigo/api/atproto"
	"github.com/hashicorp/golang-lru/v2/simplelru"
	cbg "github.com/whyrusleeping/cbor-gen"

	"github.com/relay/relay/persist/meta"
)

// Ingest limits.
const (
	// partitionQueue bounds events waiting for one validation worker. When
	// full, the event loop pauses the host that sent the event.
	partitionQueue = 1024
	// accountEntryBytes and identityEntryBytes are the heap one cached
	// account (with its repo head) and one cached identity (with a parsed
	// key) take, map entry included: 380 and 460-470 bytes measured by
	// BenchmarkCacheEntryBytes, rounded up. They turn Config.CacheBytes
	// into each partition's entry bounds; when a cache is full the least recently used
	// entry is evicted (reloaded on demand; an account with events in
	// flight is not evicted).
	accountEntryBytes  = 400
	identityEntryBytes = 512
	// accountCacheSize and identityCacheSize are the bounds of a partition
	// made without them (benchmarks): DefaultCacheBytes over two workers.
	accountCacheSize  = DefaultCacheBytes / 2 / 2 / accountEntryBytes
	identityCacheSize = DefaultCacheBytes / 2 / 2 / identityEntryBytes
	// storeTimeout bounds one store call of a validation worker. A store
	// that does not answer in time is an error like any other: the event
	// is held and retried by the sweep (counted), never dropped.
	storeTimeout = 5 * time.Second
	// retrySweep is how often a partition retries resolutions the resolver
	// queue refused, and events held after a store error.
	retrySweep = 200 * time.Millisecond
)

var errShutdown = errors.New("relay: shutting down")

// ingestItem is one decoded upstream event on its way through validation.
type ingestItem struct {
	host *hostConn
	useq int64 // upstream seq
	did  string
	recv time.Time

	commit   *comatproto.SyncSubscribeRepos_Commit
	sync     *comatproto.SyncSubscribeRepos_Sync
	identity *comatproto.SyncSubscribeRepos_Identity
	account  *comatproto.SyncSubscribeRepos_Account

	// reresolved: the identity was already refreshed once for this item
	// (after a signature failure or a host mismatch); it is not refreshed
	// again.
	// rechecked: the account's status was already re-checked with its
	// host for this item (recheck.go).
	rechecked  bool
	reresolved bool
	// fn, when set, is a command run on the partition (admin actions that
	// touch account state) instead of an event.
	fn func(p *partition)
}

func (it *ingestItem) typ() string {
	switch {
	case it.commit != nil:
		return "#commit"
	case it.sync != nil:
		return "#sync"
	case it.identity != nil:
		return "#identity"
	case it.account != nil:
		return "#account"
	}
	return ""
}

// repoHead is an account's last accepted repo state.
type repoHead struct {
	rev       string
	commitCID string
	dataCID   string
}

// accountState is a partition's cached view of one account.
type accountState struct {
	acct meta.Account
	head *repoHead // nil: no commit accepted yet
	// inflight counts the account's events submitted and not yet durable:
	// such an account is not evicted, since the store and the overlay do
	// not know its head yet.
	inflight atomic.Int32
}

// Ingester runs the validation workers. Events are partitioned by DID, so
// one account's events are processed in order by one worker, which owns
// that account's cached state without locks.
type Ingester struct {
	store    meta.Store
	derived  *derivedState
	resolver *Resolver
	submit   func(context.Context, Outgoing) error
	hostByID func(id uint64) *hostConn
	metrics  *Metrics
	v        validator
	// checker re-checks an upstream-inactive account with its host (nil:
	// no re-checks).
	checker *statusChecker

	partitions []*partition
	seed       maphash.Seed
	logger     *slog.Logger
	// lastIngest is when an event last became durable (unix nanos; 0:
	// never), for the readiness probe's stall check.
	lastIngest atomic.Int64

	stop chan struct{} // stops the workers
	wg   sync.WaitGroup
	// storeTimeout is storeTimeout; tests shorten it.
	storeTimeout time.Duration
}

// partition is one validation worker and the state it owns.
type partition struct {
	ing      *Ingester
	in       chan *ingestItem
	resolved chan *identInfo

	// idents evicts by itself (golang-lru); accounts is unbounded for the
	// LRU and bounded by cacheAccount, which may refuse to evict an
	// account with events in flight (an eviction callback cannot refuse).
	idents   *simplelru.LRU[string, *identInfo]
	accounts *simplelru.LRU[string, *accountState]
	// pending holds events of DIDs whose identity is being resolved (or
	// that are stalled), in arrival order; unsent lists DIDs the resolver
	// queue refused; stalled lists DIDs whose first pending event hit a
	// store error and is retried by the sweep.
	//
	// Pending events are bounded per host, not per DID: each is in its
	// host's in-flight budget (maxInflightPerHost), and a host past it is
	// paused at its socket.
	pending map[string][]*ingestItem
	unsent  map[string]bool
	stalled map[string]bool
	// rechecked receives status re-check answers; checked remembers
	// recent re-checks (recheck.go).
	rechecked chan statusResult
	checked   *simplelru.LRU[string, time.Time]
	// maxAccounts and maxIdents bound the caches (0: the defaults).
	maxAccounts, maxIdents int
}

// cacheBounds splits a byte budget over workers partitions: half for
// accounts, half for identities, in entries.
func cacheBounds(budget int64, workers int) (accounts, idents int) {
	if budget <= 0 {
		budget = DefaultCacheBytes
	}
	share := budget / 2 / int64(workers)
	return max(int(share/accountEntryBytes), 1), max(int(share/identityEntryBytes), 1)
}

func (p *partition) accountBound() int {
	if p.maxAccounts > 0 {
		return p.maxAccounts
	}
	return accountCacheSize
}

func (p *partition) identBound() int {
	if p.maxIdents > 0 {
		return p.maxIdents
	}
	return identityCacheSize
}

// ingestDeps is everything the ingester touches.
type ingestDeps struct {
	store    meta.Store    // accounts and repo heads
	derived  *derivedState // durable changes not yet checkpointed
	resolver *Resolver     // identities
	// submit hands an accepted event to the sequencer.
	submit func(context.Context, Outgoing) error
	// hostByID is a host's live record (a migration moves one account
	// count off the old host).
	hostByID func(id uint64) *hostConn
	// checker re-checks upstream-inactive accounts (nil: none).
	checker *statusChecker
	metrics *Metrics
	logger  *slog.Logger
	// cacheBytes bounds the account and identity caches (RELAY_CACHE_MB).
	cacheBytes int64
	// lenient and enforceInversion are the validation policy.
	lenient, enforceInversion bool
	workers                   int
}

func newIngester(d ingestDeps) *Ingester {
	workers := max(d.workers, 1)
	ing := &Ingester{
		store: d.store, derived: d.derived, resolver: d.resolver, submit: d.submit, hostByID: d.hostByID, checker: d.checker,
		metrics: d.metrics, seed: maphash.MakeSeed(),
		logger: d.logger,
		v:      validator{lenient: d.lenient, enforceInversion: d.enforceInversion, now: time.Now},
		stop:   make(chan struct{}),

		storeTimeout: storeTimeout,
	}
	maxAccounts, maxIdents := cacheBounds(d.cacheBytes, workers)
	for range workers {
		p := &partition{
			maxAccounts: maxAccounts, maxIdents: maxIdents,
			ing: ing, in: make(chan *ingestItem, partitionQueue),
			resolved: make(chan *identInfo, partitionQueue),
			idents:   newIdentCache(maxIdents), accounts: newAccountCache(),
			pending: map[string][]*ingestItem{}, unsent: map[string]bool{}, stalled: map[string]bool{},
			rechecked: make(chan statusResult, statusCheckWorkers), checked: newCheckedCache(),
		}
		ing.partitions = append(ing.partitions, p)
		ing.wg.Add(1)
		go p.run()
	}
	return ing
}

// newIdentCache is a partition's identity cache: size entries (its share
// of RELAY_CACHE_MB), least recently used evicted.
func newIdentCache(size int) *simplelru.LRU[string, *identInfo] {
	c, _ := simplelru.NewLRU[string, *identInfo](max(size, 1), nil) // errs only for size <= 0
	return c
}

// newAccountCache is a partition's account cache, in LRU order; its bound
// (accountBound) is kept by cacheAccount, which never evicts an
// account with events in flight.
func newAccountCache() *simplelru.LRU[string, *accountState] {
	c, _ := simplelru.NewLRU[string, *accountState](math.MaxInt, nil)
	return c
}

// partitionOf returns the worker that owns did.
func (ing *Ingester) partitionOf(did string) *partition {
	return ing.partitions[maphash.String(ing.seed, did)%uint64(len(ing.partitions))]
}

// offer hands it to this worker without blocking; false means the worker
// is full and the caller must pause the host.
func (p *partition) offer(it *ingestItem) bool {
	select {
	case p.in <- it:
		return true
	default:
		return false
	}
}

// Exec runs fn on the partition that owns did (blocking while it is full).
func (ing *Ingester) Exec(ctx context.Context, did string, fn func(p *partition)) error {
	select {
	case ing.partitionOf(did).in <- &ingestItem{did: did, fn: fn}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-ing.stop:
		return errShutdown
	}
}

// QueueLen is the number of events waiting in all partitions.
func (ing *Ingester) QueueLen() int {
	n := 0
	for _, p := range ing.partitions {
		n += len(p.in)
	}
	return n
}

// CloseWorkers stops the workers after the events already queued are
// processed (hosts must be stopped first).
func (ing *Ingester) CloseWorkers() {
	close(ing.stop)
	ing.wg.Wait()
}

func (p *partition) run() {
	defer p.ing.wg.Done()
	sweep := time.NewTicker(retrySweep)
	defer sweep.Stop()
	for {
		// Resolutions first: they unblock held events.
		select {
		case info := <-p.resolved:
			p.onResolved(info)
			continue
		default:
		}
		select {
		case info := <-p.resolved:
			p.onResolved(info)
		case it := <-p.in:
			p.handle(it)
		case r := <-p.rechecked:
			p.onRechecked(r)
		case <-sweep.C:
			p.retryUnsent()
			p.retryStalled()
		case <-p.ing.stop:
			p.drainOnStop()
			return
		}
	}
}

// drainOnStop processes what is queued, so an accepted event is not lost
// at shutdown; events still waiting for an identity are left to replay
// from the host cursor (which does not cover them).
func (p *partition) drainOnStop() {
	for {
		select {
		case it := <-p.in:
			if it.fn != nil {
				it.fn(p)
				continue
			}
			if _, waiting := p.pending[it.did]; waiting {
				continue
			}
			if info, _ := p.idents.Get(it.did); info != nil && !info.stale(time.Now()) {
				p.process(it, info)
			}
		default:
			return
		}
	}
}

func (p *partition) handle(it *ingestItem) {
	if it.fn != nil {
		it.fn(p)
		return
	}
	if q, waiting := p.pending[it.did]; waiting {
		p.pending[it.did] = append(q, it)
		return
	}
	info, _ := p.idents.Get(it.did)
	if it.identity != nil || info == nil || info.stale(time.Now()) {
		// An #identity event always refreshes the identity first.
		if it.identity != nil {
			it.reresolved = true
		}
		p.waitFor(it)
		return
	}
	p.process(it, info)
}

// waitFor holds it until its DID is (re)resolved. One resolution per
// pending queue: a DID already waiting is not asked for again.
func (p *partition) waitFor(it *ingestItem) {
	p.idents.Remove(it.did)
	q, waiting := p.pending[it.did]
	p.pending[it.did] = append(q, it)
	if !waiting {
		p.requestResolve(it.did)
	}
}

func (p *partition) requestResolve(did string) {
	if q := p.pending[did]; len(q) > 0 && q[0].host != nil && !q[0].host.identityAllowed() {
		// The host's identity lookups are over budget: its events wait
		// (they fill its in-flight budget, which pauses its socket) and
		// the lookup is retried on the sweep. One host cannot make the
		// relay hammer the PLC directory.
		p.ing.metrics.identityBudgetWaits.Inc()
		p.unsent[did] = true
		return
	}
	ok := p.ing.resolver.Resolve(did, func(info *identInfo) {
		select {
		case p.resolved <- info:
		case <-p.ing.stop:
		}
	})
	if !ok {
		p.unsent[did] = true
	}
}

func (p *partition) retryUnsent() {
	for did := range p.unsent {
		delete(p.unsent, did)
		p.requestResolve(did)
	}
}

func (p *partition) onResolved(info *identInfo) {
	p.idents.Add(info.did, info)
	p.release(info.did)
}

// release processes the pending events of did, in order, until one of
// them has to wait again (another resolution, or a store error).
func (p *partition) release(did string) {
	q := p.pending[did]
	delete(p.pending, did)
	for i, it := range q {
		if _, again := p.pending[did]; again {
			// An earlier event waits again: keep order behind it.
			p.pending[did] = append(p.pending[did], q[i:]...)
			return
		}
		info, _ := p.idents.Get(did)
		p.process(it, info)
	}
}

// stall holds it, and every later event of its DID behind it, after a
// store error; the sweep retries it. Nothing is dropped and the account's
// order is kept; if the store stays down, the host's in-flight budget
// fills and its socket is paused.
func (p *partition) stall(it *ingestItem, what string, err error) {
	p.ing.logger.Error("store error; event held for retry", "op", what, "did", it.did, "host", it.host.name, "err", err)
	p.ing.metrics.storeRetries.Inc()
	p.pending[it.did] = append([]*ingestItem{it}, p.pending[it.did]...)
	p.stalled[it.did] = true
}

// retryStalled processes again the DIDs held after a store error.
func (p *partition) retryStalled() {
	for did := range p.stalled {
		delete(p.stalled, did)
		if info, _ := p.idents.Peek(did); info != nil {
			p.release(did)
		} else {
			p.requestResolve(did) // evicted meanwhile: resolve, then release
		}
	}
}

// drop counts a rejected event and releases its upstream seq.
func (p *partition) drop(it *ingestItem, reason string, err error) {
	p.ing.metrics.Dropped(reason).Inc()
	it.host.countDrop(reason)
	it.host.done(it.useq)
	p.ing.logger.Debug("event dropped", "host", it.host.name, "did", it.did, "type", it.typ(), "reason", reason, "err", err)
}

// storeCtx bounds one store call of a worker (see storeTimeout).
func (p *partition) storeCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), p.ing.storeTimeout)
}

// loadAccount returns the cached account, loading it from the store
// through the derived-state overlay (durable changes not yet
// checkpointed).
func (p *partition) loadAccount(did string) (*accountState, error) {
	if st, ok := p.accounts.Get(did); ok {
		return st, nil
	}
	ctx, cancel := p.storeCtx()
	defer cancel()
	a, err := p.ing.store.GetAccountByDID(ctx, syntax.DID(did))
	if errors.Is(err, meta.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	p.ing.derived.overlayAccount(a)
	st := &accountState{acct: *a}
	if rs, ok := p.ing.derived.repo(a.UID); ok {
		st.head = &repoHead{rev: rs.Rev, commitCID: rs.CommitCID, dataCID: rs.DataCID}
	} else if rs, err := p.ing.store.GetRepoState(ctx, a.UID); err == nil {
		st.head = &repoHead{rev: rs.Rev, commitCID: rs.CommitCID, dataCID: rs.DataCID}
	} else if !errors.Is(err, meta.ErrNotFound) {
		return nil, err
	}
	p.cacheAccount(st)
	return st, nil
}

// cacheEvictTries bounds how many cached accounts eviction looks at for
// one without events in flight.
const cacheEvictTries = 16

func (p *partition) cacheAccount(st *accountState) {
	if p.accounts.Len() >= p.accountBound() {
		for range cacheEvictTries {
			k, old, _ := p.accounts.GetOldest()
			if old.inflight.Load() == 0 {
				p.accounts.Remove(k)
				break
			}
			p.accounts.Get(k) // busy: make it the newest, look at the next
		}
		// Every candidate busy: grow by one, evict next time.
	}
	p.accounts.Add(string(st.acct.DID), st)
}

// process validates one event whose identity is resolved, and submits it
// to the sequencer or drops it.
func (p *partition) process(it *ingestItem, info *identInfo) {
	start := time.Now()
	mt := p.ing.metrics
	defer mt.validateSeconds.UpdateDuration(start)
	if info.err != nil {
		p.drop(it, "identity_error", info.err)
		return
	}
	st, err := p.loadAccount(it.did)
	if err != nil {
		p.stall(it, "account lookup", err)
		return
	}
	authoritative := info.pds != "" && info.pds == it.host.name
	switch {
	case st == nil:
		if !authoritative {
			if p.reresolveOnce(it) {
				return
			}
			p.drop(it, "wrong_host", errWrongHost(info, it))
			return
		}
		st, err = p.createAccount(it)
		if err != nil {
			p.stall(it, "create account", err)
			return
		}
	case st.acct.HostID != it.host.id:
		// Known account, other host: migration if the (fresh) document says
		// this host is now its PDS.
		if p.reresolveOnce(it) {
			return
		}
		if !authoritative {
			p.drop(it, "wrong_host", errWrongHost(info, it))
			return
		}
		moved := st.acct
		moved.HostID = it.host.id
		ctx, cancel := p.storeCtx()
		err := p.ing.store.UpdateAccount(ctx, &moved)
		cancel()
		if err != nil {
			p.stall(it, "move account", err)
			return
		}
		p.ing.logger.Info("account moved", "did", it.did, "from", st.acct.HostID, "to", it.host.id)
		// The store moved one account count; mirror it in the hosts' live
		// records, which the account limit is checked against.
		if from := p.ing.hostByID(st.acct.HostID); from != nil {
			from.accountRemoved()
		}
		it.host.accountCreated()
		st.acct = moved
		mt.accountMigrations.Inc()
	case !authoritative:
		// The document no longer names this host: refresh once, then drop.
		if p.reresolveOnce(it) {
			return
		}
		p.drop(it, "wrong_host", errWrongHost(info, it))
		return
	}

	ctx := context.Background() // validation does no I/O
	switch {
	case it.commit != nil:
		// Per-host lenient sync: a host is held to sync 1.1 only once it
		// has sent a valid sync-1.1 commit (RELAY_LENIENT_SYNC_VALIDATION
		// makes every host lenient).
		v := p.ing.v
		v.lenient = v.lenient || !it.host.syncV11.Load()
		res, ok := p.verifyRepoEvent(it, st, func() (*verified, error) {
			return v.Commit(ctx, it.commit, info.key, st.head)
		})
		if !ok {
			return
		}
		if it.commit.PrevData != nil && res.inversionErr == nil && !it.host.syncV11.Load() {
			it.host.syncV11.Store(true)
			p.ing.logger.Info("host sends sync 1.1 commits; validating it strictly from now on", "host", it.host.name)
		}
		if res.inversionErr != nil {
			mt.inversionFailures.Inc()
			it.host.countDrop("inversion_failed_accepted")
		}
		if res.prevDataMismatch {
			mt.prevDataMismatch.Inc()
		}
		p.accept(it, st, KindCommit, it.commit, res, nil)
	case it.sync != nil:
		res, ok := p.verifyRepoEvent(it, st, func() (*verified, error) {
			return p.ing.v.Sync(ctx, it.sync, info.key, st.head)
		})
		if !ok {
			return
		}
		p.accept(it, st, KindSync, it.sync, res, nil)
	case it.identity != nil:
		if st.acct.Status == meta.AccountTakendown || st.acct.Status == meta.AccountSuspended {
			// The relay took the account down: its log is scrubbed, and
			// its identity changes are not relayed either.
			p.drop(it, "inactive_account", errInactive(st))
			return
		}
		out := &comatproto.SyncSubscribeRepos_Identity{Did: it.did, Time: it.identity.Time}
		if it.identity.Handle != nil && info.handle != "" && *it.identity.Handle == info.handle {
			h := info.handle
			out.Handle = &h
		}
		p.accept(it, st, KindIdentity, out, nil, nil)
	case it.account != nil:
		if !authoritative || st.acct.HostID != it.host.id {
			p.drop(it, "account_wrong_host", errWrongHost(info, it))
			return
		}
		up := meta.AccountActive
		if !it.account.Active {
			up = meta.AccountDeactivated
			if it.account.Status != nil && *it.account.Status != "" {
				up = meta.AccountStatus(*it.account.Status)
			}
		}
		// The status is derived state of this event: it reaches the
		// store with the event's checkpoint, never ahead of the log.
		// An account deleted at its PDS no longer counts against the
		// host's account limit (the store moves its count with the same
		// checkpoint).
		switch meta.DeletionDelta(meta.DefaultAccountStatus(st.acct.UpstreamStatus), up) {
		case -1:
			it.host.accountRemoved()
		case 1:
			it.host.accountCreated()
		}
		st.acct.UpstreamStatus = up
		change := &meta.StatusChange{UID: st.acct.UID, Status: st.acct.Status, UpstreamStatus: up}
		p.accept(it, st, KindAccount, accountFrame(&st.acct, it.account.Time), nil, change)
	}
}

// verifyRepoEvent runs the checks shared by #commit and #sync: the account
// must be active and verify must pass. A signature failure refreshes the
// identity once (the key may have rotated without an #identity) before the
// event is dropped. ok=false means the event was dropped or is waiting.
func (p *partition) verifyRepoEvent(it *ingestItem, st *accountState, verify func() (*verified, error)) (*verified, bool) {
	if !st.acct.IsActive() {
		if p.recheck(it, st) {
			return nil, false // held while the host is asked
		}
		p.drop(it, "inactive_account", errInactive(st))
		return nil, false
	}
	res, err := verify()
	if err != nil {
		if dropReason(err) == "bad_signature" && p.reresolveOnce(it) {
			return nil, false
		}
		p.drop(it, dropReason(err), err)
		return nil, false
	}
	return res, true
}

// reresolveOnce holds it for a fresh resolution of its identity, unless
// it had one already: true means it waits (the caller stops), false that
// the caller decides on the identity it has ("re-resolve once, else
// drop").
func (p *partition) reresolveOnce(it *ingestItem) bool {
	if it.reresolved {
		return false
	}
	it.reresolved = true
	p.waitFor(it)
	return true
}

// accountFrame is the #account the relay emits: its combined local and
// upstream status (AccountStatus, as the API reports it).
func accountFrame(a *meta.Account, t string) *comatproto.SyncSubscribeRepos_Account {
	return &comatproto.SyncSubscribeRepos_Account{Did: string(a.DID), Time: t, Active: a.IsActive(), Status: StatusField(a)}
}

// accept moves the account's head and hands the event to the sequencer,
// with the state it derives (repo head, status) and its source (host,
// upstream seq, the host's safe cursor). The host's cursor passes the event
// only once it is durable.
func (p *partition) accept(it *ingestItem, st *accountState, kind uint32, body cbg.CBORMarshaler, res *verified, status *meta.StatusChange) {
	var repo *meta.RepoState
	if res != nil {
		st.head = &repoHead{rev: res.rev, commitCID: res.commitCID, dataCID: res.dataCID}
		repo = &meta.RepoState{UID: st.acct.UID, Rev: res.rev, CommitCID: res.commitCID, DataCID: res.dataCID}
	}
	host, useq := it.host, it.useq
	lastIngest := &p.ing.lastIngest
	recv, durableSeconds := it.recv, p.ing.metrics.durableSeconds
	st.inflight.Add(1)
	ev := Outgoing{
		Kind: kind, UID: st.acct.UID, Body: body,
		HostID: host.id, UpstreamSeq: useq, Floor: host.tracker.cursor(),
		Repo: repo, Status: status,
		Done: func(_ int64, err error) {
			st.inflight.Add(-1)
			switch {
			case err == nil:
				durableSeconds.UpdateDuration(recv)
				host.done(useq)
				lastIngest.Store(time.Now().UnixNano())
			case errors.Is(err, ErrUnencodable):
				host.countDrop("encode_error")
				host.done(useq)
			default:
				host.abandon(err)
			}
		},
	}
	if err := p.ing.submit(context.Background(), ev); err != nil {
		// Not durable, so the host's cursor must not pass it: the host
		// rewinds and resumes from its cursor (after a restart if the
		// sequencer failed).
		st.inflight.Add(-1)
		p.ing.metrics.notSequenced.Inc()
		p.ing.logger.Warn("event not sequenced", "did", it.did, "host", host.name, "err", err)
		host.abandon(err)
	}
}

func (p *partition) createAccount(it *ingestItem) (*accountState, error) {
	a := &meta.Account{DID: syntax.DID(it.did), HostID: it.host.id, Status: meta.AccountActive, UpstreamStatus: meta.AccountActive}
	// The limit check and the count are one step: two workers creating
	// accounts of one host at once cannot both take the last slot.
	if it.host.reserveAccount() {
		a.Status = meta.AccountThrottled
	}
	ctx, cancel := p.storeCtx()
	defer cancel()
	if err := p.ing.store.CreateAccount(ctx, a); err != nil {
		it.host.accountRemoved() // not created here: give the slot back
		if errors.Is(err, meta.ErrExists) {
			got, gerr := p.ing.store.GetAccountByDID(ctx, syntax.DID(it.did))
			if gerr != nil {
				return nil, gerr
			}
			p.ing.derived.overlayAccount(got)
			a = got
		} else {
			return nil, err
		}
	}
	st := &accountState{acct: *a}
	p.cacheAccount(st)
	return st, nil
}

// ErrWrongHost: the account's DID document names another PDS.
var ErrWrongHost = errors.New("relay: event from a host that is not the account's PDS")

func errWrongHost(info *identInfo, it *ingestItem) error {
	return fmt.Errorf("%w: document says %q, event from %q", ErrWrongHost, info.pds, it.host.name)
}

// ErrInactive: the account is not active (local or upstream status).
var ErrInactive = errors.New("relay: account is not active")

func errInactive(st *accountState) error {
	return fmt.Errorf("%w: status %s, upstream %s", ErrInactive, st.acct.Status, st.acct.UpstreamStatus)
}
