package loop

import (
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"

	"github.com/gobwas/ws"
	"github.com/panjf2000/gnet/v2"

	"github.com/relay/relay/wsframe"
)

// Role says which side of the WebSocket a connection is.
type Role int

const (
	// Server: a downstream consumer connected to us; its frames are masked,
	// ours are not.
	Server Role = iota
	// Client: we dialed an upstream host; our frames are masked.
	Client
)

func (r Role) String() string {
	if r == Client {
		return "client"
	}
	return "server"
}

// Handler receives a connection's events. All callbacks run on the
// connection's loop goroutine and must not block.
type Handler interface {
	// OnOpen is called once the connection is enrolled, before any message.
	OnOpen(c *Conn)
	// OnMessage gets each complete data message (binary or text). payload is
	// valid only during the call. Return ErrPaused to leave this message
	// unconsumed and stop reading this connection until c.Resume(); any
	// other error closes the connection (close code 1008) and is reported to
	// OnClose.
	OnMessage(c *Conn, op ws.OpCode, payload []byte) error
	// OnClose is called once, when the connection is closed. err says why:
	// nil (clean close handshake or CloseWith), ErrBackpressure, ErrDeadPeer,
	// ErrClosed (engine stopped), a wsframe protocol or size error, the error
	// passed to Close or returned by OnMessage, or an I/O error.
	//
	// OnClose may run inside a Conn method called on the loop (Writev,
	// Close, CloseWith) when that call closes the connection,
	// for example on a write error; the method then returns after it.
	OnClose(c *Conn, err error)
}

// Connection states.
type connState uint8

const (
	stateOpen    connState = iota
	stateClosing           // we sent a close frame and wait for the peer's
	stateClosed
)

// Own inbound buffers (TLS plaintext, bytes read before enrolment) come
// from a pool so that an idle connection holds none.
const (
	ownBufSize = 32 << 10
	// minTLSRoom is the free space offered to one tls.Conn.Read: one full
	// TLS record of plaintext.
	minTLSRoom = 16 << 10
	// iovMax is the most buffers one writev takes on Linux (IOV_MAX); gnet
	// passes its argument straight to writev.
	iovMax = 1024
)

var ownBufPool = sync.Pool{New: func() any {
	b := make([]byte, 0, ownBufSize)
	return &b
}}

// Conn is one WebSocket connection owned by a loop. Methods marked (loop)
// must be called on the connection's loop: from a Handler callback or a
// function run by Execute or EventLoop().Execute.
type Conn struct {
	e    *Engine
	ls   *loopState
	gc   gnet.Conn
	h    Handler
	ctx  any
	role Role
	dec  wsframe.Decoder

	// buf holds inbound bytes that must be decoded outside gnet's buffer:
	// TLS plaintext, and bytes read before enrolment (net/http's or the
	// dialer's bufio leftovers). nil when unused, which is the steady state
	// of a plain connection: it decodes straight from gnet's input buffer.
	buf []byte
	tls *tlsState

	remote   net.Addr
	lastRecv int64 // engine clock of the last bytes received
	lastPing int64 // engine clock of the last ping sent
	closeBy  int64 // engine clock when a closing handshake gives up
	idx      int   // position in ls.conns

	state       connState
	paused      bool
	pausedHeld  int64 // this connection's share of Engine.pausedHeld
	inCallback  bool  // inside gnet's OnOpen/OnTraffic for this connection
	closeReq    bool  // close requested during a callback; the callback returns gnet.Close
	closeErrSet bool
	closeErr    error

	closed atomic.Bool // mirrors state == stateClosed for other goroutines
	resume atomic.Bool // Resume requested; applied by the next OnTraffic
}

func (e *Engine) newConn(role Role, h Handler, ctx any) *Conn {
	c := &Conn{e: e, h: h, ctx: ctx, role: role, idx: -1}
	if role == Server {
		c.dec = wsframe.Decoder{RequireMasked: true, MaxFrame: e.opts.MaxConsumerMessage, MaxMessage: e.opts.MaxConsumerMessage}
	} else {
		c.dec = wsframe.Decoder{RejectMasked: true, MaxFrame: e.opts.MaxUpstreamMessage, MaxMessage: e.opts.MaxUpstreamMessage}
	}
	return c
}

