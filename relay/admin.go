package relay

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/bluesky-social/indigo/atproto/syntax"

	"github.com/relay/relay/persist/meta"
)

// Admin action limits.
const (
	// disconnectWait bounds how long BlockHost waits for the host's socket
	// to close, so that when it returns no further event is read from it.
	disconnectWait = 5 * time.Second
	// maxDomainLen is the longest DNS name (RFC 1035).
	maxDomainLen = 253
	// maxLabelLen is the longest DNS label.
	maxLabelLen = 63
	// takedownNoticeUID is the event log UID of takedown #account frames.
	// It is no account's UID (stores assign UIDs from 1), so the scrub
	// that follows a takedown leaves the notice in place: a consumer
	// replaying from before the takedown still learns of it.
	takedownNoticeUID = 0
)

// Admin action errors; the admin API maps them to error names.
var (
	ErrHostNotFound    = errors.New("relay: unknown host")
	ErrAccountNotFound = errors.New("relay: unknown account")
	ErrBadDID          = errors.New("relay: malformed DID")
	ErrBadDomain       = errors.New("relay: malformed domain")
	ErrDomainNotBanned = errors.New("relay: domain is not banned")
	ErrBadAccountLimit = errors.New("relay: account limit must be >= 0")
	ErrNotDurable      = errors.New("relay: #account frame was not made durable in time")
)

// adminCounter counts admin actions by action name.
func (r *Relay) adminCounter(action string) {
	r.metrics.AdminAction(action)
}

// trackedHost returns the host an admin names, or ErrBadHostname /
// ErrHostNotFound.
func (r *Relay) trackedHost(raw string) (*hostConn, error) {
	name, err := r.hostKey(raw)
	if err != nil {
		return nil, err
	}
	h := r.hosts.byHostname(name)
	if h == nil {
		return nil, fmt.Errorf("%w: %s", ErrHostNotFound, name)
	}
	return h, nil
}

// BlockHost marks a host blocked (persisted, so it stays blocked across
// restarts) and disconnects it at once. A blocked host is not redialed
// and requestCrawl refuses it. Events it sent before the block that are
// already being validated are still relayed; its cursor is kept, so an
// unblock resumes where it stopped.
func (r *Relay) BlockHost(ctx context.Context, hostname string) (meta.Host, error) {
	h, err := r.trackedHost(hostname)
	if err != nil {
		return meta.Host{}, err
	}
	rec, err := r.hosts.persistHost(ctx, h, func(rec *meta.Host) { rec.Status = meta.HostBlocked })
	// Disconnect even if persisting failed: the block holds in memory.
	r.hosts.disconnect(h, ErrHostBlocked)
	if err != nil {
		return rec, err
	}
	r.adminCounter("block_host")
	r.logger.Info("admin: host blocked", "host", h.name)
	return rec, nil
}

// UnblockHost makes a blocked or banned host active again and connects it
// from its cursor.
func (r *Relay) UnblockHost(ctx context.Context, hostname string) (meta.Host, error) {
	h, err := r.trackedHost(hostname)
	if err != nil {
		return meta.Host{}, err
	}
	rec, err := r.hosts.persistHost(ctx, h, func(rec *meta.Host) {
		rec.Status = meta.HostActive
		rec.Failures = 0
	})
	if err != nil {
		return rec, err
	}
	r.hosts.connect(h)
	r.adminCounter("unblock_host")
	r.logger.Info("admin: host unblocked", "host", h.name)
	return rec, nil
}

// ChangeHostLimits sets a host's account limit (0: no limit) and, when
// trusted is not nil, whether it is trusted. The event rate limits follow
// at once; throttled accounts that now fit the limit are promoted, oldest
// first (promoteThrottled).
func (r *Relay) ChangeHostLimits(ctx context.Context, hostname string, accountLimit *int64, trusted *bool) (meta.Host, error) {
	if accountLimit != nil && *accountLimit < 0 {
		return meta.Host{}, ErrBadAccountLimit
	}
	h, err := r.trackedHost(hostname)
	if err != nil {
		return meta.Host{}, err
	}
	rec, err := r.hosts.persistHost(ctx, h, func(rec *meta.Host) {
		if accountLimit != nil {
			rec.AccountLimit = *accountLimit
		}
		if trusted != nil {
			rec.Trusted = *trusted
		}
	})
	if err != nil {
		return rec, err
	}
	h.rate.set(h.limits()) // live: the host's next event is measured against them
	h.ident.Store(identityLimiter(rec.AccountLimit, h.trusted()))
	r.adminCounter("change_limits")
	promoted, perr := r.promoteThrottled(ctx, h)
	r.logger.Info("admin: host limits changed", "host", h.name, "accountLimit", rec.AccountLimit, "trusted", rec.Trusted, "promoted", promoted)
	if perr != nil {
		return rec, fmt.Errorf("promote throttled accounts: %w", perr)
	}
	return rec, nil
}

