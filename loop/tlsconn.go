package loop

import (
	"crypto/tls"
	"errors"
	"net"
	"sync/atomic"
	"time"
)

// TLS over an event loop.
//
// An upstream wss:// connection does its TLS and WebSocket handshakes
// blocking, in the dialing goroutine, over a tlsTransport that reads and
// writes the raw TCP connection. Once the TCP connection is enrolled in
// gnet, the transport is attached to the gnet connection: Read hands the
// tls.Conn the ciphertext gnet has buffered, or errWouldBlock when there is
// none, and Write queues ciphertext on gnet (on the loop). crypto/tls keeps
// partial records across a Read error that is a net.Error with Temporary()
// true and does not poison the connection, so the same tls.Conn is read
// without blocking from OnTraffic until it would block. TestTLSSpike proves
// this for TLS 1.2 and 1.3, post-handshake messages included.

// feed is what the transport reads from and writes to once attached: a
// gnet.Conn on its loop (a fake in the spike test).
type feed interface {
	InboundBuffered() int
	Read(p []byte) (int, error)
	Write(p []byte) (int, error)
}

// tlsTransport is the net.Conn under an upstream's tls.Conn.
type tlsTransport struct {
	raw      net.Conn // blocking I/O until attached
	attached atomic.Bool
	f        feed
}

// tlsState is the TLS side of a client connection.
type tlsState struct {
	conn *tls.Conn
	tr   *tlsTransport
}

// wouldBlockError is returned by an attached transport's Read when no
// ciphertext is buffered. It is temporary, so crypto/tls keeps its state.
type wouldBlockError struct{}

func (wouldBlockError) Error() string   { return "loop: no buffered input (would block)" }
func (wouldBlockError) Timeout() bool   { return true }
func (wouldBlockError) Temporary() bool { return true }

var errWouldBlock net.Error = wouldBlockError{}

func isWouldBlock(err error) bool {
	var wb wouldBlockError
	return errors.As(err, &wb)
}

// attach switches the transport from the raw connection to f. It must be
// called on the loop that owns f, before any TLS read there.
func (t *tlsTransport) attach(f feed) {
	t.f = f
	t.attached.Store(true)
}

func (t *tlsTransport) Read(p []byte) (int, error) {
	if !t.attached.Load() {
		return t.raw.Read(p)
	}
	if t.f.InboundBuffered() == 0 {
		return 0, errWouldBlock
	}
	return t.f.Read(p)
}

func (t *tlsTransport) Write(p []byte) (int, error) {
	if !t.attached.Load() {
		return t.raw.Write(p)
	}
	return t.f.Write(p)
}

// Close closes the raw connection before attachment; afterwards the loop
// owns the socket and closes it.
func (t *tlsTransport) Close() error {
	if !t.attached.Load() {
		return t.raw.Close()
	}
	return nil
}

func (t *tlsTransport) LocalAddr() net.Addr  { return t.raw.LocalAddr() }
func (t *tlsTransport) RemoteAddr() net.Addr { return t.raw.RemoteAddr() }

// Deadlines apply to the blocking handshake only; the loop has a ticker.
func (t *tlsTransport) SetDeadline(d time.Time) error {
	if !t.attached.Load() {
		return t.raw.SetDeadline(d)
	}
	return nil
}

func (t *tlsTransport) SetReadDeadline(d time.Time) error {
	if !t.attached.Load() {
		return t.raw.SetReadDeadline(d)
	}
	return nil
}

func (t *tlsTransport) SetWriteDeadline(d time.Time) error {
	if !t.attached.Load() {
		return t.raw.SetWriteDeadline(d)
	}
	return nil
}
