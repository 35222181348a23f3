package perf

import (
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bluesky-social/indigo/atproto/atcrypto"
	"github.com/bluesky-social/indigo/atproto/identity"
	"github.com/bluesky-social/indigo/atproto/syntax"
)

// plcReadHeaderTimeout bounds how long the fake PLC waits for request
// headers, so a stuck client cannot pin a goroutine forever.
const plcReadHeaderTimeout = 10 * time.Second

// didContexts is the JSON-LD context plc.directory puts in every document.
var didContexts = []string{
	"https://www.w3.org/ns/did/v1",
	"https://w3id.org/security/multikey/v1",
	"https://w3id.org/security/suites/secp256k1-2019/v1",
}

// plcDocument is the JSON shape plc.directory serves for GET /<did>.
type plcDocument struct {
	Context []string `json:"@context"`
	identity.DIDDocument
}

// PLC is a fake did:plc directory over HTTP on 127.0.0.1. GET /<did> returns
// the DID document JSON as plc.directory does, 404 for an unknown DID.
// Documents are rendered once at Put, so a lookup is a map read and a write.
type PLC struct {
	srv *http.Server
	ln  net.Listener
	url string

	mu   sync.RWMutex
	docs map[string][]byte

	requests atomic.Int64
}

// StartPLC starts a fake PLC directory on 127.0.0.1 with an ephemeral port.
func StartPLC() (*PLC, error) { return StartPLCAddr("127.0.0.1:0") }

// StartPLCAddr starts a fake PLC directory on addr. A fixed address lets an
// external relay be configured with RELAY_PLC_HOST before the harness runs.
func StartPLCAddr(addr string) (*PLC, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	p := &PLC{
		ln:   ln,
		url:  "http://" + ln.Addr().String(),
		docs: make(map[string][]byte),
	}
	p.srv = &http.Server{
		Handler:           http.HandlerFunc(p.serve),
		ReadHeaderTimeout: plcReadHeaderTimeout,
		ErrorLog:          slog.NewLogLogger(slog.Default().Handler(), slog.LevelDebug),
	}
	go func() {
		if err := p.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			slog.Warn("perf: PLC server stopped", "err", err)
		}
	}()
	return p, nil
}

// URL is the directory's base URL (http://127.0.0.1:PORT), the value for
// identity.BaseDirectory.PLCURL and the relay's RELAY_PLC_HOST.
func (p *PLC) URL() string { return p.url }

// Close stops the server and closes open connections.
func (p *PLC) Close() { _ = p.srv.Close() }

// Requests is the number of DID document requests served (found or not),
// so tests can observe a relay's identity caching.
func (p *PLC) Requests() int64 { return p.requests.Load() }

// Put creates or replaces the document of did: handle as at://handle in
// alsoKnownAs, pub as the #atproto Multikey, pdsEndpoint as the
// #atproto_pds service. Replacing models key rotation and migration.
func (p *PLC) Put(did string, handle string, pub atcrypto.PublicKey, pdsEndpoint string) {
	doc := plcDocument{
		Context: didContexts,
		DIDDocument: identity.DIDDocument{
			DID:         syntax.DID(did),
			AlsoKnownAs: []string{"at://" + handle},
			VerificationMethod: []identity.DocVerificationMethod{{
				ID:                 did + "#atproto",
				Type:               "Multikey",
				Controller:         did,
				PublicKeyMultibase: pub.Multibase(),
			}},
			Service: []identity.DocService{{
				ID:              "#atproto_pds",
				Type:            "AtprotoPersonalDataServer",
				ServiceEndpoint: pdsEndpoint,
			}},
		},
	}
	b, err := json.Marshal(doc)
	if err != nil {
		// The document is built from strings only; Marshal cannot fail.
		panic(err)
	}
	p.mu.Lock()
	p.docs[did] = b
	p.mu.Unlock()
}

// Delete removes did, so lookups answer 404 as for an unregistered DID.
func (p *PLC) Delete(did string) {
	p.mu.Lock()
	delete(p.docs, did)
	p.mu.Unlock()
}

func (p *PLC) serve(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	did := strings.TrimPrefix(r.URL.Path, "/")
	p.requests.Add(1)
	p.mu.RLock()
	doc, ok := p.docs[did]
	p.mu.RUnlock()
	if !ok {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusNotFound)
		_, _ = w.Write([]byte(`{"message":"DID not registered: ` + jsonSafe(did) + `"}`))
		return
	}
	w.Header().Set("Content-Type", "application/did+ld+json")
	_, _ = w.Write(doc)
}

// jsonSafe drops characters that would need escaping inside a JSON string,
// for echoing a request path into an error message.
func jsonSafe(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == '"' || r == '\\' {
			return -1
		}
		return r
	}, s)
}
