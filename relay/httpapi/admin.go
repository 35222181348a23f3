package httpapi

import (
	"cmp"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"net/http"
	"slices"
	"strings"

	"github.com/relay/relay/relay"
	"github.com/relay/relay/relay/lexicon"
)

// registerAdminAPI adds the /admin/ endpoints, all behind adminOnly.
func (a *api) registerAdminAPI(mux *http.ServeMux) {
	routes := []struct {
		method, path string
		h            http.HandlerFunc
	}{
		{http.MethodGet, "/admin/hosts", a.handleAdminHosts},
		{http.MethodPost, "/admin/hosts/block", a.handleAdminBlock},
		{http.MethodPost, "/admin/hosts/unblock", a.handleAdminUnblock},
		{http.MethodPost, "/admin/hosts/changeLimits", a.handleAdminChangeLimits},
		{http.MethodPost, "/admin/hosts/resetCursor", a.handleAdminResetCursor},
		{http.MethodPost, "/admin/accounts/takedown", a.handleAdminTakedown},
		{http.MethodPost, "/admin/accounts/reverseTakedown", a.handleAdminReverseTakedown},
		{http.MethodGet, "/admin/domainBans", a.handleAdminDomainBans},
		{http.MethodPost, "/admin/domainBans/add", a.handleAdminAddDomainBan},
		{http.MethodPost, "/admin/domainBans/remove", a.handleAdminRemoveDomainBan},
		{http.MethodGet, "/admin/consumers", a.handleAdminConsumers},
	}
	for _, rt := range routes {
		mux.HandleFunc(rt.path, a.adminOnly(rt.method, rt.h))
	}
	// Unknown admin paths also need the password: without it, nobody
	// learns which admin endpoints exist.
	mux.HandleFunc("/admin/", a.adminOnly("", func(w http.ResponseWriter, req *http.Request) {
		writeError(w, http.StatusNotFound, lexicon.NotFound, "no such admin endpoint: "+req.URL.Path)
	}))
}

// adminOnly checks the admin password before anything else: 403 when the
// admin API is disabled (no password configured), 401 when the request
// has no or a wrong password. method "" admits any method.
func (a *api) adminOnly(method string, h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, req *http.Request) {
		if a.cfg.AdminPassword == "" {
			writeError(w, http.StatusForbidden, lexicon.Forbidden, "the admin API is disabled (RELAY_ADMIN_PASSWORD is not set)")
			return
		}
		if !a.isAdmin(req) {
			w.Header().Set("WWW-Authenticate", `Basic realm="relay admin"`)
			writeError(w, http.StatusUnauthorized, lexicon.AuthRequired, "admin password required (Bearer token or Basic admin:<password>)")
			return
		}
		if method != "" && req.Method != method {
			w.Header().Set("Allow", method)
			writeError(w, http.StatusMethodNotAllowed, lexicon.BadRequest, req.URL.Path+" takes "+method)
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
func (a *api) writeAdminError(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, relay.ErrBadHostname), errors.Is(err, relay.ErrBadDID), errors.Is(err, relay.ErrBadDomain), errors.Is(err, relay.ErrBadAccountLimit):
		writeError(w, http.StatusBadRequest, lexicon.BadRequest, err.Error())
	case errors.Is(err, relay.ErrHostNotFound):
		writeError(w, http.StatusBadRequest, lexicon.HostNotFound, err.Error())
	case errors.Is(err, relay.ErrAccountNotFound):
		writeError(w, http.StatusBadRequest, lexicon.RepoNotFound, err.Error())
	case errors.Is(err, relay.ErrDomainNotBanned):
		writeError(w, http.StatusBadRequest, lexicon.DomainNotBanned, err.Error())
	default:
		a.logger.Error("admin action failed", "err", err)
		writeError(w, http.StatusInternalServerError, lexicon.Internal, err.Error())
	}
}

func (a *api) handleAdminHosts(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{"hosts": a.r.AdminHosts()})
}

func (a *api) handleAdminResetCursor(w http.ResponseWriter, req *http.Request) {
	name, ok := bodyField(w, req, "hostname")
	if !ok {
		return
	}
	ctx, cancel := adminContext(req)
	defer cancel()
	rec, err := a.r.ResetHostCursor(ctx, name)
	if err != nil {
		a.writeAdminError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"success": true, "hostname": rec.Hostname, "cursor": rec.Cursor})
}

func (a *api) handleAdminBlock(w http.ResponseWriter, req *http.Request) {
	name, ok := bodyField(w, req, "hostname")
	if !ok {
		return
	}
	ctx, cancel := adminContext(req)
	defer cancel()
	rec, err := a.r.BlockHost(ctx, name)
	if err != nil {
		a.writeAdminError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"success": true, "hostname": rec.Hostname, "status": rec.Status})
}

