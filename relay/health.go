package relay

import (
	"context"
	"net/http"
	"time"
)

// healthTimeout bounds the readiness probe's store check.
const healthTimeout = 2 * time.Second

// metricsHandler routes RELAY_METRICS_PORT.
func (r *Relay) metricsHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		r.metrics.WritePrometheus(w)
	})
	mux.HandleFunc("GET /_healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /_readyz", r.handleHealth)
	mux.HandleFunc("GET /_health", r.handleHealth)
	mux.Handle("/dash/", r.dashboardHandler()) // read-only live dashboard (relay/dashboard)
	return mux
}

// health reports why the relay is not ready, or "" when it is: the
// sequencer must be running, the store reachable, and ingest not stalled
// while hosts are connected (coverage is not health).
func (r *Relay) health(ctx context.Context) string {
	if err := r.seq.Err(); err != nil {
		return "event log failed: " + err.Error()
	}
	return r.readiness(ctx)
}

func (r *Relay) handleHealth(w http.ResponseWriter, req *http.Request) {
	ctx, cancel := context.WithTimeout(req.Context(), healthTimeout)
	defer cancel()
	if why := r.health(ctx); why != "" {
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "error", "error": why})
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

// readiness checks the store and that ingest is not stalled.
func (r *Relay) readiness(ctx context.Context) string {
	if err := r.store.Ping(ctx); err != nil {
		return "metadata store unreachable: " + err.Error()
	}
	if r.hosts.connectedCount() > 0 {
		last := r.hosts.lastIngest.Load()
		if last == 0 {
			last = r.started.UnixNano()
		}
		if idle := time.Since(time.Unix(0, last)); idle > r.cfg.IngestStallTimeout {
			return "ingest stalled: hosts connected but nothing ingested for " + idle.Round(time.Second).String()
		}
	}
	return ""
}