// TakedownResult reports what a takedown or its reversal did.
type TakedownResult struct {
	DID    string             `json:"did"`
	UID    uint64             `json:"uid"`
	Status meta.AccountStatus `json:"status"`
	// Seq is the relay seq of the #account frame emitted (0: the status
	// was already set, nothing emitted).
	Seq int64 `json:"seq"`
	// Scrubbed is the number of event log records newly zero-filled.
	Scrubbed int `json:"scrubbed"`
}

// statusChange is what setLocalStatus reports from the account's
// partition.
type statusChange struct {
	uid     uint64
	changed bool
	durable chan int64 // receives the #account frame's seq once durable
	err     error
}

// setLocalStatus sets the account's local status on the partition that
// owns it (so it does not race its events), persists it, and emits the
// resulting #account frame through the sequencer.
func (r *Relay) setLocalStatus(ctx context.Context, did string, status meta.AccountStatus, frameUID func(uid uint64) uint64) (statusChange, error) {
	done := make(chan statusChange, 1)
	err := r.ing.Exec(ctx, did, func(p *partition) {
		if err := ctx.Err(); err != nil {
			done <- statusChange{err: err} // the caller gave up: change nothing
			return
		}
		st, err := p.loadAccount(did)
		if err != nil {
			done <- statusChange{err: err}
			return
		}
		if st == nil {
			done <- statusChange{err: fmt.Errorf("%w: %s", ErrAccountNotFound, did)}
			return
		}
		if st.acct.Status == status {
			done <- statusChange{uid: st.acct.UID}
			return
		}
		// The status is derived state of the #account frame: the store
		// gets it with the frame's checkpoint, never ahead of the log.
		prev := st.acct
		updated := st.acct
		updated.Status = status
		st.acct = updated
		durable := make(chan int64, 1)
		ev := Outgoing{
			Kind: KindAccount, UID: frameUID(updated.UID),
			Body:   accountFrame(&updated, syntax.DatetimeNow().String()),
			Status: &meta.StatusChange{UID: updated.UID, Status: updated.Status, UpstreamStatus: updated.UpstreamStatus},
			Done: func(seq int64, err error) {
				if err == nil {
					durable <- seq
				} else {
					close(durable)
				}
			},
		}
		if err := r.seq.Submit(ctx, ev); err != nil {
			st.acct = prev
			done <- statusChange{uid: updated.UID, err: fmt.Errorf("emit #account: %w", err)}
			return
		}
		done <- statusChange{uid: updated.UID, changed: true, durable: durable}
	})
	if err != nil {
		return statusChange{}, err
	}
	select {
	case res := <-done:
		return res, res.err
	case <-ctx.Done():
		return statusChange{}, ctx.Err()
	}
}

// waitDurable waits for the #account frame of a status change.
func waitDurable(ctx context.Context, res statusChange) (int64, error) {
	if res.durable == nil {
		return 0, nil
	}
	select {
	case seq, ok := <-res.durable:
		if !ok {
			return 0, ErrNotDurable
		}
		return seq, nil
	case <-ctx.Done():
		return 0, fmt.Errorf("%w: %w", ErrNotDurable, ctx.Err())
	}
}

func parseDID(raw string) (string, error) {
	did, err := syntax.ParseDID(strings.TrimSpace(raw))
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrBadDID, err)
	}
	return did.String(), nil
}

// TakedownAccount sets the account's local status to takendown, emits an
// #account frame (active=false, status=takendown), and once that frame is
// durable, zero-fills every earlier event of the account in the event log
// and the ring, so neither replay nor live fan-out serves them again.
//
// Waiting for the frame makes the scrub complete: the partition stopped
// accepting the account's events when the status changed, and everything
// it accepted before was submitted to the sequencer before the frame, so
// it is in the log and the ring by the time the frame is durable. The
// scrub cannot be reversed.
func (r *Relay) TakedownAccount(ctx context.Context, raw string) (TakedownResult, error) {
	did, err := parseDID(raw)
	if err != nil {
		return TakedownResult{}, err
	}
	res, err := r.setLocalStatus(ctx, did, meta.AccountTakendown, func(uint64) uint64 { return takedownNoticeUID })
	out := TakedownResult{DID: did, UID: res.uid, Status: meta.AccountTakendown}
	if err != nil && !res.changed {
		return out, err
	}
	// From here the status is set: scrub even if the frame could not be
	// emitted or made durable in time (nothing of the account is accepted
	// any more, so the scrub can only be short of frames still in flight).
	seq, werr := waitDurable(ctx, res)
	out.Seq = seq
	n, serr := r.log.Takedown(res.uid)
	out.Scrubbed = n
	r.ring.Takedown(res.uid)
	r.adminCounter("takedown")
	r.logger.Info("admin: account taken down", "did", did, "uid", res.uid, "seq", seq, "scrubbed", n)
	if serr != nil {
		serr = fmt.Errorf("scrub event log: %w", serr)
	}
	return out, errors.Join(err, werr, serr)
}

