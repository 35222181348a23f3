package httpapi

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"strconv"

	comatproto "github.com/bluesky-social/indigo/api/atproto"
	"github.com/bluesky-social/indigo/atproto/syntax"

	"github.com/relay/relay/persist/meta"
	"github.com/relay/relay/relay"
	"github.com/relay/relay/relay/lexicon"
)

// Sync read API limits (from the com.atproto.sync lexicons).
const (
	// defaultListReposLimit and maxListReposLimit bound one listRepos page.
	defaultListReposLimit = 500
	maxListReposLimit     = 1000
	// defaultListHostsLimit and maxListHostsLimit bound one listHosts page.
	defaultListHostsLimit = 200
	maxListHostsLimit     = 1000
)

// registerSyncAPI adds the com.atproto.sync read endpoints. They are
// registered without a method so that a wrong method gets a JSON error
// like every other failure.
func (a *api) registerSyncAPI(mux *http.ServeMux) {
	for path, h := range map[string]http.HandlerFunc{
		"listRepos":             a.handleListRepos,
		"getRepoStatus":         a.handleGetRepoStatus,
		"getLatestCommit":       a.handleGetLatestCommit,
		"listHosts":             a.handleListHosts,
		"getHostStatus":         a.handleGetHostStatus,
		"getRepo":               a.handleGetRepo,
		"listReposByCollection": a.handleListReposByCollection,
	} {
		mux.HandleFunc("/xrpc/com.atproto.sync."+path, xrpcQuery(h))
	}
}

// handleSubscribeRepos validates the cursor before the upgrade (a bad one
// is a 400, not a WebSocket error) and hands the connection to the domain.
func (a *api) handleSubscribeRepos(w http.ResponseWriter, req *http.Request) {
	cursor := int64(-1)
	if s := req.URL.Query().Get("cursor"); s != "" {
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil || v < 0 {
			writeError(w, http.StatusBadRequest, lexicon.BadRequest, "cursor must be a non-negative integer")
			return
		}
		cursor = v
	}
	err := a.r.Subscribe(w, req, cursor)
	if errors.Is(err, relay.ErrTooManyConsumers) {
		writeError(w, http.StatusServiceUnavailable, lexicon.TooManyConsumers, "the relay serves its maximum number of consumers; retry later")
		return
	}
	if err != nil {
		a.logger.Debug("subscribeRepos upgrade failed", "remote", req.RemoteAddr, "err", err)
	}
}

func (a *api) handleRequestCrawl(w http.ResponseWriter, req *http.Request) {
	hostname, ok := bodyField(w, req, "hostname")
	if !ok {
		return
	}
	if err := a.r.RequestCrawl(req.Context(), hostname, a.isAdmin(req), req.Header.Get(relay.ForwardedHeader) != ""); err != nil {
		a.writeCrawlError(w, err)
		return
	}
	w.WriteHeader(http.StatusOK)
}

func (a *api) writeCrawlError(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, relay.ErrHostBanned), errors.Is(err, relay.ErrHostBlockedCrawl), errors.Is(err, relay.ErrHostIsRelay):
		writeError(w, http.StatusBadRequest, lexicon.HostBanned, err.Error())
	case errors.Is(err, relay.ErrNewHostLimit):
		writeError(w, http.StatusTooManyRequests, lexicon.RateLimitExceeded, err.Error())
	case errors.Is(err, relay.ErrBadHostname), errors.Is(err, relay.ErrDescribeServer):
		writeError(w, http.StatusBadRequest, lexicon.BadRequest, err.Error())
	default:
		a.logger.Error("requestCrawl failed", "err", err)
		writeError(w, http.StatusInternalServerError, lexicon.Internal, "could not add host")
	}
}

// queryDID parses the required did parameter. On failure it writes the
// 400 and returns false.
func queryDID(w http.ResponseWriter, q url.Values) (string, bool) {
	s := q.Get("did")
	if s == "" {
		writeError(w, http.StatusBadRequest, lexicon.BadRequest, "did is required")
		return "", false
	}
	did, err := syntax.ParseDID(s)
	if err != nil {
		writeError(w, http.StatusBadRequest, lexicon.BadRequest, "did is not a valid DID: "+err.Error())
		return "", false
	}
	return did.String(), true
}

// inactiveError names the lexicon error for an account whose repo is not
// served, or returns "" when it is active.
func inactiveError(acct *meta.Account) string {
	if acct.IsActive() {
		return ""
	}
	switch relay.AccountStatus(acct) {
	case meta.AccountTakendown:
		return lexicon.RepoTakendown
	case meta.AccountSuspended:
		return lexicon.RepoSuspended
	case meta.AccountDeactivated:
		return lexicon.RepoDeactivated
	case meta.AccountDeleted:
		return lexicon.RepoDeleted
	}
	return lexicon.RepoInactive
}

