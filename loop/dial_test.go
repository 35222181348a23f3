package loop

import (
	"bufio"
	"bytes"
	"crypto/sha1"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"

	"github.com/relay/relay/wsframe"
)

// upstreamMessages are what the test upstreams send: numbered payloads of
// varied sizes, a few large, totalling a few MB.
func upstreamMessages() [][]byte {
	var msgs [][]byte
	for i := range 400 {
		n := 4 + (i*7919)%20_000
		if i%100 == 50 {
			n = 1 << 20
		}
		p := payload(n, uint64(i))
		binary.BigEndian.PutUint32(p, uint32(i))
		msgs = append(msgs, p)
	}
	return msgs
}

// startUpstream runs a net/http + gobwas WebSocket server on 127.0.0.1
// (TLS with a self-signed certificate when pool is wanted) that sends msgs,
// then reads one client message, answers it with "ack:"+message and closes
// normally. It returns the URL and a channel with the server's error.
func startUpstream(t *testing.T, useTLS bool, msgs [][]byte) (string, *x509.CertPool, chan error) {
	t.Helper()
	done := make(chan error, 1)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u := ws.HTTPUpgrader{Header: http.Header{"Server": {"atproto-relay-test"}}}
		conn, rw, _, err := u.Upgrade(r, w)
		if err != nil {
			done <- err
			return
		}
		defer conn.Close()
		for _, m := range msgs {
			if err := wsutil.WriteServerBinary(rw.Writer, m); err != nil {
				done <- err
				return
			}
		}
		if err := rw.Writer.Flush(); err != nil {
			done <- err
			return
		}
		got, op, err := wsutil.ReadClientData(rw)
		if err != nil || op != ws.OpText {
			done <- errors.Join(err, errors.New("bad client message"))
			return
		}
		if err := wsutil.WriteServerText(conn, append([]byte("ack:"), got...)); err != nil {
			done <- err
			return
		}
		_ = ws.WriteFrame(conn, ws.NewCloseFrame(ws.NewCloseFrameBody(ws.StatusNormalClosure, "")))
		// Wait for the client's close answer.
		//lint:ignore SA1019 the peer is the test\'s own local server; its frames are small and trusted
		f, err := ws.ReadFrame(rw.Reader)
		if err == nil && f.Header.OpCode != ws.OpClose {
			err = errors.New("expected close answer")
		}
		done <- err
	})
	srv := httptest.NewUnstartedServer(h)
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // expected TLS failures in TestDialRejections
	var pool *x509.CertPool
	if useTLS {
		var cert tls.Certificate
		cert, pool = testCert(t)
		srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
		srv.StartTLS()
	} else {
		srv.Start()
	}
	t.Cleanup(srv.Close)
	url := strings.Replace(srv.URL, "http", "ws", 1)
	return url, pool, done
}

func testDial(t *testing.T, useTLS bool, tlsVersion uint16) {
	e := startEngine(t, Options{})
	msgs := upstreamMessages()
	url, pool, serverDone := startUpstream(t, useTLS, msgs)

	delivered := &syncList{}
	rec := pausingHandler(50, delivered)
	opts := DialOptions{}
	if useTLS {
		opts.TLSConfig = &tls.Config{RootCAs: pool, MinVersion: tlsVersion, MaxVersion: tlsVersion}
	}
	res, err := e.Dial(t.Context(), url, opts, rec, "my context")
	if err != nil {
		t.Fatal(err)
	}
	if got := res.ResponseHeader.Get("Server"); got != "atproto-relay-test" {
		t.Fatalf("Server header %q", got)
	}
	c := rec.waitOpen(t)
	if c != res.Conn || c.Role() != Client || c.Context() != "my context" {
		t.Fatalf("conn %p role %v ctx %v", c, c.Role(), c.Context())
	}
	waitFor(t, "all upstream messages", func() bool { return delivered.len() >= len(msgs) })
	checkOrder(t, delivered, msgs)

	for range msgs { // the recorder saw the same messages
		rec.waitMsg(t)
	}
	onLoop(t, c, func(c *Conn) {
		if err := c.WriteMessage(ws.OpText, []byte("hello upstream")); err != nil {
			t.Error(err)
		}
	})
	if m := rec.waitMsg(t); string(m.data) != "ack:hello upstream" {
		t.Fatalf("reply %q", m.data)
	}
	if err := rec.waitClose(t); err != nil {
		t.Fatalf("OnClose %v, want nil after the server's close", err)
	}
	if err := <-serverDone; err != nil {
		t.Fatalf("server: %v", err)
	}
}

func TestDialWS(t *testing.T) { testDial(t, false, 0) }

func TestDialWSSTLS13(t *testing.T) { testDial(t, true, tls.VersionTLS13) }

