package relay

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/bluesky-social/indigo/atproto/identity"
	"github.com/bluesky-social/indigo/atproto/syntax"

	"github.com/relay/relay/loop"
	"github.com/relay/relay/persist/collection"
	"github.com/relay/relay/persist/meta"
	"github.com/relay/relay/relay/collections"
)

// Collection index wiring.
const (
	// collectionsDir is the index's Pebble DB under RELAY_DATA_DIR. It is
	// embedded also when metadata is on Postgres: like the event log it
	// is derived from, it is local to the relay.
	collectionsDir = "collections"
	// resyncHTTPTimeout bounds one getRepo or backfill page request.
	resyncHTTPTimeout = 2 * time.Minute
)

// collectionIndex is the relay's collection index and its service.
type collectionIndex struct {
	ix  *collection.Index
	svc *collections.Service
}

// openCollections opens the index and starts its follower. The index
// follows the event log: the sequencer's durable callback wakes it.
func (r *Relay) openCollections() error {
	ix, err := collection.Open(filepath.Join(r.cfg.DataDir, collectionsDir), r.cfg.StoreCacheBytes/2)
	if err != nil {
		return fmt.Errorf("open collection index: %w", err)
	}
	pdsDir := &identity.BaseDirectory{
		PLCURL:                 r.cfg.PLCHost,
		HTTPClient:             *loop.NewHTTPClient(r.cfg.AllowInsecureHosts, resolveTimeout),
		SkipHandleVerification: true,
		UserAgent:              userAgent,
	}
	src := r.cfg.CollectionsBackfillFrom
	if strings.EqualFold(src, "none") {
		src = ""
	}
	svc := collections.New(collections.Options{
		Index:          ix,
		Log:            r.log,
		Metrics:        r.metrics.set,
		Logger:         r.logger.With("component", "collections"),
		HTTPClient:     loop.NewHTTPClient(r.cfg.AllowInsecureHosts, resyncHTTPTimeout),
		PDSFor:         func(ctx context.Context, did string) (string, error) { return pdsEndpoint(ctx, pdsDir, did) },
		AccountExists:  r.accountExists,
		BackfillSource: src,
	})
	r.coll = &collectionIndex{ix: ix, svc: svc}
	svc.Start()
	if src != "" && r.cfg.CollectionsBackfillCollections != "" {
		if _, ok := svc.BackfillStatus(); !ok {
			colls := strings.Split(r.cfg.CollectionsBackfillCollections, ",")
			if _, err := svc.StartBackfill(src, colls); err != nil {
				r.logger.Error("collection backfill did not start", "source", src, "err", err)
			}
		}
	}
	return nil
}

// notifyDurable is the sequencer's durable callback: fan-out and the
// collection index's follower.
func (r *Relay) notifyDurable() {
	r.bc.Notify()
	if r.coll != nil {
		r.coll.svc.Wake()
	}
}

// closeCollections stops the service and closes the index (after the
// sequencer: what is durable is applied at the next start if not now).
func (r *Relay) closeCollections() error {
	if r.coll == nil {
		return nil
	}
	r.coll.svc.Close()
	return r.coll.ix.Close()
}

// pdsEndpoint resolves a DID's PDS base URL.
func pdsEndpoint(ctx context.Context, dir identity.Directory, raw string) (string, error) {
	did, err := syntax.ParseDID(raw)
	if err != nil {
		return "", err
	}
	ident, err := dir.LookupDID(ctx, did)
	if err != nil {
		return "", err
	}
	ep := ident.PDSEndpoint()
	if ep == "" {
		return "", errors.New("DID document has no PDS endpoint")
	}
	return ep, nil
}

// accountExists is the cleaner's check: the relay still has the account
// (any status; takedowns and deletions reach the index as #account).
func (r *Relay) accountExists(ctx context.Context, did string) (bool, error) {
	_, err := r.store.GetAccountByDID(ctx, syntax.DID(did))
	if errors.Is(err, meta.ErrNotFound) {
		return false, nil
	}
	return err == nil, err
}

// Collections exposes the collection index service (tests, harness).
func (r *Relay) Collections() *collections.Service {
	if r.coll == nil {
		return nil
	}
	return r.coll.svc
}
