package relay

import (
	"encoding/base64"
	"net/http"
	"time"
)

// The relay's tests serve the real HTTP package (relay/httpapi), which
// imports this one: an external test file (httpapi_link_test.go) hands
// its constructor over through SetTestHandlers before any test runs.
var testHandlers func(*Relay) Handlers

// SetTestHandlers sets the handlers the tests' relays serve.
func SetTestHandlers(f func(*Relay) Handlers) { testHandlers = f }

// apiHandler is the RELAY_PORT handler the tests' relays serve.
func (r *Relay) apiHandler() http.Handler { return testHandlers(r).API }

// Lexicon error names the tests expect in answers (the contract, written
// out here rather than taken from the HTTP package).
const (
	ErrNameBadRequest       = "BadRequest"
	ErrNameInternal         = "InternalServerError"
	ErrNameNotFound         = "NotFound"
	ErrNameAuthRequired     = "AuthRequired"
	ErrNameForbidden        = "Forbidden"
	ErrNameRepoNotFound     = "RepoNotFound"
	ErrNameHostNotFound     = "HostNotFound"
	ErrNameHostBanned       = "HostBanned"
	ErrNameRepoTakendown    = "RepoTakendown"
	ErrNameTooManyConsumers = "TooManyConsumers"
	ErrNameRepoSuspended    = "RepoSuspended"
	ErrNameRepoDeactivated  = "RepoDeactivated"
	ErrNameRepoDeleted      = "RepoDeleted"
	ErrNameRepoInactive     = "RepoInactive"
	ErrNameDomainNotBanned  = "DomainNotBanned"
	ErrNameIndexBehind      = "IndexBehind"
)

// Page bounds of the sync API (lexicon limits) the tests page against.
const (
	maxListReposLimit = 1000
)

// xrpcError is the JSON error body of a failed request.
type xrpcError struct {
	Error   string `json:"error"`
	Message string `json:"message,omitempty"`
}

// encodeCollectionCursor is listReposByCollection's cursor: the last DID
// of the page, base64url.
func encodeCollectionCursor(did string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(did))
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
