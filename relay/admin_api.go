package relay

import (
	"cmp"
	"context"
	"errors"
	"net/http"
	"slices"
	"strings"
	"time"
)

// ErrNameDomainNotBanned is the admin API's error name for removing a ban
// that does not exist.
const ErrNameDomainNotBanned = "DomainNotBanned"

// registerAdminAPI adds the /admin/ endpoints, all behind adminOnly.
func (r *Relay) registerAdminAPI(mux *http.ServeMux) {
	routes := []struct {
		method, path string
		h            http.HandlerFunc
	}{
		{http.MethodGet, "/admin/hosts", r.handleAdminHosts},
		{http.MethodPost, "/admin/hosts/block", r.handleAdminBlock},
		{http.MethodPost, "/admin/hosts/unblock", r.handleAdminUnblock},
		{http.MethodPost, "/admin/hosts/changeLimits", r.handleAdminChangeLimits},
		{http.MethodPost, "/admin/accounts/takedown", r.handleAdminTakedown},
		{http.MethodPost, "/admin/accounts/reverseTakedown", r.handleAdminReverseTakedown},
		{http.MethodGet, "/admin/domainBans", r.handleAdminDomainBans},
		{http.MethodPost, "/admin/domainBans/add", r.handleAdminAddDomainBan},
		{http.MethodPost, "/admin/domainBans/remove", r.handleAdminRemoveDomainBan},
		{http.MethodGet, "/admin/consumers", r.handleAdminConsumers},
	}
	for _, rt := range routes {
		mux.HandleFunc(rt.path, r.adminOnly(rt.method, rt.h))
	}
	// Unknown admin paths also need the password: without it, nobody
	// learns which admin endpoints exist.
	mux.HandleFunc("/admin/", r.adminOnly("", func(w http.ResponseWriter, req *http.Request) {
		writeError(w, http.StatusNotFound, ErrNameNotFound, "no such admin endpoint: "+req.URL.Path)
	}))
}

// adminOnly checks the admin password before anything else: 403 when the
// admin API is disabled (no password configured), 401 when the request
// has no or a wrong password. method "" admits any method.
func (r *Relay) adminOnly(method string, h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, req *http.Request) {
		if r.cfg.AdminPassword == "" {
			writeError(w, http.StatusForbidden, ErrNameForbidden, "the admin API is disabled (RELAY_ADMIN_PASSWORD is not set)")
			return
		}
		if !r.isAdmin(req) {
			w.Header().Set("WWW-Authenticate", `Basic realm="relay admin"`)
			writeError(w, http.StatusUnauthorized, ErrNameAuthRequired, "admin password required (Bearer token or Basic admin:<password>)")
			return
		}
		if method != "" && req.Method != method {
			w.Header().Set("Allow", method)
			writeError(w, http.StatusMethodNotAllowed, ErrNameBadRequest, req.URL.Path+" takes "+method)
			return
		}
		h(w, req)
	}
}

// adminContext detaches an action from its request (see
// adminActionTimeout).
func adminContext(req *http.Request) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(req.Context()), adminActionTimeout)
}

// writeAdminError maps an admin action's error to a status and a name.
func (r *Relay) writeAdminError(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, ErrBadHostname), errors.Is(err, ErrBadDID), errors.Is(err, ErrBadDomain), errors.Is(err, ErrBadAccountLimit):
		writeError(w, http.StatusBadRequest, ErrNameBadRequest, err.Error())
	case errors.Is(err, ErrHostNotFound):
		writeError(w, http.StatusBadRequest, ErrNameHostNotFound, err.Error())
	case errors.Is(err, ErrAccountNotFound):
		writeError(w, http.StatusBadRequest, ErrNameRepoNotFound, err.Error())
	case errors.Is(err, ErrDomainNotBanned):
		writeError(w, http.StatusBadRequest, ErrNameDomainNotBanned, err.Error())
	default:
		r.logger.Error("admin action failed", "err", err)
		writeError(w, http.StatusInternalServerError, ErrNameInternal, err.Error())
	}
}

// AdminHost is one host in GET /admin/hosts.
type AdminHost struct {
	ID           uint64           `json:"id"`
	Hostname     string           `json:"hostname"`
	Status       string           `json:"status"`
	NoSSL        bool             `json:"noSSL"`
	Trusted      bool             `json:"trusted"`
	Cursor       int64            `json:"cursor"`
	Failures     int              `json:"failures"`
	AccountCount int64            `json:"accountCount"`
	AccountLimit int64            `json:"accountLimit"`
	Connected    bool             `json:"connected"`
	Inflight     int              `json:"inflight"`
	Received     int64            `json:"received"`
	Drops        map[string]int64 `json:"drops"`
	CreatedAt    time.Time        `json:"createdAt"`
}