// lookupAccount loads the account of did, writing RepoNotFound or a 500
// itself when it cannot.
func (a *api) lookupAccount(ctx context.Context, w http.ResponseWriter, did string) (*meta.Account, bool) {
	acct, err := a.r.Account(ctx, did)
	if errors.Is(err, meta.ErrNotFound) {
		writeError(w, http.StatusBadRequest, lexicon.RepoNotFound, "the relay has no repo for "+did)
		return nil, false
	}
	if err != nil {
		a.internalError(w, "account lookup failed", err)
		return nil, false
	}
	return acct, true
}

// repoHead returns the account's durable head, or nil when none is known,
// writing a 500 itself when the store fails.
func (a *api) repoHead(ctx context.Context, w http.ResponseWriter, uid uint64) (*meta.RepoState, bool) {
	rs, err := a.r.RepoHead(ctx, uid)
	if err != nil {
		a.internalError(w, "repo state lookup failed", err)
		return nil, false
	}
	return rs, true
}

// pageCursor is the cursor of a full page: its last ID.
func pageCursor(n, limit int, lastID uint64) *string {
	if n != limit {
		return nil
	}
	c := strconv.FormatUint(lastID, 10)
	return &c
}

// handleListRepos pages through accounts by UID. Accounts without a known
// head (no commit accepted yet) are skipped, since head and rev are
// required; the cursor still advances past them.
func (a *api) handleListRepos(w http.ResponseWriter, req *http.Request) {
	limit, after, ok := queryPage(w, req.URL.Query(), defaultListReposLimit, maxListReposLimit)
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(req.Context(), storeTimeout)
	defer cancel()
	accts, err := a.r.ListAccounts(ctx, after, limit)
	if err != nil {
		a.internalError(w, "listing accounts failed", err)
		return
	}
	out := comatproto.SyncListRepos_Output{Repos: make([]*comatproto.SyncListRepos_Repo, 0, len(accts))}
	actives := make([]bool, len(accts)) // one allocation for every Active pointer
	for i, acct := range accts {
		rs, ok := a.repoHead(ctx, w, acct.UID)
		if !ok {
			return
		}
		if rs == nil {
			continue
		}
		actives[i] = acct.IsActive()
		out.Repos = append(out.Repos, &comatproto.SyncListRepos_Repo{
			Did: string(acct.DID), Head: rs.CommitCID, Rev: rs.Rev, Active: &actives[i], Status: relay.StatusField(acct),
		})
	}
	if len(accts) > 0 {
		out.Cursor = pageCursor(len(accts), limit, accts[len(accts)-1].UID)
	}
	writeJSON(w, http.StatusOK, &out)
}

// accountHead reads the did parameter, the account (active when
// requireActive) and its head (nil: none yet), writing any error itself.
func (a *api) accountHead(w http.ResponseWriter, req *http.Request, requireActive bool) (*meta.Account, *meta.RepoState, bool) {
	did, ok := queryDID(w, req.URL.Query())
	if !ok {
		return nil, nil, false
	}
	ctx, cancel := context.WithTimeout(req.Context(), storeTimeout)
	defer cancel()
	var acct *meta.Account
	if requireActive {
		acct, ok = a.activeAccount(ctx, w, did)
	} else {
		acct, ok = a.lookupAccount(ctx, w, did)
	}
	if !ok {
		return nil, nil, false
	}
	rs, ok := a.repoHead(ctx, w, acct.UID)
	return acct, rs, ok
}

func (a *api) handleGetRepoStatus(w http.ResponseWriter, req *http.Request) {
	acct, rs, ok := a.accountHead(w, req, false)
	if !ok {
		return
	}
	out := comatproto.SyncGetRepoStatus_Output{Did: string(acct.DID), Active: acct.IsActive(), Status: relay.StatusField(acct)}
	// The lexicon gives rev "if active=true", and a real PDS omits it for
	// an inactive account (indigo's relay sends it regardless).
	if rs != nil && out.Active {
		out.Rev = &rs.Rev
	}
	writeJSON(w, http.StatusOK, &out)
}

// activeAccount loads the account of the request's did and requires it to
// be active, writing the error its status calls for itself.
func (a *api) activeAccount(ctx context.Context, w http.ResponseWriter, did string) (*meta.Account, bool) {
	acct, ok := a.lookupAccount(ctx, w, did)
	if !ok {
		return nil, false
	}
	if name := inactiveError(acct); name != "" {
		writeError(w, http.StatusBadRequest, name, "repo is not active: "+string(relay.AccountStatus(acct)))
		return nil, false
	}
	return acct, true
}