// Writev writes pre-framed bytes (loop). In the server role these are
// typically shared compiled frames (wsframe.Compile), written without a
// copy when the socket accepts them; gnet copies what it must queue. In the
// client role the frames must already be masked. The elements of bufs may
// be modified (gnet advances them on a partial write); the bytes are not.
//
// It returns ErrClosed after Close or CloseWith, and ErrBackpressure (and
// closes the connection) when the queue would exceed MaxOutboundBuffered.
func (c *Conn) Writev(bufs [][]byte) error {
	if err := c.writable(); err != nil {
		return err
	}
	total := 0
	for _, b := range bufs {
		total += len(b)
	}
	if err := c.checkOutbound(total); err != nil {
		return err
	}
	// A failed write closes the connection at once (gnet), so every further
	// write checks the state: the descriptor may already belong to another
	// connection.
	if c.tls != nil {
		tc := c.tls.conn
		for _, b := range bufs {
			if c.state == stateClosed {
				return ErrClosed
			}
			if _, err := tc.Write(b); err != nil {
				return err
			}
		}
		return nil
	}
	for len(bufs) > 0 {
		if c.state == stateClosed {
			return ErrClosed
		}
		chunk := bufs[:min(len(bufs), iovMax)]
		if _, err := c.gc.Writev(chunk); err != nil {
			return err
		}
		bufs = bufs[len(chunk):]
	}
	return nil
}

func (c *Conn) writable() error {
	if c.state != stateOpen || c.closeReq {
		return ErrClosed
	}
	return nil
}

func (c *Conn) checkOutbound(n int) error {
	if c.gc.OutboundBuffered()+n > c.e.opts.MaxOutboundBuffered {
		c.closeNow(ErrBackpressure)
		return ErrBackpressure
	}
	return nil
}

// writeFrame frames payload in the loop's scratch buffer and writes it.
func (c *Conn) writeFrame(op ws.OpCode, payload []byte) error {
	frame := wsframe.AppendFrame(c.ls.scratch[:0], op, payload, c.role == Client)
	err := c.writeBytes(frame)
	c.ls.keepScratch(frame)
	return err
}

func (ls *loopState) keepScratch(b []byte) {
	if cap(b) <= writeScratchKeep {
		ls.scratch = b[:0]
	} else {
		ls.scratch = nil
	}
}

// writeControl writes a control frame unless the connection is closed.
func (c *Conn) writeControl(op ws.OpCode, payload []byte) error {
	if c.state == stateClosed || c.closeReq {
		return ErrClosed
	}
	return c.writeFrame(op, payload)
}

// writeClose writes a close frame.
func (c *Conn) writeClose(code ws.StatusCode, reason string) {
	if c.state == stateClosed || c.closeReq {
		return
	}
	frame := wsframe.AppendClose(c.ls.scratch[:0], code, reason, c.role == Client)
	_ = c.writeBytes(frame)
	c.ls.keepScratch(frame)
}

// writeBytes writes framed bytes through TLS or straight to gnet. gnet
// queues what the socket does not take and closes the connection on a
// write error (calling OnClose before returning).
func (c *Conn) writeBytes(b []byte) error {
	if c.tls != nil {
		_, err := c.tls.conn.Write(b)
		return err
	}
	_, err := c.gc.Write(b)
	return err
}

// Buffered reports the outbound bytes not yet written to the socket (loop).
func (c *Conn) Buffered() int {
	if c.state == stateClosed {
		return 0
	}
	return c.gc.OutboundBuffered()
}

// CloseWith sends a close frame with code and reason and closes the
// connection when the peer answers, or after a grace period (loop). Nothing
// more is sent or delivered after it; OnClose gets nil.
func (c *Conn) CloseWith(code ws.StatusCode, reason string) {
	if c.state != stateOpen || c.closeReq {
		return
	}
	c.writeClose(code, reason)
	if c.state != stateOpen || c.closeReq {
		return
	}
	c.state = stateClosing
	c.closeBy = c.e.now() + int64(min(closeGrace, c.e.opts.PingInterval))
}

// Close closes the connection now, without a close frame (loop). OnClose
// gets err.
func (c *Conn) Close(err error) {
	c.closeNow(err)
}

// closeNow records err as the reason and closes the connection: at once,
// or, inside this connection's gnet callback, when the callback returns.
func (c *Conn) closeNow(err error) {
	if c.state == stateClosed || c.closeReq {
		return
	}
	if !c.closeErrSet {
		c.closeErr, c.closeErrSet = err, true
	}
	if c.inCallback {
		c.closeReq = true
		return
	}
	if cerr := c.ls.el.Close(c.gc); cerr != nil {
		c.e.log.Debug("closing connection", "remote", c.remote, "err", cerr)
	}
}

// fail sends a close frame whose code matches err and closes with err.
func (c *Conn) fail(err error) {
	code := ws.StatusPolicyViolation
	switch {
	case errors.Is(err, wsframe.ErrFrameTooLarge), errors.Is(err, wsframe.ErrMessageTooLarge):
		code = ws.StatusMessageTooBig
	case errors.Is(err, wsframe.ErrProtocol):
		code = ws.StatusProtocolError
	}
	if c.state == stateOpen {
		c.writeClose(code, "")
	}
	c.closeNow(err)
}

