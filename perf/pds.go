package perf

import (
	"bufio"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gobwas/ws"
)

// PDS limits and defaults.
const (
	// DefaultPDSLogFrames bounds the frames a PDS keeps for cursor replay;
	// when full the oldest frame is dropped (a later cursor before it gets
	// #info OutdatedCursor and the stream from the oldest kept frame).
	DefaultPDSLogFrames = 1 << 20
	// DefaultPDSLogBytes bounds the bytes of those frames, same behaviour.
	// The log shares frame slices with the caller (pregenerated frames are
	// not copied), so this is the memory a PDS can pin.
	DefaultPDSLogBytes = 256 << 20
	// pdsWriteBatch is how many frames a subscriber takes from the log per
	// lock acquisition and writes before one flush.
	pdsWriteBatch = 256
	// pdsWriteBufferSize is a subscriber's buffered writer size.
	pdsWriteBufferSize = 32 << 10
	// pdsWriteTimeout is how long one batch write may block on a peer that
	// does not read before the subscription is closed.
	pdsWriteTimeout = 60 * time.Second
	// pdsReadHeaderTimeout bounds the HTTP request header read.
	pdsReadHeaderTimeout = 10 * time.Second
	// pdsMaxControlPayload is the largest control frame payload (RFC 6455).
	pdsMaxControlPayload = 125
	// pdsCursorHistory is how many subscription cursors Cursors remembers.
	pdsCursorHistory = 64
)

var (
	// ErrSeqOrder is returned by EmitFrame when seq is not above the last
	// emitted seq (frames must be emitted in seq order).
	ErrSeqOrder = errors.New("perf: frame seq is not above the last emitted seq")
	// ErrClosed is returned when emitting on a closed PDS.
	ErrClosed = errors.New("perf: PDS is closed")
)

// PDSOptions configures a fake PDS. The zero value is a plain-HTTP PDS on an
// ephemeral 127.0.0.1 port.
type PDSOptions struct {
	// TLS, when set, serves https/wss with this configuration.
	TLS *tls.Config
	// ServerHeader, when set, is the Server header of every response
	// (e.g. "atproto-relay" to trigger a relay's requestCrawl loop guard).
	ServerHeader string
	// Addr is the listen address; default "127.0.0.1:0".
	Addr string
	// MaxLogFrames and MaxLogBytes bound the replay log; defaults
	// DefaultPDSLogFrames and DefaultPDSLogBytes.
	MaxLogFrames int
	MaxLogBytes  int64
	// Routes adds handlers by ServeMux pattern (e.g. "GET /xrpc/x.y.z"),
	// for tests that need more of a PDS (or a stand-in relay) than the
	// firehose and describeServer.
	Routes map[string]http.HandlerFunc
}

// logEntry is one frame of a PDS's stream. Raw entries (fault injection)
// go only to subscribers connected when they were emitted and carry the
// seq of the last real frame before them.
type logEntry struct {
	seq   int64
	op    ws.OpCode
	frame []byte
	raw   bool
}

// PDS is a fake PDS: describeServer and subscribeRepos over HTTP on
// 127.0.0.1. Every emitted frame goes into one in-memory log with its own
// upstream seq; a subscriber is a position in that log, so replay from a
// cursor turns into the live stream with no gap and no duplicate.
// Each subscriber costs two goroutines and a 32 KiB write buffer.
type PDS struct {
	opts PDSOptions
	srv  *http.Server
	ln   net.Listener
	host string
	url  string

	emitMu  sync.Mutex // orders seq allocation with appends
	nextSeq int64      // last allocated seq

	mu         sync.Mutex
	log        []logEntry
	basePos    int64 // stream position of log[0]
	logBytes   int64
	lastSeq    int64 // seq of the last appended real frame
	trimmedSeq int64 // seq of the last frame dropped from the log
	notify     chan struct{}
	subs       map[*pdsSub]struct{}
	cursors    []int64
	closed     bool

	framesSent atomic.Int64
	repos      sync.Map // DID -> *Account, served by getRepo (repo.go)
}

// pdsSub is one subscribeRepos connection.
type pdsSub struct {
	conn net.Conn
	bw   *bufio.Writer
	wmu  sync.Mutex // serializes the stream's batches and pong replies
	done chan struct{}
	once sync.Once
}

func (s *pdsSub) close() {
	s.once.Do(func() {
		close(s.done)
		_ = s.conn.Close()
	})
}

