package relay

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/relay/relay/persist/meta"
)

// Host lifecycle (README "Host statuses"): an offline host is probed again
// with a slow backoff; a host that says our cursor is in its future (a
// reset PDS) resumes live from its head once describeServer shows it is
// still a PDS; a host that says our cursor is older than its retention
// resumes live and its accounts are resynced instead of replaying its
// whole window.
const (
	// offlineProbeBase and offlineProbeMax bound the wait between probes
	// of an offline host (doubling from the base).
	offlineProbeBase = time.Hour
	offlineProbeMax  = 24 * time.Hour
	// cursorResetTimeout bounds the describeServer check before a reset.
	cursorResetTimeout = 30 * time.Second
)

// Lifecycle errors.
var (
	// ErrUpstreamOutdated: the host's #info OutdatedCursor: our cursor is
	// older than what it retains.
	ErrUpstreamOutdated = errors.New("relay: host says our cursor is older than its retention")
	// ErrCursorReset closes a host whose cursor an admin reset.
	ErrCursorReset = errors.New("relay: host cursor reset")
)

// offlineProbe is the wait before probe number n (1-based) of an offline
// host: 1 h, 2 h, 4 h ... capped at 24 h, with jitter in [d/2, d].
func offlineProbe(n int) time.Duration {
	d := offlineProbeBase << min(max(n-1, 0), 8)
	if d > offlineProbeMax || d <= 0 {
		d = offlineProbeMax
	}
	return d/2 + rand.N(d/2+1)
}

// resetToLive forgets h's cursor: the next subscription starts at the
// host's head. The stored repo revs still refuse anything the relay
// already has, and the next checkpoint stores the new cursor.
func (m *HostManager) resetToLive(h *hostConn, reason string) {
	h.tracker.reset(0)
	h.subscribed.Store(false)
	m.metrics.cursorResets.with(reason).Inc()
	m.checkpointSoon()
}

// onFutureCursor handles a host that answered FutureCursor to our cursor:
// a PDS whose seq was reset. If describeServer shows it is still a PDS,
// resume live from its current head; else wait idle as before.
func (m *HostManager) onFutureCursor(h *hostConn) {
	defer m.wg.Done()
	ctx, cancel := context.WithTimeout(context.Background(), cursorResetTimeout)
	err := m.describeServer(ctx, h.name, h.noSSL)
	cancel()
	if err != nil {
		m.logger.Warn("host says our cursor is in its future and does not describe itself; idle", "host", h.name, "err", err, "retry_in", idleRetry)
		m.writeHost(h)
		m.retryLater(h, idleRetry)
		return
	}
	m.logger.Warn("host says our cursor is in its future (a reset PDS); resuming from its head", "host", h.name, "cursor", h.tracker.lastSeq())
	m.resetToLive(h, "future_cursor")
	m.setStatus(h, meta.HostActive)
	m.connect(h)
}

// onOutdatedCursor handles a host whose retention no longer has our
// cursor: resume live, and resync its accounts (their repos may have
// changed in the events we skip).
func (m *HostManager) onOutdatedCursor(h *hostConn) {
	m.logger.Warn("host says our cursor is older than its retention; resuming live and resyncing its accounts", "host", h.name, "cursor", h.tracker.lastSeq())
	m.resetToLive(h, "outdated_cursor")
	m.resyncAccountsOf(h)
	m.retryLater(h, m.backoff(0))
}

// ResetHostCursor is the admin action: the host's cursor is forgotten and
// it is resubscribed live from its head.
func (r *Relay) ResetHostCursor(ctx context.Context, hostname string) (meta.Host, error) {
	h, err := r.trackedHost(hostname)
	if err != nil {
		return meta.Host{}, err
	}
	r.hosts.disconnect(h, ErrCursorReset)
	r.hosts.resetToLive(h, "admin")
	rec, err := r.hosts.persistHost(ctx, h, func(*meta.Host) {})
	r.hosts.connect(h)
	if err != nil {
		return rec, fmt.Errorf("persist host: %w", err)
	}
	r.adminCounter("reset_cursor")
	r.logger.Info("admin: host cursor reset", "host", h.name)
	return rec, nil
}

// hostAccountsPage is the page size of hostAccounts' store scan.
const hostAccountsPage = 1000

// hostAccounts calls fn for each account of the host, in creation (UID)
// order, through the derived-state overlay. The store has no per-host
// index, so this pages through every account: for admin actions and
// rare lifecycle events, not the hot path.
func (r *Relay) hostAccounts(ctx context.Context, hostID uint64, fn func(a *meta.Account) error) error {
	after := uint64(0)
	for {
		pctx, cancel := context.WithTimeout(ctx, hostWriteTimeout)
		page, err := r.store.ListAccounts(pctx, after, hostAccountsPage)
		cancel()
		if err != nil {
			return fmt.Errorf("list accounts: %w", err)
		}
		for _, a := range page {
			if a.HostID != hostID {
				continue
			}
			r.derived.overlayAccount(a)
			if err := fn(a); err != nil {
				return err
			}
		}
		if len(page) < hostAccountsPage {
			return nil
		}
		after = page[len(page)-1].UID
	}
}

