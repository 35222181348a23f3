// Package lexicon holds the XRPC error names the relay answers with (from
// the com.atproto.sync lexicons and the XRPC spec, plus the relay's own
// admin and collection-index names). They are the external contract: the
// HTTP package writes them, and tests and clients compare against them.
package lexicon

// Error names.
const (
	BadRequest    = "BadRequest"
	Internal      = "InternalServerError"
	NotFound      = "NotFound"
	Method        = "MethodNotImplemented"
	AuthRequired  = "AuthRequired"
	Forbidden     = "Forbidden"
	RepoNotFound  = "RepoNotFound"
	HostNotFound  = "HostNotFound"
	HostBanned    = "HostBanned"
	RepoTakendown = "RepoTakendown"
	// TooManyConsumers: subscribeRepos refused at RELAY_MAX_CONSUMERS.
	TooManyConsumers = "TooManyConsumers"
	RepoSuspended    = "RepoSuspended"
	RepoDeactivated  = "RepoDeactivated"
	RepoDeleted      = "RepoDeleted"
	// RepoInactive covers inactive states the lexicon has no name for
	// (desynchronized, throttled upstream), as in the reference relay.
	RepoInactive = "RepoInactive"
	// RateLimitExceeded: requestCrawl past the new-hosts-per-day budget.
	RateLimitExceeded = "RateLimitExceeded"
	// DomainNotBanned: the admin API removing a ban that does not exist.
	DomainNotBanned = "DomainNotBanned"
	// IndexBehind: the collection index has not applied everything a
	// consumer may have received (503, retry).
	IndexBehind = "IndexBehind"
)
