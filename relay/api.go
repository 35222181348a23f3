package relay

import (
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"time"
)

// XRPC error names used by the API (from the com.atproto.sync lexicons and
// the XRPC spec).
const (
	ErrNameBadRequest    = "BadRequest"
	ErrNameInternal      = "InternalServerError"
	ErrNameNotFound      = "NotFound"
	ErrNameMethod        = "MethodNotImplemented"
	ErrNameAuthRequired  = "AuthRequired"
	ErrNameForbidden     = "Forbidden"
	ErrNameRepoNotFound  = "RepoNotFound"
	ErrNameHostNotFound  = "HostNotFound"
	ErrNameHostBanned    = "HostBanned"
	ErrNameRepoTakendown = "RepoTakendown"
	// ErrNameTooManyConsumers: subscribeRepos refused at RELAY_MAX_CONSUMERS.
	ErrNameTooManyConsumers = "TooManyConsumers"
)

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

// apiHandler routes RELAY_PORT: the firehose, the sync API, admin, stats.
func (r *Relay) apiHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /xrpc/com.atproto.sync.subscribeRepos", r.handleSubscribeRepos)
	mux.HandleFunc("GET /_health", r.handleHealth)
	mux.HandleFunc("GET /_stats", r.handleStats)
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("AT Protocol relay. Firehose: /xrpc/com.atproto.sync.subscribeRepos\n"))
	})
	r.registerRoutes(mux)
	mux.HandleFunc("/", func(w http.ResponseWriter, req *http.Request) {
		writeError(w, http.StatusNotFound, ErrNameNotFound, "no such endpoint: "+req.URL.Path)
	})
	return mux
}

// handleSubscribeRepos validates the cursor before the upgrade (a bad one
// is a 400, not a WebSocket error) and hands the connection to the loops.
func (r *Relay) handleSubscribeRepos(w http.ResponseWriter, req *http.Request) {
	cursor := int64(-1)
	if s := req.URL.Query().Get("cursor"); s != "" {
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil || v < 0 {
			writeError(w, http.StatusBadRequest, ErrNameBadRequest, "cursor must be a non-negative integer")
			return
		}
		cursor = v
	}
	err := r.bc.Subscribe(w, req, cursor, r.cfg.MaxConsumers)
	if errors.Is(err, ErrTooManyConsumers) {
		r.metrics.consumersRefused.Inc()
		writeError(w, http.StatusServiceUnavailable, ErrNameTooManyConsumers, "the relay serves its maximum number of consumers; retry later")
		return
	}
	if err != nil {
		r.logger.Debug("subscribeRepos upgrade failed", "remote", req.RemoteAddr, "err", err)
	}
}

// Stats is the /_stats document.
type Stats struct {
	UptimeSeconds   float64 `json:"uptimeSeconds"`
	HeadSeq         int64   `json:"headSeq"`
	OldestSeq       int64   `json:"oldestSeq"`
	RingEvents      int64   `json:"ringEvents"`
	RingBytes       int64   `json:"ringBytes"`
	EventLogBytes   int64   `json:"eventLogBytes"`
	EventLogSegs    int     `json:"eventLogSegments"`
	SequencerQueue  int     `json:"sequencerQueue"`
	Consumers       int     `json:"consumers"`
	FramesDelivered uint64  `json:"framesDelivered"`
	Ingest          any     `json:"ingest,omitempty"`
	Collections     any     `json:"collections,omitempty"`
}

func (r *Relay) stats() Stats {
	ls := r.log.Stats()
	s := Stats{
		UptimeSeconds:   time.Since(r.started).Seconds(),
		HeadSeq:         r.ring.Head(),
		OldestSeq:       ls.OldestSeq,
		RingEvents:      r.ring.Len(),
		RingBytes:       r.ring.Bytes(),
		EventLogBytes:   ls.Bytes,
		EventLogSegs:    ls.Segments,
		SequencerQueue:  r.seq.QueueLen(),
		Consumers:       r.bc.Count(),
		FramesDelivered: r.metrics.framesDelivered.Get(),
	}
	r.addStats(&s)
	return s
}

func (r *Relay) handleStats(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, r.stats())
}

// addStats adds ingest figures to /_stats.
func (r *Relay) addStats(s *Stats) {
	s.Ingest = map[string]any{
		"workerQueue":    r.ing.QueueLen(),
		"hostsConnected": r.hosts.connectedCount(),
		"hostsKnown":     r.hosts.hostCount(),
	}
	s.Collections = r.collectionStats()
}
