package relay

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"time"

	comatproto "github.com/bluesky-social/indigo/api/atproto"
	"github.com/bluesky-social/indigo/atproto/syntax"
	"github.com/hashicorp/golang-lru/v2/simplelru"
	"golang.org/x/time/rate"

	"github.com/relay/relay/persist/meta"
)

// Account status re-check (indigo#1161: status drifts after a missed
// #account): a #commit or #sync for an account whose upstream status is
// inactive first asks the account's host (getRepoStatus) before it is
// dropped; if the host says active, the relay fixes the status, emits
// #account and processes the event.
const (
	// statusCheckWorkers bounds getRepoStatus calls in flight; when all
	// are busy the event is dropped as inactive without a re-check.
	statusCheckWorkers = 8
	// statusCheckTimeout bounds one call.
	statusCheckTimeout = 10 * time.Second
	// statusCheckResponseLimit bounds one response read.
	statusCheckResponseLimit = 64 << 10
	// statusCheckTTL: an account is re-checked at most once in this long
	// (per worker, an LRU of statusCheckCacheSize accounts).
	statusCheckTTL       = 10 * time.Minute
	statusCheckCacheSize = 1 << 16
	// statusChecksPerSecond and statusCheckBurst are a host's budget.
	statusChecksPerSecond = 1
	statusCheckBurst      = 10
)

// newStatusCheckBudget is a host's re-check budget.
func newStatusCheckBudget() *rate.Limiter {
	return rate.NewLimiter(statusChecksPerSecond, statusCheckBurst)
}

// statusChecker calls hosts' getRepoStatus on a bounded set of goroutines.
type statusChecker struct {
	client *http.Client // SSRF-safe unless insecure hosts are allowed
	sem    chan struct{}
	logger *slog.Logger
}

func newStatusChecker(client *http.Client, logger *slog.Logger) *statusChecker {
	return &statusChecker{client: client, sem: make(chan struct{}, statusCheckWorkers), logger: logger}
}

// statusResult is a re-check's answer, delivered to the account's worker.
type statusResult struct {
	did    string
	active bool
	status string
	err    error
}

// check asks h whether did is active, in the background; done gets the
// answer. false: every worker is busy, nothing was asked.
func (c *statusChecker) check(h *hostConn, did string, done func(statusResult)) bool {
	select {
	case c.sem <- struct{}{}:
	default:
		return false
	}
	go func() {
		defer func() { <-c.sem }()
		done(c.ask(h, did))
	}()
	return true
}

func (c *statusChecker) ask(h *hostConn, did string) statusResult {
	res := statusResult{did: did}
	u := hostXRPC(h.name, h.noSSL, "com.atproto.sync.getRepoStatus") + "?did=" + url.QueryEscape(did)
	ctx, cancel := context.WithTimeout(context.Background(), statusCheckTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		res.err = err
		return res
	}
	req.Header.Set("User-Agent", userAgent)
	resp, err := c.client.Do(req)
	if err != nil {
		res.err = err
		return res
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		res.err = fmt.Errorf("getRepoStatus: status %d", resp.StatusCode)
		return res
	}
	var out comatproto.SyncGetRepoStatus_Output
	if err := json.NewDecoder(io.LimitReader(resp.Body, statusCheckResponseLimit)).Decode(&out); err != nil {
		res.err = fmt.Errorf("getRepoStatus: %w", err)
		return res
	}
	if out.Did != did {
		res.err = fmt.Errorf("getRepoStatus answered for %q", out.Did)
		return res
	}
	res.active = out.Active
	if out.Status != nil {
		res.status = *out.Status
	}
	return res
}

// newCheckedCache is a worker's record of recent re-checks.
func newCheckedCache() *simplelru.LRU[string, time.Time] {
	c, _ := simplelru.NewLRU[string, time.Time](statusCheckCacheSize, nil)
	return c
}

// recheck holds it while its host is asked whether the account is active,
// when the account is inactive only upstream and the host is its own. It
// returns false when no re-check is made (the caller drops the event).
func (p *partition) recheck(it *ingestItem, st *accountState) bool {
	c := p.ing.checker
	a := &st.acct
	if c == nil || it.rechecked || it.host == nil || a.HostID != it.host.id ||
		!(a.Status == meta.AccountActive || a.Status == "") || a.UpstreamStatus == meta.AccountActive {
		return false
	}
	now := time.Now()
	if at, ok := p.checked.Get(it.did); ok && now.Sub(at) < statusCheckTTL {
		return false
	}
	if b := it.host.statusChecks; b != nil && !b.AllowN(now, 1) {
		return false
	}
	it.rechecked = true
	p.checked.Add(it.did, now)
	if !c.check(it.host, it.did, func(r statusResult) {
		select {
		case p.rechecked <- r:
		case <-p.ing.stop:
		}
	}) {
		return false
	}
	p.ing.metrics.statusRechecks.with("asked").Inc()
	p.pending[it.did] = append([]*ingestItem{it}, p.pending[it.did]...)
	return true
}

// onRechecked applies a re-check's answer and releases the account's held
// events: if the host says active, the relay's upstream status was stale:
// it is fixed (through the log, as an #account frame) before the events
// are processed again.
func (p *partition) onRechecked(r statusResult) {
	st, err := p.loadAccount(r.did)
	switch {
	case err != nil || st == nil:
	case r.err != nil:
		p.ing.metrics.statusRechecks.with("failed").Inc()
		p.ing.logger.Info("account status re-check failed", "did", r.did, "err", r.err)
	case r.active && st.acct.UpstreamStatus != meta.AccountActive:
		p.ing.metrics.statusRechecks.with("fixed").Inc()
		p.ing.logger.Info("account status was stale: the host says active", "did", r.did, "was", st.acct.UpstreamStatus)
		st.acct.UpstreamStatus = meta.AccountActive
		ev := Outgoing{
			Kind: KindAccount, UID: st.acct.UID,
			Body:   accountFrame(&st.acct, syntax.DatetimeNow().String()),
			Status: &meta.StatusChange{UID: st.acct.UID, Status: st.acct.Status, UpstreamStatus: meta.AccountActive},
		}
		if err := p.ing.submit(context.Background(), ev); err != nil {
			p.ing.logger.Warn("#account after a status re-check not sequenced", "did", r.did, "err", err)
		}
	default:
		p.ing.metrics.statusRechecks.with("confirmed").Inc()
	}
	if info, _ := p.idents.Peek(r.did); info != nil {
		p.release(r.did)
	} else if _, waiting := p.pending[r.did]; waiting {
		p.requestResolve(r.did)
	}
}
