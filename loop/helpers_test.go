package loop

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
	"github.com/panjf2000/gnet/v2"
)

// testTimeout bounds every wait in these tests; reaching it is a failure,
// not a measurement.
const testTimeout = 10 * time.Second

func testLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

func startEngine(t testing.TB, opts Options) *Engine {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = testLogger()
	}
	if opts.Loops == 0 {
		opts.Loops = 2
	}
	e, err := Start(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
		defer cancel()
		_ = e.Stop(ctx)
	})
	return e
}

type message struct {
	op   ws.OpCode
	data []byte
}

// recorder is a Handler that records events on channels. onMessage, if
// set, decides what OnMessage returns (after recording for nil results).
type recorder struct {
	opened    chan *Conn
	msgs      chan message
	closed    chan error
	onOpen    func(c *Conn)
	onMessage func(c *Conn, op ws.OpCode, p []byte) error
}

func newRecorder() *recorder {
	return &recorder{
		opened: make(chan *Conn, 1024),
		msgs:   make(chan message, 100_000),
		closed: make(chan error, 1024),
	}
}

func (r *recorder) OnOpen(c *Conn) {
	if r.onOpen != nil {
		r.onOpen(c)
	}
	r.opened <- c
}

func (r *recorder) OnMessage(c *Conn, op ws.OpCode, p []byte) error {
	if r.onMessage != nil {
		if err := r.onMessage(c, op, p); err != nil {
			return err
		}
	}
	r.msgs <- message{op, bytes.Clone(p)}
	return nil
}

func (r *recorder) OnClose(c *Conn, err error) { r.closed <- err }

func (r *recorder) waitOpen(t testing.TB) *Conn {
	t.Helper()
	select {
	case c := <-r.opened:
		return c
	case <-time.After(testTimeout):
		t.Fatal("no OnOpen")
		return nil
	}
}

func (r *recorder) waitMsg(t testing.TB) message {
	t.Helper()
	select {
	case m := <-r.msgs:
		return m
	case <-time.After(testTimeout):
		t.Fatal("no message")
		return message{}
	}
}

func (r *recorder) waitClose(t testing.TB) error {
	t.Helper()
	select {
	case err := <-r.closed:
		return err
	case <-time.After(testTimeout):
		t.Fatal("no OnClose")
		return nil
	}
}

// echo makes r write every data message back.
func (r *recorder) echo() *recorder {
	r.onMessage = func(c *Conn, op ws.OpCode, p []byte) error {
		return c.WriteMessage(op, p)
	}
	return r
}

// startServer serves WebSocket upgrades on 127.0.0.1 into e with a
// handler per connection from newHandler, and returns the ws:// URL.
func startServer(t testing.TB, e *Engine, newHandler func() Handler) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, err := e.Upgrade(w, r, newHandler(), nil); err != nil {
			t.Logf("upgrade: %v", err)
		}
	}))
	t.Cleanup(srv.Close)
	return "ws" + strings.TrimPrefix(srv.URL, "http")
}

// wsClient is a gobwas client connection.
type wsClient struct {
	net.Conn
	r io.Reader
}

func (c *wsClient) Read(p []byte) (int, error) { return c.r.Read(p) }

func dialClient(t testing.TB, url string) *wsClient {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	conn, br, _, err := ws.Dial(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	c := &wsClient{Conn: conn, r: conn}
	if br != nil {
		c.r = io.MultiReader(br, conn)
	}
	return c
}

// readFrame reads one raw frame (unmasked by the server).
func (c *wsClient) readFrame(t testing.TB) ws.Frame {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(testTimeout))
	//lint:ignore SA1019 the peer is the test\'s own local server; its frames are small and trusted
	f, err := ws.ReadFrame(c)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func (c *wsClient) readData(t testing.TB) ([]byte, ws.OpCode) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(testTimeout))
	p, op, err := wsutil.ReadServerData(c)
	if err != nil {
		t.Fatal(err)
	}
	return p, op
}

// rawUpgrade opens a TCP connection to url, sends the upgrade request
// followed by extra bytes in the same write, and returns the connection
// and a reader positioned after the 101 response.
func rawUpgrade(t testing.TB, url string, extra []byte) (net.Conn, *bufio.Reader) {
	t.Helper()
	addr := strings.TrimPrefix(url, "ws://")
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	req := "GET / HTTP/1.1\r\nHost: " + addr + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
	if _, err := conn.Write(append([]byte(req), extra...)); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(testTimeout))
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("status %d", resp.StatusCode)
	}
	return conn, br
}

// waitFor polls cond until it holds or the test times out.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// onLoop runs fn on c's loop and waits for it.
func onLoop(t testing.TB, c *Conn, fn func(c *Conn)) {
	t.Helper()
	done := make(chan struct{})
	if err := c.Execute(func(c *Conn) { fn(c); close(done) }); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
	case <-time.After(testTimeout):
		t.Fatal("Execute did not run")
	}
}

var errTest = errors.New("test error")

// syncList is a goroutine-safe list of delivered payloads.
type syncList struct {
	mu    sync.Mutex
	items [][]byte
}

func (l *syncList) add(p []byte) {
	l.mu.Lock()
	l.items = append(l.items, bytes.Clone(p))
	l.mu.Unlock()
}

func (l *syncList) len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.items)
}

// Test-only Conn methods (the relay does not use them).

// Role returns the connection's role.
func (c *Conn) Role() Role { return c.role }

// WriteMessage frames payload as one message of opcode op (masked in the
// client role) and writes it (loop). Errors as for Writev.
func (c *Conn) WriteMessage(op ws.OpCode, payload []byte) error {
	if err := c.writable(); err != nil {
		return err
	}
	if err := c.checkOutbound(len(payload) + ws.MaxHeaderSize); err != nil {
		return err
	}
	return c.writeFrame(op, payload)
}

// Loops returns the distinct loops that have owned at least one connection
// so far.
func (e *Engine) Loops() []gnet.EventLoop {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]gnet.EventLoop(nil), e.active...)
}
