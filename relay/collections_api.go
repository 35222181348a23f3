package relay

import (
	"context"
	"encoding/base64"
	"errors"
	"net/http"
	"strconv"

	"github.com/bluesky-social/indigo/atproto/syntax"

	"github.com/relay/relay/persist/collection"
	"github.com/relay/relay/relay/collections"
)

// listReposByCollection limits (lexicon com.atproto.sync.listReposByCollection).
const (
	defaultListByCollectionLimit = 500
	maxListByCollectionLimit     = 2000
)

// ErrNameIndexBehind: the collection index has not applied everything a
// consumer may have received (503, retry).
const ErrNameIndexBehind = "IndexBehind"

// encodeCollectionCursor makes the opaque cursor: the last DID of the
// page, base64url. Listing is in DID order, so the next page starts
// after it whatever was added or removed meanwhile.
func encodeCollectionCursor(did string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(did))
}

func decodeCollectionCursor(c string) (string, bool) {
	b, err := base64.RawURLEncoding.DecodeString(c)
	if err != nil || len(b) == 0 {
		return "", false
	}
	if _, err := syntax.ParseDID(string(b)); err != nil {
		return "", false
	}
	return string(b), true
}

type listReposByCollectionRepo struct {
	DID string `json:"did"`
}

type listReposByCollectionOut struct {
	Repos  []listReposByCollectionRepo `json:"repos"`
	Cursor string                      `json:"cursor,omitempty"`
}

// handleListReposByCollection serves one page of the DIDs holding records
// of a collection, in DID order, active accounts only. It first waits
// (bounded) until the index has applied every event durable when the
// request arrived, so that a consumer that received an event and then
// asks sees its effect; past the bound it answers 503 IndexBehind rather
// than an answer that may contradict the firehose.
func (r *Relay) handleListReposByCollection(w http.ResponseWriter, req *http.Request) {
	durable := r.log.DurableSeq()
	q := req.URL.Query()
	coll := q.Get("collection")
	if coll == "" {
		writeError(w, http.StatusBadRequest, ErrNameBadRequest, "collection is required")
		return
	}
	if _, err := syntax.ParseNSID(coll); err != nil {
		writeError(w, http.StatusBadRequest, ErrNameBadRequest, "collection is not a valid NSID: "+err.Error())
		return
	}
	limit, ok := queryLimit(w, q, defaultListByCollectionLimit, maxListByCollectionLimit)
	if !ok {
		return
	}
	after := ""
	if c := q.Get("cursor"); c != "" {
		if after, ok = decodeCollectionCursor(c); !ok {
			writeError(w, http.StatusBadRequest, ErrNameBadRequest, "cursor is not a cursor from a previous page")
			return
		}
	}
	if r.coll == nil {
		writeError(w, http.StatusServiceUnavailable, ErrNameIndexBehind, "the collection index is not open")
		return
	}
	ctx, cancel := context.WithTimeout(req.Context(), collectionsWait)
	err := r.coll.svc.WaitApplied(ctx, durable)
	cancel()
	if err != nil {
		w.Header().Set("Retry-After", "1")
		lag := durable - r.coll.ix.Applied()
		writeError(w, http.StatusServiceUnavailable, ErrNameIndexBehind,
			"the collection index is "+strconv.FormatInt(lag, 10)+" events behind the firehose; retry")
		return
	}
	dids, more, err := r.coll.ix.List(coll, after, limit)
	if err != nil {
		r.logger.Error("listReposByCollection failed", "collection", coll, "err", err)
		writeError(w, http.StatusInternalServerError, ErrNameInternal, "collection index read failed")
		return
	}
	out := listReposByCollectionOut{Repos: make([]listReposByCollectionRepo, len(dids))}
	for i, d := range dids {
		out.Repos[i].DID = d
	}
	if more && len(dids) > 0 {
		out.Cursor = encodeCollectionCursor(dids[len(dids)-1])
	}
	writeJSON(w, http.StatusOK, out)
}