// StartPDS starts a fake PDS.
func StartPDS(opts PDSOptions) (*PDS, error) {
	if opts.Addr == "" {
		opts.Addr = "127.0.0.1:0"
	}
	if opts.MaxLogFrames <= 0 {
		opts.MaxLogFrames = DefaultPDSLogFrames
	}
	if opts.MaxLogBytes <= 0 {
		opts.MaxLogBytes = DefaultPDSLogBytes
	}
	ln, err := net.Listen("tcp", opts.Addr)
	if err != nil {
		return nil, err
	}
	p := &PDS{
		opts:   opts,
		ln:     ln,
		host:   ln.Addr().String(),
		notify: make(chan struct{}),
		subs:   make(map[*pdsSub]struct{}),
	}
	scheme := "http://"
	if opts.TLS != nil {
		scheme = "https://"
		cfg := opts.TLS.Clone()
		// HTTP/1.1 only: a WebSocket upgrade needs a hijackable connection.
		cfg.NextProtos = []string{"http/1.1"}
		p.ln = tls.NewListener(ln, cfg)
	}
	p.url = scheme + p.host

	mux := http.NewServeMux()
	mux.HandleFunc("GET /xrpc/com.atproto.server.describeServer", p.describeServer)
	mux.HandleFunc("GET /xrpc/_health", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"version": "perf"})
	})
	mux.HandleFunc("GET /xrpc/com.atproto.sync.subscribeRepos", p.subscribeRepos)
	mux.HandleFunc("GET /xrpc/com.atproto.sync.getRepo", p.getRepo)
	for pattern, h := range opts.Routes {
		mux.HandleFunc(pattern, h)
	}
	var h http.Handler = mux
	if opts.ServerHeader != "" {
		h = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Server", opts.ServerHeader)
			mux.ServeHTTP(w, r)
		})
	}
	p.srv = &http.Server{
		Handler:           h,
		ReadHeaderTimeout: pdsReadHeaderTimeout,
		TLSNextProto:      map[string]func(*http.Server, *tls.Conn, http.Handler){},
		ErrorLog:          slog.NewLogLogger(slog.Default().Handler(), slog.LevelDebug),
	}
	go func() {
		if err := p.srv.Serve(p.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			slog.Warn("perf: PDS server stopped", "host", p.host, "err", err)
		}
	}()
	return p, nil
}

// Host is "127.0.0.1:PORT", the hostname a relay crawls in insecure mode.
func (p *PDS) Host() string { return p.host }

// URL is the PDS endpoint put in DID documents (http:// or https://).
func (p *PDS) URL() string { return p.url }

// Subscribers is the number of open subscribeRepos connections.
func (p *PDS) Subscribers() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.subs)
}

// LastSeq is the upstream seq of the last emitted frame.
func (p *PDS) LastSeq() int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.lastSeq
}

// FramesSent counts frames written to subscribers (replayed and live).
func (p *PDS) FramesSent() int64 { return p.framesSent.Load() }

// Cursors returns the cursor of each recent subscription, oldest first;
// -1 stands for a subscription without a cursor. It lets tests see where a
// relay resumed.
func (p *PDS) Cursors() []int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]int64(nil), p.cursors...)
}

// Emit assigns the next upstream seq to ev, encodes it, logs it and wakes
// the subscribers. It panics if ev is not exactly one event (a programming
// error in the caller) and returns 0 if the PDS is closed.
func (p *PDS) Emit(ev Event) (seq int64) {
	p.emitMu.Lock()
	defer p.emitMu.Unlock()
	seq = p.nextSeq + 1
	frame, err := EncodeEvent(ev, seq)
	if err != nil {
		panic(fmt.Sprintf("perf: Emit: %v", err))
	}
	p.nextSeq = seq
	if err := p.append(logEntry{seq: seq, op: ws.OpBinary, frame: frame}); err != nil {
		return 0
	}
	return seq
}

// ReserveSeqs allocates n consecutive upstream seqs and returns the first,
// for frames encoded ahead of time (Pregenerate). Those frames must then
// be emitted with EmitFrame in seq order before anything else is emitted
// on this PDS, or EmitFrame reports ErrSeqOrder.
func (p *PDS) ReserveSeqs(n int) int64 {
	p.emitMu.Lock()
	defer p.emitMu.Unlock()
	first := p.nextSeq + 1
	p.nextSeq += int64(n)
	return first
}

