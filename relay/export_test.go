package relay

import (
	"encoding/base64"
	"net/http"
)

// The relay's tests serve the real HTTP package (relay/httpapi), which
// imports this one: an external test file (httpapi_link_test.go) hands
// its constructor over through SetTestHandlers before any test runs.
var testHandlers func(*Relay) Handlers

// SetTestHandlers sets the handlers the tests' relays serve.
func SetTestHandlers(f func(*Relay) Handlers) { testHandlers = f }

// apiHandler is the RELAY_PORT handler the tests' relays serve.
func (r *Relay) apiHandler() http.Handler { return testHandlers(r).API }

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