// ReverseTakedown sets the account's local status back to active and
// emits its #account frame (which is active only if the upstream status
// is). Events scrubbed by the takedown stay scrubbed.
func (r *Relay) ReverseTakedown(ctx context.Context, raw string) (TakedownResult, error) {
	did, err := parseDID(raw)
	if err != nil {
		return TakedownResult{}, err
	}
	res, err := r.setLocalStatus(ctx, did, meta.AccountActive, func(uid uint64) uint64 { return uid })
	out := TakedownResult{DID: did, UID: res.uid, Status: meta.AccountActive}
	if err != nil {
		return out, err
	}
	seq, err := waitDurable(ctx, res)
	out.Seq = seq
	r.adminCounter("reverse_takedown")
	r.logger.Info("admin: takedown reversed", "did", did, "uid", res.uid, "seq", seq)
	return out, err
}

// normalizeDomain validates a domain to ban: lower-case DNS labels,
// without a trailing dot. A single label (a TLD, or "localhost") is
// allowed.
func normalizeDomain(raw string) (string, error) {
	d := strings.TrimSuffix(strings.ToLower(strings.TrimSpace(raw)), ".")
	if d == "" || len(d) > maxDomainLen {
		return "", fmt.Errorf("%w: %q", ErrBadDomain, raw)
	}
	for _, label := range strings.Split(d, ".") {
		if label == "" || len(label) > maxLabelLen || label[0] == '-' || label[len(label)-1] == '-' {
			return "", fmt.Errorf("%w: %q", ErrBadDomain, raw)
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '-' {
				return "", fmt.Errorf("%w: %q", ErrBadDomain, raw)
			}
		}
	}
	return d, nil
}

// reloadBans refreshes the in-memory ban list from the store.
func (r *Relay) reloadBans(ctx context.Context) error {
	bans, err := r.store.ListDomainBans(ctx)
	if err != nil {
		return fmt.Errorf("reload domain bans: %w", err)
	}
	r.bans.set(bans)
	return nil
}

// AddDomainBan bans a domain and every name under it: requestCrawl and
// the bootstrap refuse such hosts, and known hosts under it are marked
// banned and disconnected. Banning a banned domain is not an error.
func (r *Relay) AddDomainBan(ctx context.Context, raw string) (string, error) {
	domain, err := normalizeDomain(raw)
	if err != nil {
		return "", err
	}
	if err := r.store.AddDomainBan(ctx, domain); err != nil && !errors.Is(err, meta.ErrExists) {
		return domain, fmt.Errorf("store domain ban: %w", err)
	}
	if err := r.reloadBans(ctx); err != nil {
		return domain, err
	}
	var errs []error
	for _, h := range r.hosts.allHosts() {
		if h.status() == meta.HostBlocked || h.status() == meta.HostBanned || !r.bans.banned(h.name) {
			continue
		}
		if _, err := r.hosts.persistHost(ctx, h, func(rec *meta.Host) { rec.Status = meta.HostBanned }); err != nil {
			errs = append(errs, err)
		}
		r.hosts.disconnect(h, ErrHostBanned)
		r.logger.Info("admin: host banned by domain ban", "host", h.name, "domain", domain)
	}
	r.adminCounter("add_domain_ban")
	return domain, errors.Join(errs...)
}

// RemoveDomainBan lifts a ban. Hosts it had banned that no other ban
// covers become active and are connected again; hosts an admin blocked
// stay blocked.
func (r *Relay) RemoveDomainBan(ctx context.Context, raw string) (string, error) {
	domain, err := normalizeDomain(raw)
	if err != nil {
		return "", err
	}
	if err := r.store.RemoveDomainBan(ctx, domain); err != nil {
		if errors.Is(err, meta.ErrNotFound) {
			return domain, fmt.Errorf("%w: %s", ErrDomainNotBanned, domain)
		}
		return domain, fmt.Errorf("remove domain ban: %w", err)
	}
	if err := r.reloadBans(ctx); err != nil {
		return domain, err
	}
	removed := domainBans{list: []string{domain}}
	var errs []error
	for _, h := range r.hosts.allHosts() {
		if h.status() != meta.HostBanned || !removed.banned(h.name) || r.bans.banned(h.name) {
			continue
		}
		if _, err := r.hosts.persistHost(ctx, h, func(rec *meta.Host) {
			rec.Status = meta.HostActive
			rec.Failures = 0
		}); err != nil {
			errs = append(errs, err)
			continue
		}
		r.hosts.connect(h)
		r.logger.Info("admin: host unbanned by domain ban removal", "host", h.name, "domain", domain)
	}
	r.adminCounter("remove_domain_ban")
	return domain, errors.Join(errs...)
}