// EmitFrame logs and sends a frame payload already encoded with seq (from
// ReserveSeqs). The frame is shared, not copied: do not modify it.
func (p *PDS) EmitFrame(seq int64, frame []byte) error {
	return p.append(logEntry{seq: seq, op: ws.OpBinary, frame: frame})
}

// EmitRaw sends b as one WebSocket message of opcode op to the current
// subscribers, for fault injection (garbage, truncated CBOR, text frames).
// It is not replayed to later subscriptions.
func (p *PDS) EmitRaw(b []byte, op ws.OpCode) {
	_ = p.append(logEntry{op: op, frame: b, raw: true})
}

func (p *PDS) append(e logEntry) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return ErrClosed
	}
	if e.raw {
		e.seq = p.lastSeq
	} else {
		if e.seq <= p.lastSeq {
			return ErrSeqOrder
		}
		p.lastSeq = e.seq
	}
	p.log = append(p.log, e)
	p.logBytes += int64(len(e.frame))
	for len(p.log) > 1 && (len(p.log) > p.opts.MaxLogFrames || p.logBytes > p.opts.MaxLogBytes) {
		old := p.log[0]
		p.log[0] = logEntry{}
		p.log = p.log[1:]
		p.basePos++
		p.logBytes -= int64(len(old.frame))
		if !old.raw {
			p.trimmedSeq = old.seq
		}
	}
	close(p.notify)
	p.notify = make(chan struct{})
	return nil
}

// DropConnections abruptly closes every subscriber socket.
func (p *PDS) DropConnections() {
	p.mu.Lock()
	subs := make([]*pdsSub, 0, len(p.subs))
	for s := range p.subs {
		subs = append(subs, s)
	}
	p.mu.Unlock()
	for _, s := range subs {
		s.close()
	}
}

// Close stops the server and closes every connection.
func (p *PDS) Close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	close(p.notify)
	p.mu.Unlock()
	_ = p.srv.Close()
	p.DropConnections()
}

func (p *PDS) describeServer(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{
		"did":                  "did:web:localhost",
		"availableUserDomains": []string{".test"},
		"inviteCodeRequired":   false,
		"links":                map[string]string{},
		"contact":              map[string]string{},
	})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func (p *PDS) subscribeRepos(w http.ResponseWriter, r *http.Request) {
	var cursor *int64
	if s := r.URL.Query().Get("cursor"); s != "" {
		c, err := strconv.ParseInt(s, 10, 64)
		if err != nil || c < 0 {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": "InvalidRequest", "message": "invalid cursor"})
			return
		}
		cursor = &c
	}
	// The stream position is taken before the upgrade response goes out:
	// a client that saw the handshake complete gets every frame emitted
	// after that, even one emitted before this handler runs on.
	start, ok := p.join(cursor)
	if !ok {
		http.Error(w, "closed", http.StatusServiceUnavailable)
		return
	}
	up := ws.HTTPUpgrader{}
	if p.opts.ServerHeader != "" {
		up.Header = http.Header{"Server": []string{p.opts.ServerHeader}}
	}
	conn, _, _, err := up.Upgrade(r, w)
	if err != nil {
		return
	}
	sub := &pdsSub{
		conn: conn,
		bw:   bufio.NewWriterSize(conn, pdsWriteBufferSize),
		done: make(chan struct{}),
	}
	go p.readClient(sub)
	p.stream(sub, start)
}

// streamStart is where a subscription starts: its position in the log
// and what to send first.
type streamStart struct {
	joinPos int64  // log position when it joined (raw frames before it are skipped)
	next    int64  // first log position to send
	prelude []byte // #info or error frame to send first, or nil
	future  bool   // the cursor is in the future: send prelude and close
}

// join computes a subscription's start from its cursor and records the
// cursor; ok is false when the PDS is closed.
func (p *PDS) join(cursor *int64) (st streamStart, ok bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return st, false
	}
	st.joinPos = p.basePos + int64(len(p.log))
	st.next = st.joinPos
	cur := int64(-1)
	if cursor != nil {
		cur = *cursor
		switch {
		case *cursor > p.lastSeq:
			st.future = true
			st.prelude, _ = EncodeErrorFrame("FutureCursor", "cursor in the future")
		default:
			if *cursor < p.trimmedSeq {
				st.prelude, _ = encodeInfo("OutdatedCursor", "requested cursor exceeded limit; possibly missing events")
			}
			i := sort.Search(len(p.log), func(i int) bool { return p.log[i].seq > *cursor })
			st.next = p.basePos + int64(i)
		}
	}
	p.cursors = append(p.cursors, cur)
	if len(p.cursors) > pdsCursorHistory {
		p.cursors = p.cursors[len(p.cursors)-pdsCursorHistory:]
	}
	return st, true
}

