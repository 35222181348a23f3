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
	"github.com/bluesky-social/indigo/atproto/syntax"

	"github.com/relay/relay/persist/collection"
)

// Backfill limits.
const (
	// backfillPage is the page size asked of the source (the lexicon's max).
	backfillPage = 2000
	// backfillMaxBody bounds one page's response (2,000 DIDs of <= 2 KB).
	backfillMaxBody = 8 << 20
	// backfillRetries is how many consecutive failures of one page end the
	// backfill (state failed; a new start resumes from the stored page).
	backfillRetries = 8
	// maxBackfillCollections bounds the collections of one backfill.
	maxBackfillCollections = 1000
)

// backfillBackoff is the pause after the first failure of a page (the
// n-th failure waits n times it).
var backfillBackoff = 500 * time.Millisecond

// BackfillStatus is the admin view of a backfill.
type BackfillStatus struct {
	collection.BackfillProgress
	Running bool `json:"running"`
}

// ErrBackfillRunning: a backfill is already running.
var ErrBackfillRunning = errors.New("collections: a backfill is running")

// backfiller pages a source relay's listReposByCollection into the index.
// Progress (collection, cursor) is stored with each page's DIDs in one
// batch, so an interrupted backfill (cancel, crash) resumes at the page
// after the last one stored.
type backfiller struct {
	s *Service

	mu      sync.Mutex
	running bool
	cancel  context.CancelFunc
	done    chan struct{}

	pages  *metrics.Counter
	added  *metrics.Counter
	errors *metrics.Counter
}

func newBackfiller(s *Service) *backfiller {
	set := s.opts.Metrics
	b := &backfiller{
		s:      s,
		pages:  set.NewCounter("relay_collection_backfill_pages_total"),
		added:  set.NewCounter("relay_collection_backfill_added_total"),
		errors: set.NewCounter("relay_collection_backfill_errors_total"),
	}
	set.NewGauge("relay_collection_backfill_running", func() float64 {
		b.mu.Lock()
		defer b.mu.Unlock()
		if b.running {
			return 1
		}
		return 0
	})
	return b
}

// NormalizeSource turns "host", "host:port" or a URL into a base URL
// ("https://host" for a bare host).
func NormalizeSource(src string) (string, error) {
	src = strings.TrimRight(strings.TrimSpace(src), "/")
	if src == "" || src == "none" {
		return "", errors.New("no backfill source")
	}
	if !strings.Contains(src, "://") {
		src = "https://" + src
	}
	u, err := url.Parse(src)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "", fmt.Errorf("bad backfill source %q", src)
	}
	return u.Scheme + "://" + u.Host, nil
}

// StartBackfill starts (or, with the same source and collections after
// an interruption, resumes) a backfill. source "" uses the configured
// default; collections must be NSIDs.
func (s *Service) StartBackfill(source string, collections []string) (BackfillStatus, error) {
	if source == "" {
		source = s.opts.BackfillSource
	}
	base, err := NormalizeSource(source)
	if err != nil {
		return BackfillStatus{}, err
	}
	if len(collections) == 0 || len(collections) > maxBackfillCollections {
		return BackfillStatus{}, fmt.Errorf("collections: give 1 to %d collections", maxBackfillCollections)
	}
	for _, c := range collections {
		if _, err := syntax.ParseNSID(c); err != nil {
			return BackfillStatus{}, fmt.Errorf("collection %q: %w", c, err)
		}
	}
	b := s.bf
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.running {
		return BackfillStatus{}, ErrBackfillRunning
	}
	p, ok, err := s.ix.Backfill()
	if err != nil {
		return BackfillStatus{}, err
	}
	same := ok && p.Source == base && strings.Join(p.Collections, ",") == strings.Join(collections, ",") && p.State != "done"
	if !same {
		p = collection.BackfillProgress{Source: base, Collections: collections}
	}
	p.State, p.Error = "running", ""
	if err := s.ix.SaveBackfill(p); err != nil {
		return BackfillStatus{}, err
	}
	b.runLocked(p)
	return BackfillStatus{BackfillProgress: p, Running: true}, nil
}

