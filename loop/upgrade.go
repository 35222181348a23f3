package loop

import (
	"bytes"
	"net"
	"net/http"

	"github.com/gobwas/ws"
)

// Upgrade performs the WebSocket handshake on w/r with gobwas/ws (hijacking
// the connection from net/http) and enrolls the connection in a loop in the
// server role; h gets its events and ctx becomes its Context. Bytes the
// client sent after its request and net/http already buffered are decoded
// first. Headers already set on w.Header() are sent with the 101 response.
//
// On a handshake error gobwas has answered the client with an HTTP error
// and the connection is closed. It returns ErrClosed once Stop has begun,
// ErrUnsupportedConn for a connection gnet cannot take (TLS).
func (e *Engine) Upgrade(w http.ResponseWriter, r *http.Request, h Handler, ctx any) (*Conn, error) {
	if e.stopping.Load() {
		http.Error(w, "shutting down", http.StatusServiceUnavailable)
		return nil, ErrClosed
	}
	u := ws.HTTPUpgrader{}
	if hdr := w.Header(); len(hdr) > 0 {
		u.Header = hdr.Clone()
	}
	conn, rw, _, err := u.Upgrade(r, w)
	if err != nil {
		if conn != nil {
			_ = conn.Close()
		}
		return nil, err
	}
	c := e.newConn(Server, h, ctx)
	if n := rw.Reader.Buffered(); n > 0 {
		p, _ := rw.Reader.Peek(n)
		c.buf = bytes.Clone(p)
	}
	return e.enroll(conn, c)
}

// enroll hands raw to a loop (gnet dups the descriptor and raw is closed).
// It returns after the loop ran OnOpen.
func (e *Engine) enroll(raw net.Conn, c *Conn) (*Conn, error) {
	if e.stopping.Load() {
		_ = raw.Close()
		return nil, ErrClosed
	}
	if _, ok := raw.(*net.TCPConn); !ok {
		_ = raw.Close()
		return nil, ErrUnsupportedConn
	}
	if _, err := e.cli.EnrollContext(raw, c); err != nil {
		return nil, err
	}
	return c, nil
}