// Resume resumes reading after OnMessage returned ErrPaused. It is safe
// from any goroutine: the request is applied on the loop, which then
// delivers the paused message again. It applies to the pause in effect when
// the loop handles it; if there is none, it only costs a wake-up.
func (c *Conn) Resume() {
	if c.closed.Load() {
		return
	}
	c.resume.Store(true)
	if err := c.gc.Wake(nil); err != nil {
		c.e.log.Debug("resume", "remote", c.remote, "err", err)
	}
}

// Execute runs fn on the connection's loop if the connection is still open
// then. It is safe from any goroutine; it returns ErrClosed if the
// connection or the engine is already closed.
func (c *Conn) Execute(fn func(c *Conn)) error {
	if c.closed.Load() {
		return ErrClosed
	}
	err := c.ls.el.Execute(context.Background(), gnet.RunnableFunc(func(context.Context) error {
		if c.state != stateClosed {
			fn(c)
		}
		return nil
	}))
	if err != nil {
		return errors.Join(ErrClosed, err)
	}
	return nil
}

// EventLoop returns the loop that owns the connection.
func (c *Conn) EventLoop() gnet.EventLoop { return c.ls.el }

// RemoteAddr returns the peer's address.
func (c *Conn) RemoteAddr() net.Addr { return c.remote }

// Context returns the owner's state (loop).
func (c *Conn) Context() any { return c.ctx }

// onOpen runs in gnet's OnOpen: register, tell the handler, then decode
// what arrived before enrolment.
func (c *Conn) onOpen(gc gnet.Conn, ls *loopState) gnet.Action {
	c.gc, c.ls, c.remote = gc, ls, gc.RemoteAddr()
	now := c.e.now()
	c.lastRecv, c.lastPing = now, now
	ls.add(c)
	if c.tls != nil {
		c.tls.tr.attach(gc)
	}
	c.inCallback = true
	c.h.OnOpen(c)
	if !c.stopped() {
		c.process()
	}
	return c.endCallback()
}

// onTraffic runs in gnet's OnTraffic: new bytes arrived, or Resume woke
// the connection.
func (c *Conn) onTraffic() gnet.Action {
	if c.state == stateClosed {
		return gnet.None
	}
	c.lastRecv = c.e.now()
	if c.resume.Swap(false) {
		c.paused = false
	}
	c.inCallback = true
	c.process()
	return c.endCallback()
}

func (c *Conn) endCallback() gnet.Action {
	c.inCallback = false
	if c.closeReq && c.state != stateClosed {
		return gnet.Close
	}
	return gnet.None
}

// onClose runs in gnet's OnClose.
func (c *Conn) onClose(err error) {
	if c.state == stateClosed {
		return
	}
	c.state = stateClosed
	c.closed.Store(true)
	c.inCallback = false
	c.ls.remove(c)
	c.holdPaused(0)
	if c.closeErrSet {
		err = c.closeErr
	}
	c.releaseBuf(true)
	c.dec.Reset()
	c.tls = nil
	c.h.OnClose(c, err)
}

func (c *Conn) stopped() bool { return c.closeReq || c.state == stateClosed }

// process decodes and delivers what can be, then enforces the inbound
// bound.
func (c *Conn) process() {
	if !c.paused {
		switch {
		case c.tls != nil:
			c.processTLS()
		case c.buf != nil:
			c.processOwn()
		default:
			c.processDirect()
		}
	}
	if c.stopped() {
		return
	}
	held := c.gc.InboundBuffered() + len(c.buf)
	if held > c.e.opts.MaxInboundBuffered {
		c.closeNow(ErrBackpressure)
		return
	}
	if !c.paused {
		c.holdPaused(0)
		return
	}
	grew := int64(held) > c.pausedHeld
	if c.holdPaused(int64(held)) > c.e.opts.MaxPausedBuffered && grew {
		c.closeNow(ErrBackpressure)
	}
}

// holdPaused sets this connection's share of the engine's paused bytes and
// returns the engine's new total.
func (c *Conn) holdPaused(n int64) int64 {
	d := n - c.pausedHeld
	c.pausedHeld = n
	if d == 0 {
		return c.e.pausedHeld.Load()
	}
	return c.e.pausedHeld.Add(d)
}

// processDirect decodes straight from gnet's input buffer. While a frame is
// incomplete and its size is known, nothing is peeked, so a large frame
// arriving in many reads is not copied again on every read.
func (c *Conn) processDirect() {
	avail := c.gc.InboundBuffered()
	if avail == 0 || c.dec.Need() > avail {
		return
	}
	b, err := c.gc.Peek(-1)
	if err != nil {
		return
	}
	n := c.decode(b)
	if n > 0 && c.state != stateClosed {
		_, _ = c.gc.Discard(n)
	}
}