// resyncHostAccounts asks the collection index to resync every account of
// the host (bounded by the resync queue, whose refusals are retried by the
// index's own rescan).
func (r *Relay) resyncHostAccounts(hostID uint64) {
	if r.coll == nil || r.coll.svc == nil {
		return
	}
	queued := 0
	err := r.hostAccounts(context.Background(), hostID, func(a *meta.Account) error {
		if ok, _ := r.coll.svc.Resync(string(a.DID), false); ok {
			queued++
		}
		return nil
	})
	if err != nil {
		r.logger.Error("resync of a host's accounts failed", "host", hostID, "err", err)
	}
	r.logger.Info("resyncs scheduled for a host's accounts", "host", hostID, "queued", queued)
}

// promoteThrottled activates the host's throttled accounts that fit its
// account limit now: in creation order, the host's first `limit` accounts
// are active (every account, for a trusted host or a limit of 0). Each
// promotion goes through the account's worker and the log like a status
// change (an #account frame), and asks the collection index to resync the
// account, so what it wrote while throttled is not lost to consumers that
// use the index or getRepo.
func (r *Relay) promoteThrottled(ctx context.Context, h *hostConn) (int, error) {
	limit, trusted := h.info().AccountLimit, h.trusted()
	idx, promoted := int64(0), 0
	err := r.hostAccounts(ctx, h.id, func(a *meta.Account) error {
		fits := trusted || limit <= 0 || idx < limit
		idx++
		if a.Status != meta.AccountThrottled || !fits {
			return nil
		}
		res, err := r.setLocalStatus(ctx, string(a.DID), meta.AccountActive, func(uid uint64) uint64 { return uid })
		if err == nil {
			_, err = waitDurable(ctx, res)
		}
		if err != nil {
			return fmt.Errorf("promote %s: %w", a.DID, err)
		}
		promoted++
		if r.coll != nil && r.coll.svc != nil {
			if _, err := r.coll.svc.Resync(string(a.DID), true); err != nil {
				r.logger.Warn("resync of a promoted account failed to queue", "did", a.DID, "err", err)
			}
		}
		return nil
	})
	return promoted, err
}

// refuseRelay handles a recorded host that turns out to be a relay (its
// Server header): subscribing would loop the network's events back. A
// host that never relayed anything is removed, so the relay does not keep
// a row for it; one that did (its accounts, its cursor) is banned.
func (m *HostManager) refuseRelay(h *hostConn) {
	info := h.info()
	if info.AccountCount == 0 && info.Cursor == 0 {
		ctx, cancel := context.WithTimeout(context.Background(), hostWriteTimeout)
		err := m.store.DeleteHost(ctx, h.id)
		cancel()
		if err == nil {
			m.untrack(h)
			m.metrics.hostsRemoved.with("relay").Inc()
			m.logger.Warn("host is a relay; its record is removed", "host", h.name)
			return
		}
		m.logger.Info("relay host not removed; banning it", "host", h.name, "err", err)
	}
	m.logger.Warn("host is a relay; banning to avoid a loop", "host", h.name)
	m.setStatus(h, meta.HostBanned)
}

// untrack forgets a removed host.
func (m *HostManager) untrack(h *hostConn) {
	h.mu.Lock()
	h.rec.Status = meta.HostBanned // a late redial timer finds it refused
	if h.timer != nil {
		h.timer.Stop()
		h.timer = nil
	}
	h.mu.Unlock()
	m.mu.Lock()
	delete(m.hosts, h.id)
	delete(m.byName, h.name)
	m.mu.Unlock()
}

// staleCursor reports whether h's cursor is older than maxCursorAge: the
// relay was down since downSince (zero: running), or the host has been
// offline or idle since its record last changed. Replaying that much of a
// host's history would be a storm of old events, most of which its
// accounts have since overwritten.
func (m *HostManager) staleCursor(h *hostConn, downSince time.Time) bool {
	if m.policy.maxCursorAge <= 0 || h.tracker.lastSeq() == 0 {
		return false
	}
	h.mu.Lock()
	status, since := h.rec.Status, h.rec.UpdatedAt
	h.mu.Unlock()
	now := time.Now()
	if !downSince.IsZero() && now.Sub(downSince) > m.policy.maxCursorAge {
		return true
	}
	away := status == meta.HostOffline || status == meta.HostIdle
	return away && !since.IsZero() && now.Sub(since) > m.policy.maxCursorAge
}

// onStaleCursor resumes h live and resyncs its accounts.
func (m *HostManager) onStaleCursor(h *hostConn) {
	m.logger.Warn("host cursor older than the maximum cursor age; resuming live and resyncing its accounts",
		"host", h.name, "cursor", h.tracker.lastSeq(), "max_age", m.policy.maxCursorAge)
	m.resetToLive(h, "stale_cursor")
	m.resyncAccountsOf(h)
}

// resyncAccountsOf queues resyncs of h's accounts in the background, one
// pass per host at a time: a host that keeps sending OutdatedCursor cannot
// start a scan of the store on every reconnect.
func (m *HostManager) resyncAccountsOf(h *hostConn) {
	if m.resyncHost == nil || !h.resyncing.CompareAndSwap(false, true) {
		return
	}
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		defer h.resyncing.Store(false)
		m.resyncHost(h.id)
	}()
}
