package relay

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"testing"
	"time"

	comatproto "github.com/bluesky-social/indigo/api/atproto"
	"github.com/bluesky-social/indigo/events"
	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"

	"github.com/relay/relay/wsframe"
)

// testLogger is quiet unless RELAY_TEST_LOG is set.
func testLogger() *slog.Logger {
	if os.Getenv("RELAY_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// testConfig is a relay on free loopback ports, in a temp dir, with no
// upstream, insecure hosts allowed.
func testConfig(t testing.TB) Config {
	cfg := DefaultConfig()
	cfg.Listen = "127.0.0.1:0"
	cfg.MetricsListen = "127.0.0.1:0"
	cfg.DataDir = t.TempDir()
	cfg.Upstream = ""
	cfg.PLCHost = "http://127.0.0.1:1" // nothing resolves unless a test sets a PLC
	cfg.AllowInsecureHosts = true
	cfg.EventLoops = 2
	cfg.FrameWorkers = 2
	// Tests stream faster than an untrusted host may; the limits have
	// their own tests.
	cfg.TrustedDomains = "*"
	return cfg
}

func startRelay(t testing.TB, cfg Config) *Relay {
	t.Helper()
	return startRelayHooked(t, cfg, nil)
}

// identityEvent is the smallest sequencable event.
func identityEvent(n int) Outgoing {
	return Outgoing{Kind: KindIdentity, UID: uint64(n%7 + 1), Body: &comatproto.SyncSubscribeRepos_Identity{
		Did: fmt.Sprintf("did:plc:test%020d", n), Time: "2026-01-01T00:00:00.000Z",
	}}
}

// frame is one firehose message as a test consumer sees it.
type frame struct {
	op    int64
	t     string
	seq   int64
	did   string
	errNm string // error frame name, or #info name
}

// testConsumer is a blocking WebSocket firehose client for tests.
type testConsumer struct {
	conn net.Conn
	rd   io.ReadWriter // reads conn after what the handshake reader buffered
}

func dialConsumer(t testing.TB, addr string, query string) *testConsumer {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, br, _, err := ws.Dial(ctx, "ws://"+addr+"/xrpc/com.atproto.sync.subscribeRepos"+query)
	if err != nil {
		t.Fatalf("dial consumer: %v", err)
	}
	t.Cleanup(func() { conn.Close() })
	return newTestConsumer(conn, br)
}

// newTestConsumer reads conn, starting with bytes the handshake buffered
// (the relay may send frames in the same segment as its 101 response).
func newTestConsumer(conn net.Conn, br *bufio.Reader) *testConsumer {
	var rd io.ReadWriter = conn
	if br != nil && br.Buffered() > 0 {
		rd = struct {
			io.Reader
			io.Writer
		}{io.MultiReader(br, conn), conn}
	}
	return &testConsumer{conn: conn, rd: rd}
}

// next reads one frame, or returns an error (io.EOF when closed).
func (c *testConsumer) next(timeout time.Duration) (frame, error) {
	_ = c.conn.SetReadDeadline(time.Now().Add(timeout))
	msg, err := wsutil.ReadServerBinary(c.rd)
	if err != nil {
		return frame{}, err
	}
	return parseFrame(msg)
}

func parseFrame(msg []byte) (frame, error) {
	op, t, body, err := wsframe.ParseEventHeader(msg)
	if err != nil {
		return frame{}, err
	}
	f := frame{op: op, t: t}
	r := bytes.NewReader(body)
	if op == -1 {
		var ef events.ErrorFrame
		if err := ef.UnmarshalCBOR(r); err != nil {
			return f, err
		}
		f.errNm = ef.Error
		return f, nil
	}
	switch t {
	case "#commit":
		var ev comatproto.SyncSubscribeRepos_Commit
		err = ev.UnmarshalCBOR(r)
		f.seq, f.did = ev.Seq, ev.Repo
	case "#sync":
		var ev comatproto.SyncSubscribeRepos_Sync
		err = ev.UnmarshalCBOR(r)
		f.seq, f.did = ev.Seq, ev.Did
	case "#identity":
		var ev comatproto.SyncSubscribeRepos_Identity
		err = ev.UnmarshalCBOR(r)
		f.seq, f.did = ev.Seq, ev.Did
	case "#account":
		var ev comatproto.SyncSubscribeRepos_Account
		err = ev.UnmarshalCBOR(r)
		f.seq, f.did = ev.Seq, ev.Did
	case "#info":
		var ev comatproto.SyncSubscribeRepos_Info
		err = ev.UnmarshalCBOR(r)
		f.errNm = ev.Name
	}
	return f, err
}

// readSeqs reads message frames until it has n of them, checking that seqs
// strictly increase by one from first.
func (c *testConsumer) readSeqs(t testing.TB, first int64, n int, timeout time.Duration) {
	t.Helper()
	want := first
	deadline := time.Now().Add(timeout)
	for i := 0; i < n; i++ {
		f, err := c.next(time.Until(deadline))
		if err != nil {
			t.Fatalf("after %d frames (want seq %d): %v", i, want, err)
		}
		if f.op != 1 || f.t == "#info" {
			t.Fatalf("unexpected frame %+v", f)
		}
		if f.seq != want {
			t.Fatalf("frame %d: seq %d, want %d (gap or duplicate)", i, f.seq, want)
		}
		want++
	}
}