// registerCollectionsAdmin adds the collection index's admin endpoints.
func (r *Relay) registerCollectionsAdmin(mux interface {
	HandleFunc(string, func(http.ResponseWriter, *http.Request))
}) {
	mux.HandleFunc("/admin/collections/resync", r.adminOnly(http.MethodPost, r.handleAdminCollectionsResync))
	mux.HandleFunc("/admin/collections/backfill/start", r.adminOnly(http.MethodPost, r.handleAdminBackfillStart))
	mux.HandleFunc("/admin/collections/backfill/status", r.adminOnly(http.MethodGet, r.handleAdminBackfillStatus))
	mux.HandleFunc("/admin/collections/backfill/cancel", r.adminOnly(http.MethodPost, r.handleAdminBackfillCancel))
	mux.HandleFunc("/admin/collections/did", r.adminOnly(http.MethodGet, r.handleAdminCollectionsDID))
}

func (r *Relay) collectionsReady(w http.ResponseWriter) bool {
	if r.coll == nil {
		writeError(w, http.StatusServiceUnavailable, ErrNameIndexBehind, "the collection index is not open")
		return false
	}
	return true
}

// POST /admin/collections/resync {"did"}: rebuild a DID's counts from its PDS.
func (r *Relay) handleAdminCollectionsResync(w http.ResponseWriter, req *http.Request) {
	var body struct {
		DID string `json:"did"`
	}
	if !decodeJSONBody(w, req, &body) || !r.collectionsReady(w) {
		return
	}
	did, err := syntax.ParseDID(body.DID)
	if err != nil {
		writeError(w, http.StatusBadRequest, ErrNameBadRequest, "did is not a valid DID")
		return
	}
	ok, err := r.coll.svc.Resync(did.String(), true)
	if err != nil {
		writeError(w, http.StatusInternalServerError, ErrNameInternal, err.Error())
		return
	}
	if !ok {
		writeError(w, http.StatusBadRequest, ErrNameRepoTakendown, "the account was taken down or deleted")
		return
	}
	r.adminCounter("collections_resync")
	writeJSON(w, http.StatusOK, map[string]any{"did": did.String(), "queued": true})
}

// POST /admin/collections/backfill/start {"source"?, "collections":[...]}.
func (r *Relay) handleAdminBackfillStart(w http.ResponseWriter, req *http.Request) {
	var body struct {
		Source      string   `json:"source"`
		Collections []string `json:"collections"`
	}
	if !decodeJSONBody(w, req, &body) || !r.collectionsReady(w) {
		return
	}
	st, err := r.coll.svc.StartBackfill(body.Source, body.Collections)
	if errors.Is(err, collections.ErrBackfillRunning) {
		writeError(w, http.StatusConflict, ErrNameBadRequest, err.Error())
		return
	}
	if err != nil {
		writeError(w, http.StatusBadRequest, ErrNameBadRequest, err.Error())
		return
	}
	r.adminCounter("collections_backfill_start")
	writeJSON(w, http.StatusOK, st)
}

func (r *Relay) handleAdminBackfillStatus(w http.ResponseWriter, _ *http.Request) {
	if !r.collectionsReady(w) {
		return
	}
	st, ok := r.coll.svc.BackfillStatus()
	if !ok {
		writeJSON(w, http.StatusOK, map[string]any{"state": "none"})
		return
	}
	writeJSON(w, http.StatusOK, st)
}

func (r *Relay) handleAdminBackfillCancel(w http.ResponseWriter, _ *http.Request) {
	if !r.collectionsReady(w) {
		return
	}
	st, err := r.coll.svc.CancelBackfill()
	if err != nil {
		writeError(w, http.StatusInternalServerError, ErrNameInternal, err.Error())
		return
	}
	r.adminCounter("collections_backfill_cancel")
	writeJSON(w, http.StatusOK, st)
}

// GET /admin/collections/did?did=: what the index holds for a DID.
func (r *Relay) handleAdminCollectionsDID(w http.ResponseWriter, req *http.Request) {
	if !r.collectionsReady(w) {
		return
	}
	did, ok := queryDID(w, req.URL.Query())
	if !ok {
		return
	}
	info, err := r.coll.ix.DID(did)
	if err != nil {
		writeError(w, http.StatusInternalServerError, ErrNameInternal, err.Error())
		return
	}
	if info.Counts == nil {
		info.Counts = []collection.Count{}
	}
	writeJSON(w, http.StatusOK, info)
}

// collectionStats is the /_stats section.
func (r *Relay) collectionStats() any {
	if r.coll == nil {
		return nil
	}
	return r.coll.svc.Stats()
}