func TestDialWSSTLS12(t *testing.T) { testDial(t, true, tls.VersionTLS12) }

// startRawUpstream accepts one connection and answers the upgrade by hand,
// writing the 101 response and the first frames in one write, so that the
// dialer's reader holds frames when the handshake ends.
func startRawUpstream(t *testing.T, ln net.Listener, msgs [][]byte) {
	t.Helper()
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		br := bufio.NewReader(conn)
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		sum := sha1.Sum([]byte(req.Header.Get("Sec-WebSocket-Key") + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
		out := []byte("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
			"Sec-WebSocket-Accept: " + base64.StdEncoding.EncodeToString(sum[:]) + "\r\n\r\n")
		for _, m := range msgs[:3] {
			out = wsframe.AppendFrame(out, ws.OpBinary, m, false)
		}
		// Half of the fourth frame too.
		fourth := wsframe.AppendFrame(nil, ws.OpBinary, msgs[3], false)
		out = append(out, fourth[:len(fourth)/2]...)
		if _, err := conn.Write(out); err != nil {
			return
		}
		rest := fourth[len(fourth)/2:]
		for _, m := range msgs[4:] {
			rest = wsframe.AppendFrame(rest, ws.OpBinary, m, false)
		}
		_, _ = conn.Write(rest)
		_, _ = conn.Read(make([]byte, 1)) // hold until the client goes
	}()
}

func TestDialFramesRightAfterResponse(t *testing.T) {
	var msgs [][]byte
	for i := range 10 {
		msgs = append(msgs, []byte(strings.Repeat(string(rune('a'+i)), 100+i)))
	}
	// Pausing on a message among the leftovers lets the rest pile up in
	// gnet's buffer behind a partial frame; pausing on the last one leaves
	// nothing to wake the connection but Resume.
	for _, tc := range []struct {
		useTLS  bool
		pauseAt int
	}{{false, 1}, {false, len(msgs) - 1}, {true, 1}, {true, len(msgs) - 1}} {
		useTLS := tc.useTLS
		e := startEngine(t, Options{})
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		opts := DialOptions{}
		url := "ws://" + ln.Addr().String()
		if useTLS {
			cert, pool := testCert(t)
			ln = tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{cert}})
			opts.TLSConfig = &tls.Config{RootCAs: pool}
			url = "wss://" + strings.TrimPrefix(url, "ws://")
		}
		startRawUpstream(t, ln, msgs)
		rec := newRecorder()
		paused := false
		rec.onMessage = func(c *Conn, _ ws.OpCode, p []byte) error {
			if bytes.Equal(p, msgs[tc.pauseAt]) && !paused {
				paused = true
				go func() {
					time.Sleep(20 * time.Millisecond)
					c.Resume()
				}()
				return ErrPaused
			}
			return nil
		}
		if _, err := e.Dial(t.Context(), url, opts, rec, nil); err != nil {
			t.Fatal(err)
		}
		for i, want := range msgs {
			if m := rec.waitMsg(t); !bytes.Equal(m.data, want) {
				t.Fatalf("tls %v, pause at %d: message %d = %q", useTLS, tc.pauseAt, i, m.data)
			}
		}
	}
}

func TestDialRejections(t *testing.T) {
	e := startEngine(t, Options{})
	rec := newRecorder()
	if _, err := e.Dial(t.Context(), "http://127.0.0.1:1/", DialOptions{}, rec, nil); !errors.Is(err, ErrBadURL) {
		t.Fatalf("http URL: %v", err)
	}
	// Not a WebSocket endpoint: a plain 404 is a ws.StatusError.
	srv := httptest.NewServer(http.NotFoundHandler())
	t.Cleanup(srv.Close)
	_, err := e.Dial(t.Context(), "ws"+strings.TrimPrefix(srv.URL, "http"), DialOptions{}, rec, nil)
	var se ws.StatusError
	if !errors.As(err, &se) || int(se) != http.StatusNotFound {
		t.Fatalf("404 server: %v", err)
	}
	// The SSRF-safe dialer refuses loopback before connecting.
	url := "ws" + strings.TrimPrefix(srv.URL, "http")
	if _, err := e.Dial(t.Context(), url, DialOptions{NetDial: SafeDialContext(nil)}, rec, nil); !errors.Is(err, ErrForbiddenAddress) {
		t.Fatalf("safe dial to loopback: %v", err)
	}
	// An untrusted certificate fails the TLS handshake.
	tlsURL, _, _ := startUpstream(t, true, nil)
	if _, err := e.Dial(t.Context(), tlsURL, DialOptions{}, rec, nil); err == nil {
		t.Fatal("dial with an untrusted certificate succeeded")
	}
	select {
	case <-rec.opened:
		t.Fatal("a failed dial opened a connection")
	default:
	}
}
