package relay

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	comatproto "github.com/bluesky-social/indigo/api/atproto"
	"github.com/bluesky-social/indigo/atproto/syntax"

	"github.com/relay/relay/persist/meta"
)

// Sync read API limits (from the com.atproto.sync lexicons).
const (
	// defaultListReposLimit and maxListReposLimit bound one listRepos page.
	defaultListReposLimit = 500
	maxListReposLimit     = 1000
	// defaultListHostsLimit and maxListHostsLimit bound one listHosts page.
	defaultListHostsLimit = 200
	maxListHostsLimit     = 1000
	// apiStoreTimeout bounds the store work of one read request, so a
	// failing store answers 500 instead of holding the connection.
	apiStoreTimeout = 10 * time.Second
)

// More XRPC error names of the com.atproto.sync lexicons (the common ones
// are in api.go).
const (
	ErrNameRepoSuspended   = "RepoSuspended"
	ErrNameRepoDeactivated = "RepoDeactivated"
	ErrNameRepoDeleted     = "RepoDeleted"
	// ErrNameRepoInactive covers inactive states the lexicon has no name
	// for (desynchronized, throttled upstream), as in the reference relay.
	ErrNameRepoInactive = "RepoInactive"
)

// registerSyncAPI adds the com.atproto.sync read endpoints. They are
// registered without a method so that a wrong method gets a JSON error
// like every other failure.
func (r *Relay) registerSyncAPI(mux *http.ServeMux) {
	for path, h := range map[string]http.HandlerFunc{
		"listRepos":             r.handleListRepos,
		"getRepoStatus":         r.handleGetRepoStatus,
		"getLatestCommit":       r.handleGetLatestCommit,
		"listHosts":             r.handleListHosts,
		"getHostStatus":         r.handleGetHostStatus,
		"getRepo":               r.handleGetRepo,
		"listReposByCollection": r.handleListReposByCollection,
	} {
		mux.HandleFunc("/xrpc/com.atproto.sync."+path, xrpcQuery(h))
	}
}

// xrpcQuery admits only GET and HEAD, the methods of an XRPC query.
func xrpcQuery(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, req *http.Request) {
		if req.Method != http.MethodGet && req.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			writeError(w, http.StatusMethodNotAllowed, ErrNameBadRequest, "XRPC queries take GET")
			return
		}
		h(w, req)
	}
}

// queryPage parses a page request: limit (def when absent, else 1..max)
// and the cursor; on a bad parameter it writes the 400 and ok is false.
func queryPage(w http.ResponseWriter, q url.Values, def, max int) (limit int, after uint64, ok bool) {
	if limit, ok = queryLimit(w, q, def, max); !ok {
		return 0, 0, false
	}
	after, ok = queryCursor(w, q)
	return limit, after, ok
}

// queryLimit parses the limit parameter: def when absent, else 1..max.
// On failure it writes the 400 and returns false.
func queryLimit(w http.ResponseWriter, q url.Values, def, max int) (int, bool) {
	s := q.Get("limit")
	if s == "" {
		return def, true
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > max {
		writeError(w, http.StatusBadRequest, ErrNameBadRequest, "limit must be an integer from 1 to "+strconv.Itoa(max))
		return 0, false
	}
	return n, true
}

// queryCursor parses a cursor that is the last ID of the previous page
// (0 when absent). On failure it writes the 400 and returns false.
func queryCursor(w http.ResponseWriter, q url.Values) (uint64, bool) {
	s := q.Get("cursor")
	if s == "" {
		return 0, true
	}
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		writeError(w, http.StatusBadRequest, ErrNameBadRequest, "cursor must be a non-negative integer from a previous page")
		return 0, false
	}
	return n, true
}

// queryDID parses the required did parameter. On failure it writes the
// 400 and returns false.
func queryDID(w http.ResponseWriter, q url.Values) (string, bool) {
	s := q.Get("did")
	if s == "" {
		writeError(w, http.StatusBadRequest, ErrNameBadRequest, "did is required")
		return "", false
	}
	did, err := syntax.ParseDID(s)
	if err != nil {
		writeError(w, http.StatusBadRequest, ErrNameBadRequest, "did is not a valid DID: "+err.Error())
		return "", false
	}
	return did.String(), true
}

// inactiveError names the lexicon error for an account whose repo is not
// served, or returns "" when it is active.
func inactiveError(a *meta.Account) string {
	if a.IsActive() {
		return ""
	}
	switch accountStatus(a) {
	case meta.AccountTakendown:
		return ErrNameRepoTakendown
	case meta.AccountSuspended:
		return ErrNameRepoSuspended
	case meta.AccountDeactivated:
		return ErrNameRepoDeactivated
	case meta.AccountDeleted:
		return ErrNameRepoDeleted
	}
	return ErrNameRepoInactive
}