// handleGetLatestCommit answers the account's head, or the error its
// status calls for. An account with no accepted commit yet is
// RepoNotFound: the relay has no repo to describe.
func (a *api) handleGetLatestCommit(w http.ResponseWriter, req *http.Request) {
	acct, rs, ok := a.accountHead(w, req, true)
	if !ok {
		return
	}
	if rs == nil {
		writeError(w, http.StatusBadRequest, lexicon.RepoNotFound, "no commit of "+string(acct.DID)+" has been relayed yet")
		return
	}
	writeJSON(w, http.StatusOK, &comatproto.SyncGetLatestCommit_Output{Cid: rs.CommitCID, Rev: rs.Rev})
}

// lexiconHostStatus maps a host status to the lexicon's known values
// (active, idle, offline, throttled, banned): an admin block is reported
// as banned, as the reference relay does.
func lexiconHostStatus(s meta.HostStatus) string {
	if s == meta.HostBlocked {
		return string(meta.HostBanned)
	}
	return string(s)
}

// hostView is a host as the sync API reports it: the stored record, with
// the live cursor and status when the host is tracked.
func (a *api) hostView(rec *meta.Host) *comatproto.SyncListHosts_Host {
	seq, status := a.r.LiveHostStatus(rec)
	count := rec.AccountCount
	st := lexiconHostStatus(status)
	return &comatproto.SyncListHosts_Host{Hostname: rec.Hostname, Seq: &seq, Status: &st, AccountCount: &count}
}

// handleListHosts pages through hosts by ID, oldest first.
func (a *api) handleListHosts(w http.ResponseWriter, req *http.Request) {
	limit, after, ok := queryPage(w, req.URL.Query(), defaultListHostsLimit, maxListHostsLimit)
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(req.Context(), storeTimeout)
	defer cancel()
	hosts, err := a.r.ListHosts(ctx, after, limit)
	if err != nil {
		a.internalError(w, "listing hosts failed", err)
		return
	}
	out := comatproto.SyncListHosts_Output{Hosts: make([]*comatproto.SyncListHosts_Host, 0, len(hosts))}
	for _, rec := range hosts {
		out.Hosts = append(out.Hosts, a.hostView(rec))
	}
	if len(hosts) > 0 {
		out.Cursor = pageCursor(len(hosts), limit, hosts[len(hosts)-1].ID)
	}
	writeJSON(w, http.StatusOK, &out)
}

func (a *api) handleGetHostStatus(w http.ResponseWriter, req *http.Request) {
	raw := req.URL.Query().Get("hostname")
	if raw == "" {
		writeError(w, http.StatusBadRequest, lexicon.BadRequest, "hostname is required")
		return
	}
	ctx, cancel := context.WithTimeout(req.Context(), storeTimeout)
	defer cancel()
	rec, host, err := a.r.HostByName(ctx, raw)
	switch {
	case errors.Is(err, relay.ErrBadHostname):
		writeError(w, http.StatusBadRequest, lexicon.BadRequest, err.Error())
		return
	case errors.Is(err, meta.ErrNotFound):
		writeError(w, http.StatusBadRequest, lexicon.HostNotFound, "the relay does not know "+host)
		return
	case err != nil:
		a.internalError(w, "host lookup failed", err)
		return
	}
	v := a.hostView(rec)
	writeJSON(w, http.StatusOK, &comatproto.SyncGetHostStatus_Output{
		Hostname: v.Hostname, Seq: v.Seq, Status: v.Status, AccountCount: v.AccountCount,
	})
}

// handleGetRepo redirects to the account's current PDS, which serves the
// repo CAR; the relay keeps no repos. Accounts that are not active get
// their lexicon error instead, so the relay does not point at content it
// took down.
func (a *api) handleGetRepo(w http.ResponseWriter, req *http.Request) {
	q := req.URL.Query()
	did, ok := queryDID(w, q)
	if !ok {
		return
	}
	since := q.Get("since")
	if since != "" {
		if _, err := syntax.ParseTID(since); err != nil {
			writeError(w, http.StatusBadRequest, lexicon.BadRequest, "since is not a valid rev (TID)")
			return
		}
	}
	ctx, cancel := context.WithTimeout(req.Context(), storeTimeout)
	defer cancel()
	acct, ok := a.activeAccount(ctx, w, did)
	if !ok {
		return
	}
	hostname, noSSL, err := a.r.AccountHost(ctx, acct)
	if err != nil {
		a.internalError(w, "host lookup failed", err)
		return
	}
	u := url.URL{Scheme: "https", Host: hostname, Path: "/xrpc/com.atproto.sync.getRepo"}
	if noSSL {
		u.Scheme = "http"
	}
	params := url.Values{"did": {did}}
	if since != "" {
		params.Set("since", since)
	}
	u.RawQuery = params.Encode()
	http.Redirect(w, req, u.String(), http.StatusFound)
}
