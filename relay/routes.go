package relay

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
)

// maxJSONBody bounds request bodies of POST endpoints.
const maxJSONBody = 64 << 10

// registerRoutes adds the sync, crawl and admin endpoints.
func (r *Relay) registerRoutes(mux *http.ServeMux) {
	mux.HandleFunc("POST /xrpc/com.atproto.sync.requestCrawl", r.handleRequestCrawl)
	r.registerSyncAPI(mux)
	r.registerAdminAPI(mux)
	r.registerCollectionsAdmin(mux)
}

// decodeJSONBody reads a bounded JSON body into v, writing the 400 itself.
func decodeJSONBody(w http.ResponseWriter, req *http.Request, v any) bool {
	body := http.MaxBytesReader(w, req.Body, maxJSONBody)
	dec := json.NewDecoder(body)
	if err := dec.Decode(v); err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			writeError(w, http.StatusBadRequest, ErrNameBadRequest, "request body too large")
			return false
		}
		writeError(w, http.StatusBadRequest, ErrNameBadRequest, "invalid JSON body: "+err.Error())
		return false
	}
	if _, err := io.Copy(io.Discard, body); err != nil {
		writeError(w, http.StatusBadRequest, ErrNameBadRequest, "request body too large")
		return false
	}
	return true
}

// bodyField decodes a JSON object body and returns its string member
// field, which is required: {"hostname"}, {"did"}, {"domain"}.
func bodyField(w http.ResponseWriter, req *http.Request, field string) (string, bool) {
	var in map[string]json.RawMessage
	if !decodeJSONBody(w, req, &in) {
		return "", false
	}
	var v string
	if raw, ok := in[field]; ok {
		if err := json.Unmarshal(raw, &v); err != nil {
			writeError(w, http.StatusBadRequest, ErrNameBadRequest, "invalid JSON body: "+field+": "+err.Error())
			return "", false
		}
	}
	if strings.TrimSpace(v) == "" {
		writeError(w, http.StatusBadRequest, ErrNameBadRequest, field+" is required")
		return "", false
	}
	return v, true
}

func (r *Relay) handleRequestCrawl(w http.ResponseWriter, req *http.Request) {
	hostname, ok := bodyField(w, req, "hostname")
	if !ok {
		return
	}
	_, err := r.hosts.AddHost(req.Context(), hostname, r.isAdmin(req))
	if err != nil {
		r.writeCrawlError(w, err)
		return
	}
	w.WriteHeader(http.StatusOK)
}

func (r *Relay) writeCrawlError(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, ErrHostBanned), errors.Is(err, ErrHostBlockedCrawl), errors.Is(err, ErrHostIsRelay):
		writeError(w, http.StatusBadRequest, ErrNameHostBanned, err.Error())
	case errors.Is(err, ErrNewHostLimit):
		writeError(w, http.StatusTooManyRequests, "RateLimitExceeded", err.Error())
	case errors.Is(err, ErrBadHostname), errors.Is(err, ErrDescribeServer):
		writeError(w, http.StatusBadRequest, ErrNameBadRequest, err.Error())
	default:
		r.logger.Error("requestCrawl failed", "err", err)
		writeError(w, http.StatusInternalServerError, ErrNameInternal, "could not add host")
	}
}

// isAdmin reports whether the request carries the admin password, as
// "Authorization: Bearer <password>" or HTTP Basic admin:<password>. Both
// sides are hashed before a constant-time compare, so neither the content
// nor the length of the password leaks through timing. With no password
// configured nobody is admin.
func (r *Relay) isAdmin(req *http.Request) bool {
	if r.cfg.AdminPassword == "" {
		return false
	}
	want := sha256.Sum256([]byte(r.cfg.AdminPassword))
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