// resume restarts a backfill that was running when the relay stopped.
func (b *backfiller) resume() {
	p, ok, err := b.s.ix.Backfill()
	if err != nil || !ok || p.State != "running" {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.s.logger.Info("collection index: resuming backfill", "source", p.Source, "next", p.Next, "cursor", p.Cursor)
	b.runLocked(p)
}

func (b *backfiller) runLocked(p collection.BackfillProgress) {
	ctx, cancel := context.WithCancel(context.Background())
	b.running, b.cancel, b.done = true, cancel, make(chan struct{})
	done := b.done
	b.s.wg.Add(1)
	go func() {
		defer b.s.wg.Done()
		defer close(done)
		b.run(ctx, p)
	}()
}

// CancelBackfill stops a running backfill (its progress is kept: a start
// with the same source and collections resumes it).
func (s *Service) CancelBackfill() (BackfillStatus, error) {
	b := s.bf
	b.mu.Lock()
	cancel, done := b.cancel, b.done
	b.mu.Unlock()
	if cancel == nil {
		st, _ := b.status()
		return st, nil
	}
	cancel()
	<-done
	p, _, err := s.ix.Backfill()
	if err != nil {
		return BackfillStatus{}, err
	}
	if p.State == "running" {
		p.State = "cancelled"
		if err := s.ix.SaveBackfill(p); err != nil {
			return BackfillStatus{}, err
		}
	}
	return BackfillStatus{BackfillProgress: p}, nil
}

// cancelRun stops the run at shutdown without changing its stored state
// (it resumes at the next start).
func (b *backfiller) cancelRun() {
	b.mu.Lock()
	cancel, done := b.cancel, b.done
	b.mu.Unlock()
	if cancel != nil {
		cancel()
		<-done
	}
}

// BackfillStatus reports the stored progress and whether it runs.
func (s *Service) BackfillStatus() (BackfillStatus, bool) { return s.bf.status() }

func (b *backfiller) status() (BackfillStatus, bool) {
	p, ok, err := b.s.ix.Backfill()
	if err != nil || !ok {
		return BackfillStatus{}, false
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return BackfillStatus{BackfillProgress: p, Running: b.running}, true
}

func (b *backfiller) run(ctx context.Context, p collection.BackfillProgress) {
	defer func() {
		b.mu.Lock()
		b.running, b.cancel = false, nil
		b.mu.Unlock()
	}()
	fails := 0
	for p.Next < len(p.Collections) {
		if ctx.Err() != nil {
			return
		}
		coll := p.Collections[p.Next]
		dids, next, err := b.page(ctx, p.Source, coll, p.Cursor)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			b.errors.Inc()
			fails++
			b.s.logger.Warn("collection index: backfill page failed", "source", p.Source, "collection", coll, "cursor", p.Cursor, "attempt", fails, "err", err)
			if fails >= backfillRetries {
				p.State, p.Error = "failed", err.Error()
				_ = b.s.ix.SaveBackfill(p)
				return
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Duration(fails) * backfillBackoff):
			}
			continue
		}
		fails = 0
		p.Pages++
		p.Added += int64(len(dids))
		if next == "" || len(dids) == 0 {
			p.Next++
			p.Cursor = ""
		} else {
			p.Cursor = next
		}
		if p.Next >= len(p.Collections) {
			p.State = "done"
		}
		if err := b.s.ix.AddBackfilled(coll, dids, p); err != nil {
			b.s.logger.Error("collection index: backfill store failed", "err", err)
			p.State, p.Error = "failed", err.Error()
			return
		}
		b.pages.Inc()
		b.added.Add(len(dids))
		for _, did := range dids {
			if !b.s.rs.enqueueReason(did, collection.ReasonBackfill) {
				break // the rescan of the markers queues the rest
			}
		}
	}
	b.s.logger.Info("collection index: backfill done", "source", p.Source, "pages", p.Pages, "added", p.Added)
}

// page fetches one listReposByCollection page.
func (b *backfiller) page(ctx context.Context, base, coll, cursor string) ([]string, string, error) {
	q := url.Values{"collection": {coll}, "limit": {fmt.Sprint(backfillPage)}}
	if cursor != "" {
		q.Set("cursor", cursor)
	}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/xrpc/com.atproto.sync.listReposByCollection?"+q.Encode(), nil)
	if err != nil {
		return nil, "", err
	}
	resp, err := b.s.opts.HTTPClient.Do(req)
	if err != nil {
		return nil, "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		return nil, "", fmt.Errorf("HTTP %d", resp.StatusCode)
	}
	var out struct {
		Repos []struct {
			DID string `json:"did"`
		} `json:"repos"`
		Cursor *string `json:"cursor"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, backfillMaxBody)).Decode(&out); err != nil {
		return nil, "", fmt.Errorf("decode page: %w", err)
	}
	if len(out.Repos) > backfillPage {
		return nil, "", fmt.Errorf("page of %d repos exceeds %d", len(out.Repos), backfillPage)
	}
	dids := make([]string, 0, len(out.Repos))
	for _, r := range out.Repos {
		if _, err := syntax.ParseDID(r.DID); err == nil {
			dids = append(dids, r.DID)
		}
	}
	next := ""
	if out.Cursor != nil {
		next = *out.Cursor
		if next == cursor {
			return nil, "", errors.New("source returned the same cursor")
		}
	}
	return dids, next, nil
}

// cleanLoop runs the cleaner every CleanInterval.
func (s *Service) cleanLoop() {
	defer s.wg.Done()
	t := time.NewTicker(s.opts.CleanInterval)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
			n, err := s.Clean(context.Background())
			if err != nil {
				s.logger.Error("collection index: clean pass failed", "removed", n, "err", err)
			} else if n > 0 {
				s.logger.Info("collection index: clean pass", "removed", n)
			}
		}
	}
}

// Clean walks every DID the index holds and removes those the relay no
// longer has (AccountExists false), except DIDs from a backfill the relay
// has not seen yet (their resync decides: a repo the PDS does not have is
// removed then). It returns the number removed.
func (s *Service) Clean(ctx context.Context) (int, error) {
	if s.opts.AccountExists == nil {
		return 0, nil
	}
	removed := 0
	after := ""
	for {
		dids, err := s.ix.DIDs(after, 512)
		if err != nil {
			return removed, err
		}
		if len(dids) == 0 {
			return removed, nil
		}
		after = dids[len(dids)-1]
		for _, did := range dids {
			select {
			case <-s.stop:
				return removed, nil
			default:
			}
			info, err := s.ix.DID(did)
			if err != nil {
				return removed, err
			}
			if !info.Known || (info.Backfilled && info.Resync != "") {
				continue
			}
			cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			ok, err := s.opts.AccountExists(cctx, did)
			cancel()
			if err != nil {
				return removed, err
			}
			if ok {
				continue
			}
			if done, err := s.ix.RemoveDID(did); err != nil {
				return removed, err
			} else if done {
				removed++
				s.m.cleaned.Inc()
			}
		}
	}
}