func (a *api) handleAdminUnblock(w http.ResponseWriter, req *http.Request) {
	name, ok := bodyField(w, req, "hostname")
	if !ok {
		return
	}
	ctx, cancel := adminContext(req)
	defer cancel()
	rec, err := a.r.UnblockHost(ctx, name)
	if err != nil {
		a.writeAdminError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"success": true, "hostname": rec.Hostname, "status": rec.Status})
}

func (a *api) handleAdminChangeLimits(w http.ResponseWriter, req *http.Request) {
	var in struct {
		Hostname     string `json:"hostname"`
		AccountLimit *int64 `json:"accountLimit"`
		Trusted      *bool  `json:"trusted"`
	}
	if !decodeJSONBody(w, req, &in) {
		return
	}
	if strings.TrimSpace(in.Hostname) == "" {
		writeError(w, http.StatusBadRequest, lexicon.BadRequest, "hostname is required")
		return
	}
	if in.AccountLimit == nil && in.Trusted == nil {
		writeError(w, http.StatusBadRequest, lexicon.BadRequest, "accountLimit or trusted is required")
		return
	}
	ctx, cancel := adminContext(req)
	defer cancel()
	rec, err := a.r.ChangeHostLimits(ctx, in.Hostname, in.AccountLimit, in.Trusted)
	if err != nil {
		a.writeAdminError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"success": true, "hostname": rec.Hostname, "accountLimit": rec.AccountLimit, "trusted": rec.Trusted,
	})
}

func (a *api) handleAdminTakedown(w http.ResponseWriter, req *http.Request) {
	did, ok := bodyField(w, req, "did")
	if !ok {
		return
	}
	ctx, cancel := adminContext(req)
	defer cancel()
	res, err := a.r.TakedownAccount(ctx, did)
	if err != nil {
		a.writeAdminError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, res)
}

func (a *api) handleAdminReverseTakedown(w http.ResponseWriter, req *http.Request) {
	did, ok := bodyField(w, req, "did")
	if !ok {
		return
	}
	ctx, cancel := adminContext(req)
	defer cancel()
	res, err := a.r.ReverseTakedown(ctx, did)
	if err != nil {
		a.writeAdminError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, res)
}

func (a *api) handleAdminDomainBans(w http.ResponseWriter, req *http.Request) {
	ctx, cancel := context.WithTimeout(req.Context(), storeTimeout)
	defer cancel()
	bans, err := a.r.DomainBans(ctx)
	if err != nil {
		a.internalError(w, "listing domain bans failed", err)
		return
	}
	if bans == nil {
		bans = []string{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"domains": bans})
}

func (a *api) handleAdminAddDomainBan(w http.ResponseWriter, req *http.Request) {
	raw, ok := bodyField(w, req, "domain")
	if !ok {
		return
	}
	ctx, cancel := adminContext(req)
	defer cancel()
	domain, err := a.r.AddDomainBan(ctx, raw)
	if err != nil {
		a.writeAdminError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"success": true, "domain": domain})
}

func (a *api) handleAdminRemoveDomainBan(w http.ResponseWriter, req *http.Request) {
	raw, ok := bodyField(w, req, "domain")
	if !ok {
		return
	}
	ctx, cancel := adminContext(req)
	defer cancel()
	domain, err := a.r.RemoveDomainBan(ctx, raw)
	if err != nil {
		a.writeAdminError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"success": true, "domain": domain})
}

func (a *api) handleAdminConsumers(w http.ResponseWriter, _ *http.Request) {
	cs := a.r.Consumers()
	slices.SortFunc(cs, func(x, y relay.ConsumerInfo) int { return cmp.Compare(x.ID, y.ID) })
	writeJSON(w, http.StatusOK, map[string]any{"consumers": cs})
}

// isAdmin reports whether the request carries the admin password, as
// "Authorization: Bearer <password>" or HTTP Basic admin:<password>. Both
// sides are hashed before a constant-time compare, so neither the content
// nor the length of the password leaks through timing. With no password
// configured nobody is admin.
func (a *api) isAdmin(req *http.Request) bool {
	if a.cfg.AdminPassword == "" {
		return false
	}
	want := sha256.Sum256([]byte(a.cfg.AdminPassword))
	if user, pass, ok := req.BasicAuth(); ok {
		u := sha256.Sum256([]byte(user))
		admin := sha256.Sum256([]byte("admin"))
		got := sha256.Sum256([]byte(pass))
		return subtle.ConstantTimeCompare(u[:], admin[:])&subtle.ConstantTimeCompare(got[:], want[:]) == 1
	}
	auth := req.Header.Get("Authorization")
	if len(auth) > 7 && strings.EqualFold(auth[:7], "bearer ") {
		got := sha256.Sum256([]byte(strings.TrimSpace(auth[7:])))
		return subtle.ConstantTimeCompare(got[:], want[:]) == 1
	}
	return false
}
