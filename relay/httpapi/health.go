package httpapi

import (
	"context"
	"net/http"
)

func (a *api) handleHealth(w http.ResponseWriter, req *http.Request) {
	ctx, cancel := context.WithTimeout(req.Context(), healthTimeout)
	defer cancel()
	if why := a.r.Health(ctx); why != "" {
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "error", "error": why})
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

func (a *api) handleStats(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, a.r.Stats())
}