// processOwn decodes the leftovers in c.buf, completing the frame at their
// end from gnet's bytes, and goes back to decoding directly from gnet once
// c.buf is drained. It moves only the bytes that complete that frame, so a
// connection resumed with a large backlog buffered does not copy it.
func (c *Conn) processOwn() {
	c.decodeOwn()
	for len(c.buf) > 0 && !c.stopped() && !c.paused {
		avail := c.gc.InboundBuffered()
		if avail == 0 {
			break
		}
		take := ws.MaxHeaderSize
		if need := c.dec.Need(); need > len(c.buf) {
			take = need - len(c.buf)
		}
		b, err := c.gc.Peek(min(take, avail))
		if err != nil {
			break
		}
		c.buf = append(c.buf, b...)
		_, _ = c.gc.Discard(len(b))
		c.decodeOwn()
	}
	c.releaseBuf(false)
	if c.buf == nil && !c.stopped() && !c.paused {
		c.processDirect()
	}
}

// processTLS reads plaintext from the tls.Conn, which reads ciphertext from
// gnet's input buffer until it would block, and decodes it.
func (c *Conn) processTLS() {
	// Leftovers first: bytes from before enrolment, or a message left by a
	// pause, must not wait for new ciphertext.
	c.decodeOwn()
	for !c.stopped() && !c.paused {
		c.growBuf(minTLSRoom)
		n, err := c.tls.conn.Read(c.buf[len(c.buf):cap(c.buf)])
		c.buf = c.buf[:len(c.buf)+n]
		if n > 0 {
			c.decodeOwn()
		}
		if err != nil {
			if !isWouldBlock(err) && !c.stopped() {
				c.closeNow(err)
			}
			break
		}
	}
	c.releaseBuf(false)
}

// decodeOwn decodes from c.buf and keeps the undecoded tail at its start.
func (c *Conn) decodeOwn() {
	n := c.decode(c.buf)
	if n > 0 && c.state != stateClosed {
		rest := copy(c.buf, c.buf[n:])
		c.buf = c.buf[:rest]
	}
}

// growBuf makes room for at least room more bytes in c.buf, and for the
// whole frame at its head once its size is known.
func (c *Conn) growBuf(room int) {
	if c.buf == nil {
		c.buf = (*ownBufPool.Get().(*[]byte))[:0]
	}
	want := max(len(c.buf)+room, c.dec.Need())
	if cap(c.buf) >= want {
		return
	}
	nb := make([]byte, len(c.buf), max(want, 2*cap(c.buf)))
	copy(nb, c.buf)
	c.releaseBuf(true)
	c.buf = nb
}

// releaseBuf drops c.buf when it is empty (or when force is set), returning
// pool-sized buffers to the pool.
func (c *Conn) releaseBuf(force bool) {
	if c.buf == nil || (len(c.buf) > 0 && !force) {
		return
	}
	if cap(c.buf) == ownBufSize {
		b := c.buf[:0]
		ownBufPool.Put(&b)
	}
	c.buf = nil
}

// decode delivers the messages at the head of b and returns the bytes
// consumed. It stops at an incomplete frame, a pause, or a close.
func (c *Conn) decode(b []byte) int {
	consumed := 0
	for !c.stopped() && !c.paused {
		m, n, ok, err := c.dec.Next(b[consumed:])
		if err != nil {
			c.fail(err)
			return consumed
		}
		if n == 0 {
			return consumed
		}
		if ok && !c.deliver(m) {
			_ = c.dec.Unread()
			return consumed
		}
		consumed += n
	}
	return consumed
}

// deliver handles one control frame or data message. It returns false when
// the message must stay unconsumed (the handler paused).
func (c *Conn) deliver(m wsframe.Message) bool {
	switch m.Op {
	case ws.OpPing:
		if c.state == stateOpen {
			_ = c.writeControl(ws.OpPong, m.Payload)
		}
	case ws.OpPong:
	case ws.OpClose:
		c.onCloseFrame(m.Payload)
	default:
		if c.state != stateOpen {
			return true // closing: data is dropped
		}
		err := c.h.OnMessage(c, m.Op, m.Payload)
		switch {
		case err == nil:
		case errors.Is(err, ErrPaused):
			if c.stopped() {
				return true
			}
			c.paused = true
			return false
		default:
			c.fail(err)
		}
	}
	return true
}

// onCloseFrame answers the peer's close frame (echoing its code) unless we
// started the closing handshake, then closes cleanly.
func (c *Conn) onCloseFrame(payload []byte) {
	code, _, err := wsframe.ParseClose(payload)
	if err != nil {
		c.fail(err)
		return
	}
	if c.state == stateOpen {
		if code == ws.StatusNoStatusRcvd {
			code = 0
		}
		c.writeClose(code, "")
	}
	c.closeNow(nil)
}