func (r *Relay) handleAdminHosts(w http.ResponseWriter, _ *http.Request) {
	infos := r.hosts.Hosts()
	slices.SortFunc(infos, func(a, b HostInfo) int { return cmp.Compare(a.ID, b.ID) })
	out := make([]AdminHost, len(infos))
	for i, h := range infos {
		out[i] = AdminHost{
			ID: h.ID, Hostname: h.Hostname, Status: string(h.Status), NoSSL: h.NoSSL, Trusted: h.Trusted,
			Cursor: h.Cursor, Failures: h.Failures, AccountCount: h.AccountCount, AccountLimit: h.AccountLimit,
			Connected: h.Connected, Inflight: h.Inflight, Received: h.Received, Drops: h.Drops, CreatedAt: h.CreatedAt,
		}
	}
	writeJSON(w, http.StatusOK, map[string]any{"hosts": out})
}

func (r *Relay) handleAdminBlock(w http.ResponseWriter, req *http.Request) {
	name, ok := bodyField(w, req, "hostname")
	if !ok {
		return
	}
	ctx, cancel := adminContext(req)
	defer cancel()
	rec, err := r.BlockHost(ctx, name)
	if err != nil {
		r.writeAdminError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"success": true, "hostname": rec.Hostname, "status": rec.Status})
}

func (r *Relay) handleAdminUnblock(w http.ResponseWriter, req *http.Request) {
	name, ok := bodyField(w, req, "hostname")
	if !ok {
		return
	}
	ctx, cancel := adminContext(req)
	defer cancel()
	rec, err := r.UnblockHost(ctx, name)
	if err != nil {
		r.writeAdminError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"success": true, "hostname": rec.Hostname, "status": rec.Status})
}

func (r *Relay) handleAdminChangeLimits(w http.ResponseWriter, req *http.Request) {
	var in struct {
		Hostname     string `json:"hostname"`
		AccountLimit *int64 `json:"accountLimit"`
		Trusted      *bool  `json:"trusted"`
	}
	if !decodeJSONBody(w, req, &in) {
		return
	}
	if strings.TrimSpace(in.Hostname) == "" {
		writeError(w, http.StatusBadRequest, ErrNameBadRequest, "hostname is required")
		return
	}
	if in.AccountLimit == nil && in.Trusted == nil {
		writeError(w, http.StatusBadRequest, ErrNameBadRequest, "accountLimit or trusted is required")
		return
	}
	ctx, cancel := adminContext(req)
	defer cancel()
	rec, err := r.ChangeHostLimits(ctx, in.Hostname, in.AccountLimit, in.Trusted)
	if err != nil {
		r.writeAdminError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"success": true, "hostname": rec.Hostname, "accountLimit": rec.AccountLimit, "trusted": rec.Trusted,
	})
}

func (r *Relay) handleAdminTakedown(w http.ResponseWriter, req *http.Request) {
	did, ok := bodyField(w, req, "did")
	if !ok {
		return
	}
	ctx, cancel := adminContext(req)
	defer cancel()
	res, err := r.TakedownAccount(ctx, did)
	if err != nil {
		r.writeAdminError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, res)
}

func (r *Relay) handleAdminReverseTakedown(w http.ResponseWriter, req *http.Request) {
	did, ok := bodyField(w, req, "did")
	if !ok {
		return
	}
	ctx, cancel := adminContext(req)
	defer cancel()
	res, err := r.ReverseTakedown(ctx, did)
	if err != nil {
		r.writeAdminError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, res)
}

func (r *Relay) handleAdminDomainBans(w http.ResponseWriter, req *http.Request) {
	ctx, cancel := context.WithTimeout(req.Context(), apiStoreTimeout)
	defer cancel()
	bans, err := r.store.ListDomainBans(ctx)
	if err != nil {
		r.internalError(w, "listing domain bans failed", err)
		return
	}
	if bans == nil {
		bans = []string{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"domains": bans})
}

func (r *Relay) handleAdminAddDomainBan(w http.ResponseWriter, req *http.Request) {
	raw, ok := bodyField(w, req, "domain")
	if !ok {
		return
	}
	ctx, cancel := adminContext(req)
	defer cancel()
	domain, err := r.AddDomainBan(ctx, raw)
	if err != nil {
		r.writeAdminError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"success": true, "domain": domain})
}

func (r *Relay) handleAdminRemoveDomainBan(w http.ResponseWriter, req *http.Request) {
	raw, ok := bodyField(w, req, "domain")
	if !ok {
		return
	}
	ctx, cancel := adminContext(req)
	defer cancel()
	domain, err := r.RemoveDomainBan(ctx, raw)
	if err != nil {
		r.writeAdminError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"success": true, "domain": domain})
}

func (r *Relay) handleAdminConsumers(w http.ResponseWriter, _ *http.Request) {
	cs := r.bc.Consumers()
	slices.SortFunc(cs, func(a, b ConsumerInfo) int { return cmp.Compare(a.ID, b.ID) })
	writeJSON(w, http.StatusOK, map[string]any{"consumers": cs})
}