// lookupAccount loads the account of did, writing RepoNotFound or a 500
// itself when it cannot.
func (r *Relay) lookupAccount(ctx context.Context, w http.ResponseWriter, did string) (*meta.Account, bool) {
	a, err := r.store.GetAccountByDID(ctx, did)
	if errors.Is(err, meta.ErrNotFound) {
		writeError(w, http.StatusBadRequest, ErrNameRepoNotFound, "the relay has no repo for "+did)
		return nil, false
	}
	if err != nil {
		r.internalError(w, "account lookup failed", err)
		return nil, false
	}
	r.derived.overlayAccount(a)
	return a, true
}

// repoState returns the account's durable head (through the derived-state
// overlay: what a consumer may already have received), or nil when none
// is known.
func (r *Relay) repoState(ctx context.Context, w http.ResponseWriter, uid uint64) (*meta.RepoState, bool) {
	if rs, ok := r.derived.repo(uid); ok {
		return &rs, true
	}
	rs, err := r.store.GetRepoState(ctx, uid)
	if errors.Is(err, meta.ErrNotFound) {
		return nil, true
	}
	if err != nil {
		r.internalError(w, "repo state lookup failed", err)
		return nil, false
	}
	return rs, true
}

// internalError logs err and answers a generic 500 (store details are not
// the client's business).
func (r *Relay) internalError(w http.ResponseWriter, what string, err error) {
	r.logger.Error("api: "+what, "err", err)
	writeError(w, http.StatusInternalServerError, ErrNameInternal, what)
}

// handleListRepos pages through accounts by UID. Accounts without a known
// head (no commit accepted yet) are skipped, since head and rev are
// required; the cursor still advances past them.
func (r *Relay) handleListRepos(w http.ResponseWriter, req *http.Request) {
	q := req.URL.Query()
	limit, after, ok := queryPage(w, q, defaultListReposLimit, maxListReposLimit)
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(req.Context(), apiStoreTimeout)
	defer cancel()
	accts, err := r.store.ListAccounts(ctx, after, limit)
	if err != nil {
		r.internalError(w, "listing accounts failed", err)
		return
	}
	out := comatproto.SyncListRepos_Output{Repos: make([]*comatproto.SyncListRepos_Repo, 0, len(accts))}
	actives := make([]bool, len(accts)) // one allocation for every Active pointer
	for i, a := range accts {
		r.derived.overlayAccount(a)
		rs, ok := r.repoState(ctx, w, a.UID)
		if !ok {
			return
		}
		if rs == nil {
			continue
		}
		actives[i] = a.IsActive()
		out.Repos = append(out.Repos, &comatproto.SyncListRepos_Repo{
			Did: a.DID, Head: rs.CommitCID, Rev: rs.Rev, Active: &actives[i], Status: statusField(a),
		})
	}
	if len(accts) == limit {
		c := strconv.FormatUint(accts[len(accts)-1].UID, 10)
		out.Cursor = &c
	}
	writeJSON(w, http.StatusOK, &out)
}

func (r *Relay) handleGetRepoStatus(w http.ResponseWriter, req *http.Request) {
	did, ok := queryDID(w, req.URL.Query())
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(req.Context(), apiStoreTimeout)
	defer cancel()
	a, ok := r.lookupAccount(ctx, w, did)
	if !ok {
		return
	}
	rs, ok := r.repoState(ctx, w, a.UID)
	if !ok {
		return
	}
	out := comatproto.SyncGetRepoStatus_Output{Did: a.DID, Active: a.IsActive(), Status: statusField(a)}
	// The lexicon gives rev "if active=true", and a real PDS omits it for
	// an inactive account (indigo's relay sends it regardless).
	if rs != nil && out.Active {
		out.Rev = &rs.Rev
	}
	writeJSON(w, http.StatusOK, &out)
}