// readClient consumes client frames: it answers pings and ends the
// subscription on close or error.
func (p *PDS) readClient(sub *pdsSub) {
	defer sub.close()
	br := bufio.NewReaderSize(sub.conn, 512)
	var ctl [pdsMaxControlPayload]byte
	for {
		h, err := ws.ReadHeader(br)
		if err != nil {
			return
		}
		if h.OpCode.IsControl() {
			if h.Length > pdsMaxControlPayload {
				return
			}
			payload := ctl[:h.Length]
			if _, err := io.ReadFull(br, payload); err != nil {
				return
			}
			if h.Masked {
				ws.Cipher(payload, h.Mask, 0)
			}
			switch h.OpCode {
			case ws.OpClose:
				return
			case ws.OpPing:
				sub.wmu.Lock()
				err := writeFrame(sub.bw, ws.OpPong, payload)
				if err == nil {
					err = sub.bw.Flush()
				}
				sub.wmu.Unlock()
				if err != nil {
					return
				}
			}
			continue
		}
		if _, err := io.CopyN(io.Discard, br, h.Length); err != nil {
			return
		}
	}
}

// stream writes the log to sub from its start position, then live.
func (p *PDS) stream(sub *pdsSub, start streamStart) {
	defer sub.close()
	bw := sub.bw
	joinPos, next, prelude, future := start.joinPos, start.next, start.prelude, start.future

	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.subs[sub] = struct{}{}
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		delete(p.subs, sub)
		p.mu.Unlock()
	}()

	if prelude != nil {
		sub.wmu.Lock()
		err := writeFrame(bw, ws.OpBinary, prelude)
		if err == nil && future {
			// FutureCursor ends the subscription, as a real PDS does.
			err = writeFrame(bw, ws.OpClose, ws.NewCloseFrameBody(ws.StatusNormalClosure, ""))
		}
		if err == nil {
			err = bw.Flush()
		}
		sub.wmu.Unlock()
		if err != nil || future {
			return
		}
	}

	batch := make([]logEntry, 0, pdsWriteBatch)
	for {
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			return
		}
		if next < p.basePos {
			// The subscriber fell out of the bounded log.
			p.mu.Unlock()
			tooSlow, _ := EncodeErrorFrame("ConsumerTooSlow", "subscriber fell behind the PDS log")
			sub.wmu.Lock()
			_ = writeFrame(bw, ws.OpBinary, tooSlow)
			_ = bw.Flush()
			sub.wmu.Unlock()
			return
		}
		i := int(next - p.basePos)
		end := min(len(p.log), i+pdsWriteBatch)
		batch = append(batch[:0], p.log[i:end]...)
		notify := p.notify
		batchPos := next
		next += int64(end - i)
		p.mu.Unlock()

		if len(batch) == 0 {
			select {
			case <-notify:
			case <-sub.done:
				return
			}
			continue
		}
		if err := p.writeBatch(sub, batch, batchPos, joinPos); err != nil {
			return
		}
		clear(batch)
	}
}

// writeFrame writes one unmasked, unfragmented server frame.
func writeFrame(bw *bufio.Writer, op ws.OpCode, payload []byte) error {
	if err := ws.WriteHeader(bw, ws.Header{Fin: true, OpCode: op, Length: int64(len(payload))}); err != nil {
		return err
	}
	_, err := bw.Write(payload)
	return err
}

// writeBatch writes the entries of batch (the first at stream position
// pos) to sub and flushes. Raw entries logged before the subscriber joined
// at joinPos are skipped: fault injection reaches current subscribers only.
func (p *PDS) writeBatch(sub *pdsSub, batch []logEntry, pos, joinPos int64) error {
	sub.wmu.Lock()
	defer sub.wmu.Unlock()
	_ = sub.conn.SetWriteDeadline(time.Now().Add(pdsWriteTimeout))
	for k, e := range batch {
		if e.raw && pos+int64(k) < joinPos {
			continue
		}
		if err := writeFrame(sub.bw, e.op, e.frame); err != nil {
			return err
		}
		p.framesSent.Add(1)
	}
	return sub.bw.Flush()
}
