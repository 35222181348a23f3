package loop

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"time"

	"github.com/gobwas/ws"
)

// Dial limits.
const (
	// DefaultDialTimeout bounds dial, TLS and WebSocket handshakes together
	// when DialOptions.Timeout is zero.
	DefaultDialTimeout = 30 * time.Second
	// maxResponseHeaders bounds the response header lines kept from the
	// upgrade response.
	maxResponseHeaders = 100
)

// DialOptions configures Dial.
type DialOptions struct {
	// Timeout bounds the dial and both handshakes; default 30 s.
	Timeout time.Duration
	// TLSConfig for wss:// (cloned; ServerName defaults to the URL's host).
	TLSConfig *tls.Config
	// Header is sent with the upgrade request.
	Header http.Header
	// NetDial opens the TCP connection, e.g. SafeDialContext(...); default
	// a net.Dialer. It must return a *net.TCPConn.
	NetDial func(ctx context.Context, network, addr string) (net.Conn, error)
}

// DialResult is a successful Dial.
type DialResult struct {
	Conn *Conn
	// ResponseHeader holds the upgrade response's non-WebSocket headers
	// (the relay checks Server: atproto-relay).
	ResponseHeader http.Header
}

// errTooManyHeaders is returned when an upgrade response has more than
// maxResponseHeaders header lines.
var errTooManyHeaders = fmt.Errorf("loop: more than %d response headers", maxResponseHeaders)

// Dial connects to a ws:// or wss:// URL, does TLS and the WebSocket
// handshake blocking in the calling goroutine, then enrolls the connection
// in a loop in the client role; h gets its events and connCtx becomes its
// Context. Frames the server sent right after its response are decoded
// first. A non-101 response is a ws.StatusError.
func (e *Engine) Dial(ctx context.Context, rawURL string, opts DialOptions, h Handler, connCtx any) (DialResult, error) {
	if e.stopping.Load() {
		return DialResult{}, ErrClosed
	}
	u, err := url.Parse(rawURL)
	if err != nil {
		return DialResult{}, err
	}
	var port string
	switch u.Scheme {
	case "ws":
		port = "80"
	case "wss":
		port = "443"
	default:
		return DialResult{}, ErrBadURL
	}
	if p := u.Port(); p != "" {
		port = p
	}
	host := u.Hostname()
	if host == "" {
		return DialResult{}, ErrBadURL
	}

	timeout := opts.Timeout
	if timeout <= 0 {
		timeout = DefaultDialTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	netDial := opts.NetDial
	if netDial == nil {
		netDial = (&net.Dialer{}).DialContext
	}
	raw, err := netDial(ctx, "tcp", net.JoinHostPort(host, port))
	if err != nil {
		return DialResult{}, err
	}
	ok := false
	defer func() {
		if !ok {
			_ = raw.Close()
		}
	}()
	// The handshakes are blocking I/O on raw: bound them by ctx.
	deadline, _ := ctx.Deadline()
	_ = raw.SetDeadline(deadline)
	stopWatch := context.AfterFunc(ctx, func() { _ = raw.SetDeadline(time.Unix(1, 0)) })
	defer stopWatch()

	var (
		rw io.ReadWriter = raw
		ts *tlsState
	)
	if u.Scheme == "wss" {
		cfg := &tls.Config{}
		if opts.TLSConfig != nil {
			cfg = opts.TLSConfig.Clone()
		}
		if cfg.ServerName == "" {
			cfg.ServerName = host
		}
		tr := &tlsTransport{raw: raw}
		tc := tls.Client(tr, cfg)
		if err := tc.HandshakeContext(ctx); err != nil {
			return DialResult{}, err
		}
		rw, ts = tc, &tlsState{conn: tc, tr: tr}
	}

	respHeader := http.Header{}
	lines := 0
	d := ws.Dialer{
		OnHeader: func(k, v []byte) error {
			if lines++; lines > maxResponseHeaders {
				return errTooManyHeaders
			}
			respHeader.Add(string(k), string(v))
			return nil
		},
	}
	if len(opts.Header) > 0 {
		d.Header = ws.HandshakeHeaderHTTP(opts.Header)
	}
	br, _, err := d.Upgrade(rw, u)
	if err != nil {
		return DialResult{}, err
	}
	if !stopWatch() {
		return DialResult{}, ctx.Err() // deadline hit as the handshake ended
	}
	_ = raw.SetDeadline(time.Time{})

	c := e.newConn(Client, h, connCtx)
	c.tls = ts
	if br != nil {
		if n := br.Buffered(); n > 0 {
			p, _ := br.Peek(n)
			c.buf = bytes.Clone(p)
		}
		ws.PutReader(br)
	}
	ok = true // enroll owns raw now
	if _, err := e.enroll(raw, c); err != nil {
		return DialResult{}, err
	}
	return DialResult{Conn: c, ResponseHeader: respHeader}, nil
}
