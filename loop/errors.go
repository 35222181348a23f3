// Package loop owns WebSocket connections on gnet event loops, after their
// HTTP handshake, for both roles: downstream consumers (server role, upgraded
// by net/http and gobwas/ws on a hijacked connection) and upstream hosts
// (client role, dialed and upgraded in a short-lived goroutine, over TLS when
// the URL is wss://). Once enrolled, a connection has no goroutine of its
// own: its bytes are decoded in the loop's read callback straight from
// gnet's input buffer, and writes go through gnet's outbound buffer, which
// this package bounds.
//
// The package knows nothing of atproto: it delivers complete data messages
// to a Handler and sends frames it is given.
package loop

import "errors"

// Errors reported to Handler.OnClose or returned by Conn methods.
var (
	// ErrBackpressure: more than Options.MaxInboundBuffered bytes were kept
	// unconsumed for one connection (paused, or mid-frame), or a write would
	// have queued more than Options.MaxOutboundBuffered. The connection is
	// closed; an upstream is resumed later from its cursor.
	ErrBackpressure = errors.New("loop: buffer bound exceeded")
	// ErrPaused is returned by Handler.OnMessage to leave the message
	// unconsumed and stop reading the connection until Conn.Resume.
	ErrPaused = errors.New("loop: paused")
	// ErrDeadPeer: nothing was received for two ping intervals.
	ErrDeadPeer = errors.New("loop: peer stopped responding")
	// ErrClosed: the connection or the engine is closed. OnClose receives it
	// when the engine stops.
	ErrClosed = errors.New("loop: closed")
	// ErrUnsupportedConn: the connection handed over is not a plain TCP
	// connection that gnet can take (for example a *tls.Conn from an HTTPS
	// server; TLS for consumers is terminated in front of the relay).
	ErrUnsupportedConn = errors.New("loop: connection is not a TCP connection")
	// ErrBadURL: Dial was given a URL that is not ws:// or wss://.
	ErrBadURL = errors.New("loop: URL is not ws:// or wss://")
)
