package relay

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/bluesky-social/indigo/atproto/identity"
	"github.com/bluesky-social/indigo/atproto/syntax"
)

// Identity resolution limits.
const (
	// resolverWorkers bounds concurrent DID resolutions (PLC and did:web).
	resolverWorkers = 16
	// resolverQueue bounds DIDs waiting for a resolver. When full, the
	// partition that asked keeps the DID's events pending and asks again on
	// its next retry sweep.
	resolverQueue = 8192
	// resolveTimeout bounds one resolution.
	resolveTimeout = 10 * time.Second
	// identityTTL is how long a resolved identity is trusted without an
	// #identity event; identityErrTTL how long a failure is remembered.
	identityTTL    = 24 * time.Hour
	identityErrTTL = time.Minute
)

// ErrNoSigningKey: the DID document has no usable #atproto key.
var ErrNoSigningKey = errors.New("relay: DID document has no atproto signing key")

// identInfo is what validation needs from a DID document.
type identInfo struct {
	did     string
	key     commitKey // newCommitKey of the DID document's signing key
	pds     string    // host[:port] of the #atproto_pds endpoint, lower-case, default ports removed
	handle  string    // declared handle (alsoKnownAs), "" when none
	err     error
	fetched time.Time
}

func (i *identInfo) stale(now time.Time) bool {
	if i.err != nil {
		return now.Sub(i.fetched) > identityErrTTL
	}
	return now.Sub(i.fetched) > identityTTL
}

// Resolver resolves DIDs on a fixed pool of goroutines, merging concurrent
// requests for the same DID, and delivers results by callback.
type Resolver struct {
	dir    identity.Directory
	logger *slog.Logger
	jobs   chan string

	mu      sync.Mutex
	waiting map[string][]func(*identInfo)

	wg   sync.WaitGroup
	stop chan struct{}
}

// NewResolver starts the resolver pool over dir.
func NewResolver(dir identity.Directory, logger *slog.Logger) *Resolver {
	r := &Resolver{dir: dir, logger: logger, jobs: make(chan string, resolverQueue), waiting: map[string][]func(*identInfo){}, stop: make(chan struct{})}
	for range resolverWorkers {
		r.wg.Add(1)
		go r.work()
	}
	return r
}

// Resolve asks for did and calls deliver (on a resolver goroutine) with the
// result. It never blocks: false means the queue is full, try later.
func (r *Resolver) Resolve(did string, deliver func(*identInfo)) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if q, ok := r.waiting[did]; ok {
		r.waiting[did] = append(q, deliver)
		return true
	}
	select {
	case r.jobs <- did:
		r.waiting[did] = []func(*identInfo){deliver}
		return true
	default:
		return false
	}
}

// Close stops the pool.
func (r *Resolver) Close() {
	close(r.stop)
	r.wg.Wait()
}

func (r *Resolver) work() {
	defer r.wg.Done()
	for {
		select {
		case <-r.stop:
			return
		case did := <-r.jobs:
			info := r.lookup(did)
			r.mu.Lock()
			q := r.waiting[did]
			delete(r.waiting, did)
			r.mu.Unlock()
			for _, f := range q {
				f(info)
			}
		}
	}
}

func (r *Resolver) lookup(did string) *identInfo {
	info := &identInfo{did: did, fetched: time.Now()}
	d, err := syntax.ParseDID(did)
	if err != nil {
		info.err = err
		return info
	}
	ctx, cancel := context.WithTimeout(context.Background(), resolveTimeout)
	defer cancel()
	ident, err := r.dir.LookupDID(ctx, d)
	if err != nil {
		info.err = err
		return info
	}
	key, err := ident.PublicKey()
	if err != nil {
		info.err = errors.Join(ErrNoSigningKey, err)
		return info
	}
	info.key = newCommitKey(key)
	info.pds = endpointHost(ident.PDSEndpoint())
	if h, err := ident.DeclaredHandle(); err == nil {
		info.handle = h.String()
	}
	return info
}

// endpointHost reduces a PDS endpoint URL to the host name the relay uses
// for that host, normalized as normalizeHostname does (lower-case,
// canonical IP literal, default port removed), so that an account's
// document and the host it streams from compare equal.
func endpointHost(endpoint string) string {
	u, err := url.Parse(endpoint)
	if err != nil || u.Host == "" {
		return ""
	}
	name, port, ok := splitHostPort(strings.ToLower(u.Host))
	if !ok {
		return ""
	}
	if ip, err := netip.ParseAddr(name); err == nil {
		name = ip.String()
	}
	noSSL := u.Scheme == "http" || u.Scheme == "ws"
	return joinHostPort(name, stripDefaultPort(port, noSSL))
}
