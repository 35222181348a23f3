package httpapi

import (
	"context"
	"encoding/base64"
	"errors"
	"net/http"
	"strconv"

	"github.com/bluesky-social/indigo/atproto/syntax"

	"github.com/relay/relay/persist/collection"
	"github.com/relay/relay/relay/collections"
	"github.com/relay/relay/relay/lexicon"
)

// listReposByCollection limits (lexicon com.atproto.sync.listReposByCollection).
const (
	defaultListByCollectionLimit = 500
	maxListByCollectionLimit     = 2000
)

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
func (a *api) handleListReposByCollection(w http.ResponseWriter, req *http.Request) {
	durable := a.r.DurableSeq()
	q := req.URL.Query()
	coll := q.Get("collection")
	if coll == "" {
		writeError(w, http.StatusBadRequest, lexicon.BadRequest, "collection is required")
		return
	}
	if _, err := syntax.ParseNSID(coll); err != nil {
		writeError(w, http.StatusBadRequest, lexicon.BadRequest, "collection is not a valid NSID: "+err.Error())
		return
	}
	limit, ok := queryLimit(w, q, defaultListByCollectionLimit, maxListByCollectionLimit)
	if !ok {
		return
	}
	after := ""
	if c := q.Get("cursor"); c != "" {
		if after, ok = decodeCollectionCursor(c); !ok {
			writeError(w, http.StatusBadRequest, lexicon.BadRequest, "cursor is not a cursor from a previous page")
			return
		}
	}
	svc, ix := a.r.Collections(), a.r.CollectionIndex()
	if svc == nil || ix == nil {
		writeError(w, http.StatusServiceUnavailable, lexicon.IndexBehind, "the collection index is not open")
		return
	}
	ctx, cancel := context.WithTimeout(req.Context(), collectionsWait)
	err := svc.WaitApplied(ctx, durable)
	cancel()
	if err != nil {
		w.Header().Set("Retry-After", "1")
		lag := durable - ix.Applied()
		writeError(w, http.StatusServiceUnavailable, lexicon.IndexBehind,
			"the collection index is "+strconv.FormatInt(lag, 10)+" events behind the firehose; retry")
		return
	}
	dids, more, err := ix.List(coll, after, limit)
	if err != nil {
		a.logger.Error("listReposByCollection failed", "collection", coll, "err", err)
		writeError(w, http.StatusInternalServerError, lexicon.Internal, "collection index read failed")
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
func (a *api) registerCollectionsAdmin(mux interface {
	HandleFunc(string, func(http.ResponseWriter, *http.Request))
}) {
	mux.HandleFunc("/admin/collections/resync", a.adminOnly(http.MethodPost, a.handleAdminCollectionsResync))
	mux.HandleFunc("/admin/collections/backfill/start", a.adminOnly(http.MethodPost, a.handleAdminBackfillStart))
	mux.HandleFunc("/admin/collections/backfill/status", a.adminOnly(http.MethodGet, a.handleAdminBackfillStatus))
	mux.HandleFunc("/admin/collections/backfill/cancel", a.adminOnly(http.MethodPost, a.handleAdminBackfillCancel))
	mux.HandleFunc("/admin/collections/did", a.adminOnly(http.MethodGet, a.handleAdminCollectionsDID))
}

func (a *api) collectionsReady(w http.ResponseWriter) bool {
	if a.r.Collections() == nil {
		writeError(w, http.StatusServiceUnavailable, lexicon.IndexBehind, "the collection index is not open")
		return false
	}
	return true
}

// POST /admin/collections/resync {"did"}: rebuild a DID's counts from its PDS.
func (a *api) handleAdminCollectionsResync(w http.ResponseWriter, req *http.Request) {
	var body struct {
		DID string `json:"did"`
	}
	if !decodeJSONBody(w, req, &body) || !a.collectionsReady(w) {
		return
	}
	did, err := syntax.ParseDID(body.DID)
	if err != nil {
		writeError(w, http.StatusBadRequest, lexicon.BadRequest, "did is not a valid DID")
		return
	}
	ok, err := a.r.Collections().Resync(did.String(), true)
	if err != nil {
		writeError(w, http.StatusInternalServerError, lexicon.Internal, err.Error())
		return
	}
	if !ok {
		writeError(w, http.StatusBadRequest, lexicon.RepoTakendown, "the account was taken down or deleted")
		return
	}
	a.r.Metrics().AdminAction("collections_resync")
	writeJSON(w, http.StatusOK, map[string]any{"did": did.String(), "queued": true})
}

// POST /admin/collections/backfill/start {"source"?, "collections":[...]}.
func (a *api) handleAdminBackfillStart(w http.ResponseWriter, req *http.Request) {
	var body struct {
		Source      string   `json:"source"`
		Collections []string `json:"collections"`
	}
	if !decodeJSONBody(w, req, &body) || !a.collectionsReady(w) {
		return
	}
	st, err := a.r.Collections().StartBackfill(body.Source, body.Collections)
	if errors.Is(err, collections.ErrBackfillRunning) {
		writeError(w, http.StatusConflict, lexicon.BadRequest, err.Error())
		return
	}
	if err != nil {
		writeError(w, http.StatusBadRequest, lexicon.BadRequest, err.Error())
		return
	}
	a.r.Metrics().AdminAction("collections_backfill_start")
	writeJSON(w, http.StatusOK, st)
}

func (a *api) handleAdminBackfillStatus(w http.ResponseWriter, _ *http.Request) {
	if !a.collectionsReady(w) {
		return
	}
	st, ok := a.r.Collections().BackfillStatus()
	if !ok {
		writeJSON(w, http.StatusOK, map[string]any{"state": "none"})
		return
	}
	writeJSON(w, http.StatusOK, st)
}

func (a *api) handleAdminBackfillCancel(w http.ResponseWriter, _ *http.Request) {
	if !a.collectionsReady(w) {
		return
	}
	st, err := a.r.Collections().CancelBackfill()
	if err != nil {
		writeError(w, http.StatusInternalServerError, lexicon.Internal, err.Error())
		return
	}
	a.r.Metrics().AdminAction("collections_backfill_cancel")
	writeJSON(w, http.StatusOK, st)
}

// GET /admin/collections/did?did=: what the index holds for a DID.
func (a *api) handleAdminCollectionsDID(w http.ResponseWriter, req *http.Request) {
	if !a.collectionsReady(w) {
		return
	}
	did, ok := queryDID(w, req.URL.Query())
	if !ok {
		return
	}
	info, err := a.r.CollectionIndex().DID(did)
	if err != nil {
		writeError(w, http.StatusInternalServerError, lexicon.Internal, err.Error())
		return
	}
	if info.Counts == nil {
		info.Counts = []collection.Count{}
	}
	writeJSON(w, http.StatusOK, info)
}