// handleGetLatestCommit answers the account's head, or the error its
// status calls for. An account with no accepted commit yet is
// RepoNotFound: the relay has no repo to describe.
func (r *Relay) handleGetLatestCommit(w http.ResponseWriter, req *http.Request) {
	did, ok := queryDID(w, req.URL.Query())
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(req.Context(), apiStoreTimeout)
	defer cancel()
	a, ok := r.lookupAccount(ctx, w, did)
	if !ok {
		return
	}
	if name := inactiveError(a); name != "" {
		writeError(w, http.StatusBadRequest, name, "repo is not active: "+string(accountStatus(a)))
		return
	}
	rs, ok := r.repoState(ctx, w, a.UID)
	if !ok {
		return
	}
	if rs == nil {
		writeError(w, http.StatusBadRequest, ErrNameRepoNotFound, "no commit of "+did+" has been relayed yet")
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
// the live cursor and status when the host is tracked (the stored cursor
// lags by up to cursorFlushInterval).
func (r *Relay) hostView(rec *meta.Host) *comatproto.SyncListHosts_Host {
	seq, status, count := rec.Cursor, rec.Status, rec.AccountCount
	if h := r.hosts.byID(rec.ID); h != nil {
		info := h.info()
		seq, status = info.Cursor, info.Status
	}
	st := lexiconHostStatus(status)
	return &comatproto.SyncListHosts_Host{Hostname: rec.Hostname, Seq: &seq, Status: &st, AccountCount: &count}
}

// handleListHosts pages through hosts by ID, oldest first.
func (r *Relay) handleListHosts(w http.ResponseWriter, req *http.Request) {
	q := req.URL.Query()
	limit, after, ok := queryPage(w, q, defaultListHostsLimit, maxListHostsLimit)
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(req.Context(), apiStoreTimeout)
	defer cancel()
	hosts, err := r.store.ListHosts(ctx, after, limit)
	if err != nil {
		r.internalError(w, "listing hosts failed", err)
		return
	}
	out := comatproto.SyncListHosts_Output{Hosts: make([]*comatproto.SyncListHosts_Host, 0, len(hosts))}
	for _, rec := range hosts {
		out.Hosts = append(out.Hosts, r.hostView(rec))
	}
	if len(hosts) == limit {
		c := strconv.FormatUint(hosts[len(hosts)-1].ID, 10)
		out.Cursor = &c
	}
	writeJSON(w, http.StatusOK, &out)
}

// hostKey turns a hostname parameter into the form hosts are stored
// under; malformed input is ErrBadHostname.
func (r *Relay) hostKey(raw string) (string, error) {
	host, _, err := normalizeHostname(raw, r.cfg.AllowInsecureHosts)
	if err != nil {
		// A host stored under a policy that has since changed (insecure
		// hosts no longer allowed) can still be looked up and managed.
		s := strings.ToLower(strings.TrimSpace(raw))
		if s != "" && r.hosts.byHostname(s) != nil {
			return s, nil
		}
		return "", err
	}
	return host, nil
}

func (r *Relay) handleGetHostStatus(w http.ResponseWriter, req *http.Request) {
	raw := req.URL.Query().Get("hostname")
	if raw == "" {
		writeError(w, http.StatusBadRequest, ErrNameBadRequest, "hostname is required")
		return
	}
	host, err := r.hostKey(raw)
	if err != nil {
		writeError(w, http.StatusBadRequest, ErrNameBadRequest, err.Error())
		return
	}
	ctx, cancel := context.WithTimeout(req.Context(), apiStoreTimeout)
	defer cancel()
	rec, err := r.store.GetHostByName(ctx, host)
	if errors.Is(err, meta.ErrNotFound) {
		writeError(w, http.StatusBadRequest, ErrNameHostNotFound, "the relay does not know "+host)
		return
	}
	if err != nil {
		r.internalError(w, "host lookup failed", err)
		return
	}
	v := r.hostView(rec)
	writeJSON(w, http.StatusOK, &comatproto.SyncGetHostStatus_Output{
		Hostname: v.Hostname, Seq: v.Seq, Status: v.Status, AccountCount: v.AccountCount,
	})
}

// handleGetRepo redirects to the account's current PDS, which serves the
// repo CAR; the relay keeps no repos. Accounts that are not active get
// their lexicon error instead, so the relay does not point at content it
// took down.
func (r *Relay) handleGetRepo(w http.ResponseWriter, req *http.Request) {
	q := req.URL.Query()
	did, ok := queryDID(w, q)
	if !ok {
		return
	}
	since := q.Get("since")
	if since != "" {
		if _, err := syntax.ParseTID(since); err != nil {
			writeError(w, http.StatusBadRequest, ErrNameBadRequest, "since is not a valid rev (TID)")
			return
		}
	}
	ctx, cancel := context.WithTimeout(req.Context(), apiStoreTimeout)
	defer cancel()
	a, ok := r.lookupAccount(ctx, w, did)
	if !ok {
		return
	}
	if name := inactiveError(a); name != "" {
		writeError(w, http.StatusBadRequest, name, "repo is not active: "+string(accountStatus(a)))
		return
	}
	var hostname string
	var noSSL bool
	if h := r.hosts.byID(a.HostID); h != nil {
		hostname, noSSL = h.name, h.noSSL
	} else {
		rec, err := r.store.GetHost(ctx, a.HostID)
		if err != nil {
			r.internalError(w, "host lookup failed", err)
			return
		}
		hostname, noSSL = rec.Hostname, rec.NoSSL
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
