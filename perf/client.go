package perf

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"

	"github.com/gobwas/ws"
)

// Firehose client limits.
const (
	// MaxFrameBytes is the largest message the client accepts: the 5 MB
	// frame limit of the reference relays.
	MaxFrameBytes = 5_000_000
	// DefaultClientReadBuffer is the client's read buffer: small, because a
	// fleet of consumers holds one each, and frames larger than it are read
	// straight into the message buffer.
	DefaultClientReadBuffer = 4 << 10
	// maxControlPayload is the largest control frame payload (RFC 6455).
	maxControlPayload = 125
)

var (
	// ErrFrameTooLarge is returned for a message over MaxFrameBytes.
	ErrFrameTooLarge = errors.New("perf: firehose message over the frame limit")
	// ErrProtocol is returned for WebSocket framing a server must not send
	// (masked frames, fragmented control frames, stray continuations).
	ErrProtocol = errors.New("perf: WebSocket protocol violation by the server")
)

// CloseError is returned by FirehoseClient.Next when the server sent a
// close frame.
type CloseError struct {
	Code   ws.StatusCode
	Reason string
}

func (e *CloseError) Error() string {
	return fmt.Sprintf("perf: server closed the firehose: %d %s", e.Code, e.Reason)
}

// DialOptions configures a firehose client.
type DialOptions struct {
	// TLS is the client configuration for wss:// URLs.
	TLS *tls.Config
	// ReadBufferSize is the socket read buffer; default DefaultClientReadBuffer.
	ReadBufferSize int
}

// FirehoseClient reads one WebSocket firehose with gobwas/ws: it answers
// pings, reassembles fragmented messages into one reused buffer and stops
// at a close frame. It is independent of the relay's own frame code, so
// tests read the relay with a second implementation.
type FirehoseClient struct {
	conn net.Conn
	br   *bufio.Reader
	msg  []byte
	ctl  [maxControlPayload]byte
}

// DialFirehose connects to a ws:// or wss:// subscribeRepos URL.
func DialFirehose(ctx context.Context, url string, opts DialOptions) (*FirehoseClient, error) {
	size := opts.ReadBufferSize
	if size <= 0 {
		size = DefaultClientReadBuffer
	}
	d := ws.Dialer{ReadBufferSize: size, WriteBufferSize: 512, TLSConfig: opts.TLS}
	conn, br, _, err := d.Dial(ctx, url)
	if err != nil {
		return nil, err
	}
	if br == nil {
		br = bufio.NewReaderSize(conn, size)
	}
	return &FirehoseClient{conn: conn, br: br}, nil
}

// Conn is the underlying connection (for deadlines).
func (c *FirehoseClient) Conn() net.Conn { return c.conn }

// Close sends a close frame and closes the connection.
func (c *FirehoseClient) Close() error {
	f := ws.MaskFrameInPlace(ws.NewCloseFrame(ws.NewCloseFrameBody(ws.StatusNormalClosure, "")))
	_ = ws.WriteFrame(c.conn, f)
	return c.conn.Close()
}

// Next returns the next data message: its opcode (binary or text) and its
// payload, valid until the next call.
func (c *FirehoseClient) Next() (ws.OpCode, []byte, error) {
	c.msg = c.msg[:0]
	var op ws.OpCode
	for {
		h, err := ws.ReadHeader(c.br)
		if err != nil {
			return 0, nil, err
		}
		if h.Masked {
			return 0, nil, ErrProtocol
		}
		if h.OpCode.IsControl() {
			if !h.Fin || h.Length > maxControlPayload {
				return 0, nil, ErrProtocol
			}
			p := c.ctl[:h.Length]
			if _, err := io.ReadFull(c.br, p); err != nil {
				return 0, nil, err
			}
			switch h.OpCode {
			case ws.OpPing:
				f := ws.MaskFrameInPlace(ws.NewPongFrame(p))
				if err := ws.WriteFrame(c.conn, f); err != nil {
					return 0, nil, err
				}
			case ws.OpClose:
				code, reason := ws.ParseCloseFrameData(p)
				return 0, nil, &CloseError{Code: code, Reason: reason}
			}
			continue
		}
		switch {
		case h.OpCode == ws.OpContinuation && op == 0:
			return 0, nil, ErrProtocol
		case h.OpCode != ws.OpContinuation && op != 0:
			return 0, nil, ErrProtocol
		case op == 0:
			op = h.OpCode
		}
		if h.Length > int64(MaxFrameBytes-len(c.msg)) {
			return 0, nil, ErrFrameTooLarge
		}
		// The buffer is reused across messages; growth is bounded by
		// MaxFrameBytes, checked above.
		start := len(c.msg)
		c.msg = slices.Grow(c.msg, int(h.Length))[:start+int(h.Length)]
		if _, err := io.ReadFull(c.br, c.msg[start:]); err != nil {
			return 0, nil, err
		}
		if h.Fin {
			return op, c.msg, nil
		}
	}
}
