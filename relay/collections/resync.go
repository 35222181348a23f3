package collections

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/bluesky-social/indigo/atproto/repo"
	"github.com/ipfs/go-cid"

	"github.com/relay/relay/persist/collection"
)

// Resync failure reasons (relay_collection_resync_failed_total{reason}).
var resyncFailReasons = []string{"no_pds", "fetch", "status", "too_big", "bad_car", "wrong_did", "gone", "inactive", "stale", "overflow", "removed", "store"}

// Resync trigger reasons (relay_collection_resync_queued_total{reason}).
var resyncQueueReasons = []string{collection.ReasonSync, collection.ReasonUnknownZero, collection.ReasonInconsist,
	collection.ReasonReactivated, collection.ReasonBackfill, collection.ReasonAdmin, "rescan"}

// resyncer rebuilds DIDs from getRepo.
//
// Bounds: the queue holds ResyncQueue DIDs; when it is full a DID is not
// queued, but its durable marker stays and the periodic rescan of the
// markers queues it later (nothing is lost, only delayed). ResyncWorkers
// fetch at once, at most ResyncPerHost per PDS host; a DID whose host is
// at its limit goes back to the queue's tail. A CAR larger than
// MaxRepoBytes fails with reason too_big, so memory is bounded by
// workers x MaxRepoBytes.
type resyncer struct {
	s     *Service
	queue chan string

	mu      sync.Mutex
	queued  map[string]struct{} // in the queue or running (bounded by queue + workers)
	running int
	perHost map[string]int

	done     *metrics.Counter
	queuedBy map[string]*metrics.Counter
	failed   map[string]*metrics.Counter
	seconds  *metrics.Histogram

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

func newResyncer(s *Service) *resyncer {
	ctx, cancel := context.WithCancel(context.Background())
	rs := &resyncer{
		s: s, queue: make(chan string, s.opts.ResyncQueue),
		queued: map[string]struct{}{}, perHost: map[string]int{},
		queuedBy: map[string]*metrics.Counter{}, failed: map[string]*metrics.Counter{},
		ctx: ctx, cancel: cancel,
	}
	set := s.opts.Metrics
	rs.done = set.NewCounter("relay_collection_resync_done_total")
	rs.seconds = set.NewHistogram("relay_collection_resync_seconds")
	for _, r := range resyncQueueReasons {
		rs.queuedBy[r] = set.NewCounter(fmt.Sprintf(`relay_collection_resync_queued_total{reason=%q}`, r))
	}
	for _, r := range resyncFailReasons {
		rs.failed[r] = set.NewCounter(fmt.Sprintf(`relay_collection_resync_failed_total{reason=%q}`, r))
	}
	set.NewGauge("relay_collection_resync_queue", func() float64 { q, _ := rs.queueLen(); return float64(q) })
	return rs
}

func (rs *resyncer) start() {
	for range rs.s.opts.ResyncWorkers {
		rs.wg.Add(1)
		go rs.work()
	}
	rs.wg.Add(1)
	go rs.rescanLoop()
}

func (rs *resyncer) close() {
	rs.cancel()
	rs.wg.Wait()
}

func (rs *resyncer) queueLen() (queued, running int) {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	return len(rs.queue), rs.running
}

func (rs *resyncer) counts() map[string]int64 {
	out := map[string]int64{"done": int64(rs.done.Get())}
	for r, c := range rs.failed {
		if v := c.Get(); v > 0 {
			out["failed_"+r] = int64(v)
		}
	}
	return out
}

// enqueue queues did unless it is queued or running, or the queue is full
// (then the durable marker brings it back at the next rescan).
func (rs *resyncer) enqueue(did string) bool { return rs.enqueueReason(did, "") }

func (rs *resyncer) enqueueReason(did, reason string) bool {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	if _, ok := rs.queued[did]; ok {
		return true
	}
	select {
	case rs.queue <- did:
		rs.queued[did] = struct{}{}
		if reason != "" {
			if c := rs.queuedBy[reason]; c != nil {
				c.Inc()
			}
		} else {
			rs.queuedBy["rescan"].Inc()
		}
		return true
	default:
		return false
	}
}

// rescanLoop queues DIDs from the durable markers (at start: resyncs owed
// before a crash; later: those the full queue refused, and retries).
func (rs *resyncer) rescanLoop() {
	defer rs.wg.Done()
	after := ""
	t := time.NewTicker(rs.s.opts.ResyncRescan)
	defer t.Stop()
	for {
		room := cap(rs.queue) - len(rs.queue)
		if room > 0 {
			dids, reasons, err := rs.s.ix.PendingResyncs(after, min(room, 1024))
			if err != nil {
				if errors.Is(err, collection.ErrClosed) {
					return
				}
				rs.s.logger.Error("collection index: scan resync markers", "err", err)
			}
			for i, did := range dids {
				if !rs.enqueueReason(did, reasons[i]) {
					break
				}
			}
			if len(dids) > 0 {
				after = dids[len(dids)-1]
			} else {
				after = ""
			}
			if len(dids) == min(room, 1024) && len(dids) > 0 {
				continue // more markers: keep filling while there is room
			}
		}
		select {
		case <-rs.ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (rs *resyncer) work() {
	defer rs.wg.Done()
	for {
		select {
		case <-rs.ctx.Done():
			return
		case did := <-rs.queue:
			rs.one(did)
		}
	}
}

// one resyncs did, or puts it back when its host is at its limit.
func (rs *resyncer) one(did string) {
	ctx, cancel := context.WithTimeout(rs.ctx, rs.s.opts.ResyncTimeout)
	defer cancel()
	release := func() {
		rs.mu.Lock()
		delete(rs.queued, did)
		rs.mu.Unlock()
	}
	base, err := rs.s.opts.PDSFor(ctx, did)
	if err != nil || base == "" {
		release()
		rs.fail(did, "no_pds", err)
		return
	}
	host := hostOf(base)
	rs.mu.Lock()
	if rs.perHost[host] >= rs.s.opts.ResyncPerHost {
		delete(rs.queued, did)
		rs.mu.Unlock()
		// Back to the tail (or, if the queue is full, to the next rescan).
		select {
		case <-rs.ctx.Done():
		case <-time.After(20 * time.Millisecond):
		}
		rs.enqueue(did)
		return
	}
	rs.perHost[host]++
	rs.running++
	rs.mu.Unlock()
	defer func() {
		rs.mu.Lock()
		if rs.perHost[host]--; rs.perHost[host] <= 0 {
			delete(rs.perHost, host)
		}
		rs.running--
		delete(rs.queued, did)
		rs.mu.Unlock()
	}()
	t0 := time.Now()
	reason, err := rs.s.resync(ctx, did, base)
	if reason != "" {
		rs.fail(did, reason, err)
		return
	}
	rs.done.Inc()
	rs.seconds.UpdateDuration(t0)
}

func (rs *resyncer) fail(did, reason string, err error) {
	rs.failed[reason].Inc()
	rs.s.logger.Debug("collection index: resync failed", "did", did, "reason", reason, "err", err)
}

func hostOf(base string) string {
	if u, err := url.Parse(base); err == nil && u.Host != "" {
		return strings.ToLower(u.Host)
	}
	return base
}

// errRepo is a PDS's XRPC error answer.
type errRepo struct {
	status int
	name   string
}

func (e errRepo) Error() string { return fmt.Sprintf("getRepo: HTTP %d %s", e.status, e.name) }

// resync fetches did's repo from base and replaces its counts. It returns
// the failure reason ("" on success).
func (s *Service) resync(ctx context.Context, did, base string) (string, error) {
	if err := s.ix.BeginResync(did); err != nil {
		return "store", err
	}
	finished := false
	defer func() {
		if !finished {
			s.ix.AbortResync(did)
		}
	}()
	counts, rev, err := s.fetchCounts(ctx, did, base)
	if err != nil {
		var er errRepo
		switch {
		case errors.As(err, &er) && (er.name == "RepoNotFound" || er.name == "RepoDeleted" || er.name == "RepoTakendown" || er.status == http.StatusNotFound):
			// The PDS does not have the repo: nothing of it can be listed.
			if _, rerr := s.ix.RemoveDID(did); rerr != nil {
				return "store", rerr
			}
			return "gone", err
		case errors.As(err, &er) && (er.name == "RepoDeactivated" || er.name == "RepoSuspended"):
			// Inactive: keep the counts, stop owing (a reactivation's
			// events bring it back).
			_ = s.ix.DropResync(did)
			return "inactive", err
		case errors.As(err, &er):
			return "status", err
		case errors.Is(err, errTooBig):
			return "too_big", err
		case errors.Is(err, errWrongDID):
			return "wrong_did", err
		case errors.Is(err, errBadCAR):
			return "bad_car", err
		}
		return "fetch", err
	}
	finished = true
	switch err := s.ix.FinishResync(did, counts, rev); {
	case err == nil:
		return "", nil
	case errors.Is(err, collection.ErrStale):
		return "stale", err
	case errors.Is(err, collection.ErrOverflow):
		return "overflow", err
	case errors.Is(err, collection.ErrRemoved):
		return "removed", err
	default:
		return "store", err
	}
}

var (
	errTooBig   = errors.New("collections: repo CAR exceeds the size limit")
	errWrongDID = errors.New("collections: repo CAR is of another DID")
	errBadCAR   = errors.New("collections: repo CAR does not parse")
)

// fetchCounts GETs com.atproto.sync.getRepo and counts the records per
// collection by walking the MST (indigo atproto/repo).
func (s *Service) fetchCounts(ctx context.Context, did, base string) (map[string]int64, string, error) {
	u := strings.TrimRight(base, "/") + "/xrpc/com.atproto.sync.getRepo?did=" + url.QueryEscape(did)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, "", err
	}
	req.Header.Set("Accept", "application/vnd.ipld.car")
	resp, err := s.opts.HTTPClient.Do(req)
	if err != nil {
		return nil, "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		var e struct {
			Error string `json:"error"`
		}
		_ = json.NewDecoder(io.LimitReader(resp.Body, 64<<10)).Decode(&e)
		return nil, "", errRepo{status: resp.StatusCode, name: e.Error}
	}
	if resp.ContentLength > s.opts.MaxRepoBytes {
		return nil, "", errTooBig
	}
	lr := &limitedReader{r: resp.Body, n: s.opts.MaxRepoBytes}
	return CountCAR(ctx, lr, did)
}

// CountCAR reads a repo CAR and returns its records per collection and
// its commit's rev. did, when set, must be the commit's DID.
func CountCAR(ctx context.Context, r io.Reader, did string) (map[string]int64, string, error) {
	commit, rp, err := repo.LoadRepoFromCAR(ctx, r)
	if err != nil {
		if errors.Is(err, errTooBig) {
			return nil, "", err
		}
		return nil, "", errors.Join(errBadCAR, err)
	}
	if did != "" && commit.DID != did {
		return nil, "", fmt.Errorf("%w: %s", errWrongDID, commit.DID)
	}
	counts := map[string]int64{}
	err = rp.MST.Walk(func(key []byte, _ cid.Cid) error {
		if c := collection.CollectionOf(string(key)); c != "" {
			counts[c]++
		}
		return nil
	})
	if err != nil {
		return nil, "", errors.Join(errBadCAR, err)
	}
	return counts, commit.Rev, nil
}

// limitedReader fails with errTooBig past n bytes (io.LimitReader would
// end quietly and the truncation would look like a bad CAR).
type limitedReader struct {
	r io.Reader
	n int64
}

func (l *limitedReader) Read(p []byte) (int, error) {
	if l.n <= 0 {
		return 0, errTooBig
	}
	if int64(len(p)) > l.n {
		p = p[:l.n+1]
	}
	n, err := l.r.Read(p)
	l.n -= int64(n)
	if l.n < 0 {
		return n, errTooBig
	}
	return n, err
}

// Resync queues an admin resync of did (marker written first, so it
// survives a crash). ok=false: the index holds nothing for did and
// create is false.
func (s *Service) Resync(did string, create bool) (bool, error) {
	ok, err := s.ix.MarkResync(did, collection.ReasonAdmin, create)
	if err != nil || !ok {
		return ok, err
	}
	s.rs.enqueueReason(did, collection.ReasonAdmin)
	return true, nil
}
