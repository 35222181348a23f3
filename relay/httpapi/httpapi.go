// Package httpapi is the relay's HTTP surface: routing, parameter parsing,
// lexicon errors, admin auth, and the handlers of the firehose upgrade, the
// com.atproto.sync read API, requestCrawl, the admin API, health, stats,
// metrics, the dashboard and the collection index's routes. It holds no
// domain logic: every handler parses its request, calls the exported
// surface of the domain (*relay.Relay) and writes the answer.
package httpapi

import (
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/relay/relay/relay"
	"github.com/relay/relay/relay/dashboard"
	"github.com/relay/relay/relay/lexicon"
)

// Request limits.
const (
	// maxJSONBody bounds request bodies of POST endpoints.
	maxJSONBody = 64 << 10
	// storeTimeout bounds the store work of one read request, so a
	// failing store answers 500 instead of holding the connection.
	storeTimeout = 10 * time.Second
	// healthTimeout bounds the readiness probe's store check.
	healthTimeout = 2 * time.Second
	// adminActionTimeout bounds one admin action. It is detached from the
	// request: an action that changed state finishes (a takedown scrubs
	// the log) even if the admin's client went away.
	adminActionTimeout = 60 * time.Second
	// collectionsWait bounds how long listReposByCollection waits for the
	// collection index to catch up with the firehose.
	collectionsWait = 2 * time.Second
)

// api serves one relay's endpoints.
type api struct {
	r      *relay.Relay
	cfg    relay.Config
	logger *slog.Logger
}

// Handlers builds the relay's two handlers: RELAY_PORT (firehose, sync
// API, admin, stats) and RELAY_METRICS_PORT (metrics, health probes,
// dashboard; none when the metrics listener is disabled). The dashboard's
// sampler runs until the relay closes.
func Handlers(r *relay.Relay) relay.Handlers {
	a := &api{r: r, cfg: r.Config(), logger: r.Logger().With("component", "api")}
	h := relay.Handlers{API: a.apiHandler()}
	if a.cfg.MetricsListen != "" {
		h.Metrics = a.metricsHandler()
	}
	return h
}

// apiHandler routes RELAY_PORT.
func (a *api) apiHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /xrpc/com.atproto.sync.subscribeRepos", a.handleSubscribeRepos)
	mux.HandleFunc("GET /_health", a.handleHealth)
	mux.HandleFunc("GET /_stats", a.handleStats)
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("AT Protocol relay. Firehose: /xrpc/com.atproto.sync.subscribeRepos\n"))
	})
	mux.HandleFunc("POST /xrpc/com.atproto.sync.requestCrawl", a.handleRequestCrawl)
	a.registerSyncAPI(mux)
	a.registerAdminAPI(mux)
	a.registerCollectionsAdmin(mux)
	mux.HandleFunc("/", func(w http.ResponseWriter, req *http.Request) {
		writeError(w, http.StatusNotFound, lexicon.NotFound, "no such endpoint: "+req.URL.Path)
	})
	return mux
}

// metricsHandler routes RELAY_METRICS_PORT.
func (a *api) metricsHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		a.r.Metrics().WritePrometheus(w)
	})
	mux.HandleFunc("GET /_healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /_readyz", a.handleHealth)
	mux.HandleFunc("GET /_health", a.handleHealth)
	d := dashboard.New(a.r.DashboardSource(), dashboard.Options{Logger: a.r.Logger().With("component", "dashboard")})
	a.r.Go(d.Run)
	mux.Handle("/dash/", d) // read-only live dashboard (relay/dashboard)
	return mux
}

// xrpcError is the JSON error body of every failed request.
type xrpcError struct {
	Error   string `json:"error"`
	Message string `json:"message,omitempty"`
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, name, msg string) {
	writeJSON(w, status, xrpcError{Error: name, Message: msg})
}

// internalError logs err and answers a generic 500 (store details are not
// the client's business).
func (a *api) internalError(w http.ResponseWriter, what string, err error) {
	a.logger.Error("api: "+what, "err", err)
	writeError(w, http.StatusInternalServerError, lexicon.Internal, what)
}

// decodeJSONBody reads a bounded JSON body into v, writing the 400 itself.
func decodeJSONBody(w http.ResponseWriter, req *http.Request, v any) bool {
	body := http.MaxBytesReader(w, req.Body, maxJSONBody)
	dec := json.NewDecoder(body)
	if err := dec.Decode(v); err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			writeError(w, http.StatusBadRequest, lexicon.BadRequest, "request body too large")
			return false
		}
		writeError(w, http.StatusBadRequest, lexicon.BadRequest, "invalid JSON body: "+err.Error())
		return false
	}
	if _, err := io.Copy(io.Discard, body); err != nil {
		writeError(w, http.StatusBadRequest, lexicon.BadRequest, "request body too large")
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
			writeError(w, http.StatusBadRequest, lexicon.BadRequest, "invalid JSON body: "+field+": "+err.Error())
			return "", false
		}
	}
	if strings.TrimSpace(v) == "" {
		writeError(w, http.StatusBadRequest, lexicon.BadRequest, field+" is required")
		return "", false
	}
	return v, true
}

// xrpcQuery admits only GET and HEAD, the methods of an XRPC query.
func xrpcQuery(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, req *http.Request) {
		if req.Method != http.MethodGet && req.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			writeError(w, http.StatusMethodNotAllowed, lexicon.BadRequest, "XRPC queries take GET")
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
		writeError(w, http.StatusBadRequest, lexicon.BadRequest, "limit must be an integer from 1 to "+strconv.Itoa(max))
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
		writeError(w, http.StatusBadRequest, lexicon.BadRequest, "cursor must be a non-negative integer from a previous page")
		return 0, false
	}
	return n, true
}
