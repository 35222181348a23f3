package perf

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gobwas/ws"
)

// testWait bounds how long a test waits for an asynchronous effect; it is
// a hang guard, not a speed assertion.
const testWait = 10 * time.Second

func subURL(p *PDS, cursor int64) string {
	scheme := "ws://"
	if strings.HasPrefix(p.URL(), "https://") {
		scheme = "wss://"
	}
	u := scheme + p.Host() + "/xrpc/com.atproto.sync.subscribeRepos"
	if cursor >= 0 {
		u += fmt.Sprintf("?cursor=%d", cursor)
	}
	return u
}

func dial(t *testing.T, url string, opts DialOptions) *FirehoseClient {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testWait)
	defer cancel()
	c, err := DialFirehose(ctx, url, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	_ = c.Conn().SetReadDeadline(time.Now().Add(testWait))
	return c
}

// nextInfo reads one binary frame and scans it.
func nextInfo(t *testing.T, c *FirehoseClient) FrameInfo {
	t.Helper()
	op, p, err := c.Next()
	if err != nil {
		t.Fatal(err)
	}
	if op != ws.OpBinary {
		t.Fatalf("opcode %v", op)
	}
	fi, err := ScanFrame(p)
	if err != nil {
		t.Fatal(err)
	}
	return fi
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(testWait)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func emitCommits(t *testing.T, p *PDS, a *Account, n int) []int64 {
	t.Helper()
	var seqs []int64
	for range n {
		c, err := a.Commit(1)
		if err != nil {
			t.Fatal(err)
		}
		seqs = append(seqs, p.Emit(Event{Commit: c}))
	}
	return seqs
}

func TestPDSReplayThenLive(t *testing.T) {
	env := newTestEnv(t)
	a, err := NewAccount(K256, "r.test", env.plc, env.pds)
	if err != nil {
		t.Fatal(err)
	}
	seqs := emitCommits(t, env.pds, a, 10)
	for i, s := range seqs {
		if s != int64(i+1) {
			t.Fatalf("seqs %v", seqs)
		}
	}
	c := dial(t, subURL(env.pds, 4), DialOptions{})
	for want := int64(5); want <= 10; want++ {
		fi := nextInfo(t, c)
		if fi.Seq != want || fi.Type != TypeCommit || string(fi.DID) != a.DID {
			t.Fatalf("replay: got %+v, want seq %d", fi, want)
		}
	}
	emitCommits(t, env.pds, a, 5)
	for want := int64(11); want <= 15; want++ {
		if fi := nextInfo(t, c); fi.Seq != want {
			t.Fatalf("live: got seq %d, want %d", fi.Seq, want)
		}
	}
	if got := env.pds.Cursors(); len(got) != 1 || got[0] != 4 {
		t.Fatalf("cursors %v", got)
	}

	// No cursor: live only.
	live := dial(t, subURL(env.pds, -1), DialOptions{})
	waitFor(t, "two subscribers", func() bool { return env.pds.Subscribers() == 2 })
	emitCommits(t, env.pds, a, 1)
	if fi := nextInfo(t, live); fi.Seq != 16 {
		t.Fatalf("live-only subscriber got seq %d first", fi.Seq)
	}
}

// TestPDSNoGapUnderConcurrentEmit subscribes from cursor 0 while events are
// being emitted: the switch from replay to live must lose and repeat nothing.
func TestPDSNoGapUnderConcurrentEmit(t *testing.T) {
	env := newTestEnv(t)
	a, err := NewAccount(K256, "g.test", env.plc, env.pds)
	if err != nil {
		t.Fatal(err)
	}
	// Pre-encode so the emitter is fast relative to the subscriber.
	const total = 400
	c0, err := a.Commit(1)
	if err != nil {
		t.Fatal(err)
	}
	first := env.pds.ReserveSeqs(total)
	frames := make([][]byte, total)
	for i := range frames {
		if frames[i], err = EncodeEvent(Event{Commit: c0}, first+int64(i)); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i, f := range frames {
			if err := env.pds.EmitFrame(first+int64(i), f); err != nil {
				t.Error(err)
				return
			}
			if i == total/4 {
				time.Sleep(time.Millisecond)
			}
		}
	}()
	// Subscribe once some frames are logged, while the rest are emitted.
	waitFor(t, "some frames logged", func() bool { return env.pds.LastSeq() >= first+total/8 })
	c := dial(t, subURL(env.pds, 0), DialOptions{})
	for want := first; want < first+total; want++ {
		if fi := nextInfo(t, c); fi.Seq != want {
			t.Fatalf("got seq %d, want %d", fi.Seq, want)
		}
	}
	wg.Wait()
	if err := env.pds.EmitFrame(first, frames[0]); !errors.Is(err, ErrSeqOrder) {
		t.Fatalf("re-emitting an old seq: %v", err)
	}
}

func TestPDSCursorEdges(t *testing.T) {
	plc, err := StartPLC()
	if err != nil {
		t.Fatal(err)
	}
	defer plc.Close()
	p, err := StartPDS(PDSOptions{MaxLogFrames: 5})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	a, err := NewAccount(P256, "e.test", plc, p)
	if err != nil {
		t.Fatal(err)
	}
	emitCommits(t, p, a, 10)

	// A cursor older than the bounded log: #info OutdatedCursor, then the
	// oldest kept frame onwards.
	c := dial(t, subURL(p, 1), DialOptions{})
	if fi := nextInfo(t, c); fi.Type != TypeInfo || string(fi.Name) != "OutdatedCursor" {
		t.Fatalf("first frame %+v, want #info OutdatedCursor", fi)
	}
	for want := int64(6); want <= 10; want++ {
		if fi := nextInfo(t, c); fi.Seq != want {
			t.Fatalf("got seq %d, want %d", fi.Seq, want)
		}
	}

	// A cursor in the future: FutureCursor error frame, then close.
	f := dial(t, subURL(p, 100), DialOptions{})
	fi := nextInfo(t, f)
	if fi.Op != -1 || string(fi.Error) != "FutureCursor" {
		t.Fatalf("got %+v, want FutureCursor", fi)
	}
	var ce *CloseError
	if _, _, err := f.Next(); !errors.As(err, &ce) {
		t.Fatalf("after FutureCursor: %v, want a close frame", err)
	}
}

func TestPDSFaultInjection(t *testing.T) {
	env := newTestEnv(t)
	a, err := NewAccount(K256, "f.test", env.plc, env.pds)
	if err != nil {
		t.Fatal(err)
	}
	c := dial(t, subURL(env.pds, -1), DialOptions{})
	waitFor(t, "subscriber", func() bool { return env.pds.Subscribers() == 1 })
	env.pds.EmitRaw([]byte("not cbor"), ws.OpText)
	env.pds.EmitRaw(GarbageFrame(), ws.OpBinary)
	emitCommits(t, env.pds, a, 1)

	op, p, err := c.Next()
	if err != nil || op != ws.OpText || string(p) != "not cbor" {
		t.Fatalf("text frame: %v %q %v", op, p, err)
	}
	op, p, err = c.Next()
	if err != nil || op != ws.OpBinary || string(p) != string(GarbageFrame()) {
		t.Fatalf("garbage frame: %v %v", op, err)
	}
	if _, err := ScanFrame(p); err == nil {
		t.Fatal("garbage scanned as a frame")
	}
	if fi := nextInfo(t, c); fi.Seq != 1 {
		t.Fatalf("commit after faults has seq %d", fi.Seq)
	}

	// Raw frames are not replayed to later subscriptions.
	r := dial(t, subURL(env.pds, 0), DialOptions{})
	if fi := nextInfo(t, r); fi.Seq != 1 {
		t.Fatalf("replay started with %+v", fi)
	}

	// Truncated frames: the header scans, the body does not.
	frame, err := EncodeEvent(Event{Identity: a.Identity()}, 9)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ScanFrame(TruncatedFrame(frame)); !errors.Is(err, ErrScanTruncated) {
		t.Fatalf("truncated frame: %v", err)
	}
	if fi, err := ScanFrame(UnknownTypeFrame()); err != nil || fi.Type != "?" || fi.Seq != 0 {
		t.Fatalf("unknown type frame: %+v %v", fi, err)
	}

	// DropConnections closes both sockets abruptly.
	env.pds.DropConnections()
	if _, _, err := c.Next(); err == nil {
		t.Fatal("read after DropConnections succeeded")
	}
	waitFor(t, "no subscribers", func() bool { return env.pds.Subscribers() == 0 })
}

func TestPDSTLSAndServerHeader(t *testing.T) {
	server, client, err := SelfSignedTLS()
	if err != nil {
		t.Fatal(err)
	}
	p, err := StartPDS(PDSOptions{TLS: server, ServerHeader: "atproto-relay"})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if !strings.HasPrefix(p.URL(), "https://127.0.0.1:") {
		t.Fatalf("URL %q", p.URL())
	}
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: client}, Timeout: testWait}
	resp, err := hc.Get(p.URL() + "/xrpc/com.atproto.server.describeServer")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var desc struct {
		DID                  string   `json:"did"`
		AvailableUserDomains []string `json:"availableUserDomains"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&desc); err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || desc.DID == "" || desc.AvailableUserDomains == nil {
		t.Fatalf("describeServer %d %+v", resp.StatusCode, desc)
	}
	if got := resp.Header.Get("Server"); got != "atproto-relay" {
		t.Fatalf("Server header %q", got)
	}

	a, err := NewAccount(K256, "tls.test", nil, p)
	if err != nil {
		t.Fatal(err)
	}
	emitCommits(t, p, a, 3)
	c := dial(t, subURL(p, 0), DialOptions{TLS: client})
	for want := int64(1); want <= 3; want++ {
		if fi := nextInfo(t, c); fi.Seq != want {
			t.Fatalf("wss replay got seq %d, want %d", fi.Seq, want)
		}
	}
}

func TestPLCUnknownAndMethod(t *testing.T) {
	plc, err := StartPLC()
	if err != nil {
		t.Fatal(err)
	}
	defer plc.Close()
	resp, err := http.Get(plc.URL() + "/did:plc:unknownunknownunknownunk")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("unknown DID: %d", resp.StatusCode)
	}
	resp, err = http.Post(plc.URL()+"/did:plc:x", "application/json", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("POST: %d", resp.StatusCode)
	}
	a, err := NewAccount(K256, "del.test", plc, nil)
	if err != nil {
		t.Fatal(err)
	}
	plc.Delete(a.DID)
	resp, err = http.Get(plc.URL() + "/" + a.DID)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("deleted DID: %d", resp.StatusCode)
	}
}

// TestPDSLiveSubscriberGetsFramesAfterHandshake checks that a live
// subscriber (no cursor) receives a frame emitted right after its
// handshake completed: the stream position is fixed before the upgrade
// response, not after it.
func TestPDSLiveSubscriberGetsFramesAfterHandshake(t *testing.T) {
	env := newTestEnv(t)
	a, err := NewAccount(K256, "race.test", env.plc, env.pds)
	if err != nil {
		t.Fatal(err)
	}
	const rounds = 200
	ctx, cancel := context.WithTimeout(context.Background(), testWait)
	defer cancel()
	for i := range rounds {
		cl, err := DialFirehose(ctx, subURL(env.pds, -1), DialOptions{})
		if err != nil {
			t.Fatal(err)
		}
		seq := env.pds.Emit(Event{Identity: a.Identity()})
		_ = cl.Conn().SetReadDeadline(time.Now().Add(5 * time.Second))
		_, p, err := cl.Next()
		if err != nil {
			t.Fatalf("round %d: frame %d emitted after the handshake not received: %v", i, seq, err)
		}
		if fi, err := ScanFrame(p); err != nil || fi.Seq != seq {
			t.Fatalf("round %d: got seq %d (%v), want %d", i, fi.Seq, err, seq)
		}
		_ = cl.Close()
	}
}
