package loop

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"

	"github.com/relay/relay/wsframe"
)

func payload(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, uint64(n)))
	p := make([]byte, n)
	for i := range p {
		p[i] = byte(r.UintN(256))
	}
	return p
}

func TestServerEcho(t *testing.T) {
	e := startEngine(t, Options{})
	rec := newRecorder().echo()
	url := startServer(t, e, func() Handler { return rec })
	c := dialClient(t, url)
	conn := rec.waitOpen(t)
	if conn.Role() != Server || conn.RemoteAddr() == nil {
		t.Fatalf("role %v remote %v", conn.Role(), conn.RemoteAddr())
	}
	for i, n := range []int{0, 1, 125, 126, 65535, DefaultMaxConsumerMessage} {
		p := payload(n, uint64(i))
		op := ws.OpBinary
		if i%2 == 1 {
			op = ws.OpText
			p = bytes.Repeat([]byte("a"), n)
		}
		if err := wsutil.WriteClientMessage(c, op, p); err != nil {
			t.Fatal(err)
		}
		got, gotOp := c.readData(t)
		if gotOp != op || !bytes.Equal(got, p) {
			t.Fatalf("size %d: echoed op %v, %d bytes", n, gotOp, len(got))
		}
		if m := rec.waitMsg(t); m.op != op || !bytes.Equal(m.data, p) {
			t.Fatalf("size %d: handler got op %v, %d bytes", n, m.op, len(m.data))
		}
	}

	// A fragmented message with a ping between the fragments.
	msg := payload(5000, 9)
	var stream bytes.Buffer
	_ = ws.WriteFrame(&stream, ws.MaskFrame(ws.NewFrame(ws.OpBinary, false, msg[:1000])))
	_ = ws.WriteFrame(&stream, ws.MaskFrame(ws.NewPingFrame([]byte("mid"))))
	_ = ws.WriteFrame(&stream, ws.MaskFrame(ws.NewFrame(ws.OpContinuation, true, msg[1000:])))
	if _, err := c.Write(stream.Bytes()); err != nil {
		t.Fatal(err)
	}
	if f := c.readFrame(t); f.Header.OpCode != ws.OpPong || string(f.Payload) != "mid" {
		t.Fatalf("expected pong 'mid', got %v %q", f.Header.OpCode, f.Payload)
	}
	if f := c.readFrame(t); f.Header.OpCode != ws.OpBinary || !bytes.Equal(f.Payload, msg) {
		t.Fatalf("fragmented echo: op %v, %d bytes", f.Header.OpCode, len(f.Payload))
	}
}

// Bytes the client sends right behind its upgrade request are buffered by
// net/http; they must be decoded before anything gnet reads.
func TestServerBytesBufferedBeforeEnrolment(t *testing.T) {
	e := startEngine(t, Options{})
	rec := newRecorder().echo()
	url := startServer(t, e, func() Handler { return rec })
	first := wsframe.AppendFrame(nil, ws.OpBinary, []byte("first"), true)
	// Half of the second frame too: the rest comes through gnet.
	second := wsframe.AppendFrame(nil, ws.OpBinary, payload(3000, 2), true)
	conn, br := rawUpgrade(t, url, append(first, second[:1500]...))
	if _, err := conn.Write(second[1500:]); err != nil {
		t.Fatal(err)
	}
	for _, want := range [][]byte{[]byte("first"), payload(3000, 2)} {
		//lint:ignore SA1019 the peer is the test\'s own local server; its frames are small and trusted
		f, err := ws.ReadFrame(br)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(f.Payload, want) {
			t.Fatalf("echo %d bytes, want %d", len(f.Payload), len(want))
		}
	}
}

func TestServerPingAnswered(t *testing.T) {
	e := startEngine(t, Options{})
	rec := newRecorder()
	url := startServer(t, e, func() Handler { return rec })
	c := dialClient(t, url)
	if err := ws.WriteFrame(c, ws.MaskFrame(ws.NewPingFrame([]byte("are you there")))); err != nil {
		t.Fatal(err)
	}
	f := c.readFrame(t)
	if f.Header.OpCode != ws.OpPong || string(f.Payload) != "are you there" || f.Header.Masked {
		t.Fatalf("got %+v %q", f.Header, f.Payload)
	}
}

func TestServerCloseAnswered(t *testing.T) {
	e := startEngine(t, Options{})
	rec := newRecorder()
	url := startServer(t, e, func() Handler { return rec })
	c := dialClient(t, url)
	rec.waitOpen(t)
	body := ws.NewCloseFrameBody(ws.StatusNormalClosure, "bye")
	if err := ws.WriteFrame(c, ws.MaskFrame(ws.NewCloseFrame(body))); err != nil {
		t.Fatal(err)
	}
	f := c.readFrame(t)
	code, _ := ws.ParseCloseFrameData(f.Payload)
	if f.Header.OpCode != ws.OpClose || code != ws.StatusNormalClosure {
		t.Fatalf("got %v code %v", f.Header.OpCode, code)
	}
	if err := rec.waitClose(t); err != nil {
		t.Fatalf("OnClose err %v, want nil", err)
	}
	if _, err := c.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("after close: %v, want EOF", err)
	}
}

func TestServerCloseWith(t *testing.T) {
	e := startEngine(t, Options{})
	rec := newRecorder()
	url := startServer(t, e, func() Handler { return rec })
	c := dialClient(t, url)
	conn := rec.waitOpen(t)
	var writeErr error
	onLoop(t, conn, func(conn *Conn) {
		conn.CloseWith(ws.StatusPolicyViolation, "ConsumerTooSlow")
		writeErr = conn.WriteMessage(ws.OpBinary, []byte("late"))
	})
	if !errors.Is(writeErr, ErrClosed) {
		t.Fatalf("write after CloseWith: %v", writeErr)
	}
	f := c.readFrame(t)
	code, reason := ws.ParseCloseFrameData(f.Payload)
	if f.Header.OpCode != ws.OpClose || code != ws.StatusPolicyViolation || reason != "ConsumerTooSlow" {
		t.Fatalf("got %v %v %q", f.Header.OpCode, code, reason)
	}
	// The client answers; the server then closes cleanly.
	_ = ws.WriteFrame(c, ws.MaskFrame(ws.NewCloseFrame(f.Payload[:2])))
	if err := rec.waitClose(t); err != nil {
		t.Fatalf("OnClose err %v", err)
	}
	if err := conn.Execute(func(*Conn) {}); !errors.Is(err, ErrClosed) {
		t.Fatalf("Execute on closed conn: %v", err)
	}
}

func TestServerDeadPeerClosed(t *testing.T) {
	const interval = 40 * time.Millisecond
	e := startEngine(t, Options{PingInterval: interval})
	silentRec, liveRec := newRecorder(), newRecorder().echo()
	recs := make(chan *recorder, 2)
	recs <- silentRec
	recs <- liveRec
	url := startServer(t, e, func() Handler { return <-recs })

	// A peer that never reads, so never answers pings.
	silent, _ := rawUpgrade(t, url, nil)
	_ = silent
	silentRec.waitOpen(t)

	// A peer that answers pings (wsutil does) and otherwise stays quiet.
	live := dialClient(t, url)
	liveRec.waitOpen(t)
	pings := make(chan struct{}, 100)
	go func() {
		for {
			//lint:ignore SA1019 the peer is the test\'s own local server; its frames are small and trusted
			f, err := ws.ReadFrame(live)
			if err != nil {
				return
			}
			if f.Header.OpCode == ws.OpPing {
				pings <- struct{}{}
				if ws.WriteFrame(live, ws.MaskFrame(ws.NewPongFrame(f.Payload))) != nil {
					return
				}
			}
		}
	}()

	start := time.Now()
	if err := silentRec.waitClose(t); !errors.Is(err, ErrDeadPeer) {
		t.Fatalf("silent peer closed with %v, want ErrDeadPeer", err)
	}
	if d := time.Since(start); d < interval {
		t.Fatalf("closed after %v, before one ping interval", d)
	}
	// The live peer was pinged and is still open well past two intervals.
	time.Sleep(6 * interval)
	select {
	case err := <-liveRec.closed:
		t.Fatalf("answering peer closed: %v", err)
	default:
	}
	if len(pings) == 0 {
		t.Fatal("answering peer was never pinged")
	}
}

// pausingHandler pauses on every message whose index is a multiple of
// every, resuming from another goroutine, and records each message it
// accepts.
func pausingHandler(every int, delivered *syncList) *recorder {
	rec := newRecorder()
	seen := map[uint32]bool{}
	rec.onMessage = func(c *Conn, op ws.OpCode, p []byte) error {
		i := binary.BigEndian.Uint32(p)
		if i%uint32(every) == 0 && !seen[i] {
			seen[i] = true
			go func() {
				time.Sleep(time.Millisecond)
				c.Resume()
			}()
			return ErrPaused
		}
		delivered.add(p)
		return nil
	}
	return rec
}

func checkOrder(t *testing.T, delivered *syncList, want [][]byte) {
	t.Helper()
	delivered.mu.Lock()
	defer delivered.mu.Unlock()
	if len(delivered.items) != len(want) {
		t.Fatalf("%d messages delivered, want %d", len(delivered.items), len(want))
	}
	for i := range want {
		if !bytes.Equal(delivered.items[i], want[i]) {
			t.Fatalf("message %d differs (%d bytes, want %d)", i, len(delivered.items[i]), len(want[i]))
		}
	}
}

func TestServerPauseResumeKeepsOrder(t *testing.T) {
	e := startEngine(t, Options{})
	delivered := &syncList{}
	rec := pausingHandler(3, delivered)
	url := startServer(t, e, func() Handler { return rec })
	c := dialClient(t, url)
	rec.waitOpen(t)

	const n = 301 // the last message pauses too: nothing arrives after it
	var want [][]byte
	var stream bytes.Buffer
	for i := range n {
		p := payload(4+i*37%3000, uint64(i))
		binary.BigEndian.PutUint32(p, uint32(i))
		want = append(want, p)
		if i%7 == 0 { // some fragmented, with a ping inside
			_ = ws.WriteFrame(&stream, ws.MaskFrame(ws.NewFrame(ws.OpBinary, false, p[:2])))
			_ = ws.WriteFrame(&stream, ws.MaskFrame(ws.NewPingFrame(nil)))
			_ = ws.WriteFrame(&stream, ws.MaskFrame(ws.NewFrame(ws.OpContinuation, true, p[2:])))
		} else {
			_ = ws.WriteFrame(&stream, ws.MaskFrame(ws.NewBinaryFrame(p)))
		}
	}
	// One big write, then the rest in small pieces, so pauses hit both
	// whole buffers and frames split across reads.
	b := stream.Bytes()
	half := len(b) / 2
	if _, err := c.Write(b[:half]); err != nil {
		t.Fatal(err)
	}
	for off := half; off < len(b); off += 777 {
		if _, err := c.Write(b[off:min(off+777, len(b))]); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "all messages", func() bool { return delivered.len() >= n })
	checkOrder(t, delivered, want)
}

func TestServerFloodWhilePausedBackpressure(t *testing.T) {
	const bound = 256 << 10
	e := startEngine(t, Options{MaxInboundBuffered: bound})
	rec := newRecorder()
	rec.onMessage = func(*Conn, ws.OpCode, []byte) error { return ErrPaused } // never resumed
	url := startServer(t, e, func() Handler { return rec })
	c := dialClient(t, url)
	rec.waitOpen(t)
	go func() {
		p := payload(16<<10, 1)
		for range 200 { // 3.2 MB, far past the bound and the socket buffers
			if wsutil.WriteClientBinary(c, p) != nil {
				return
			}
		}
	}()
	if err := rec.waitClose(t); !errors.Is(err, ErrBackpressure) {
		t.Fatalf("OnClose %v, want ErrBackpressure", err)
	}
}

// TestPausedBytesSharedBound: paused connections together hold at most
// MaxPausedBuffered. The one whose bytes cross it is closed; one that holds
// less and sends nothing more keeps its bytes and delivers them on resume.
func TestPausedBytesSharedBound(t *testing.T) {
	const msg = 16 << 10
	e := startEngine(t, Options{MaxInboundBuffered: 4 << 20, MaxPausedBuffered: 512 << 10})
	var hold atomic.Bool
	hold.Store(true)
	pausing := func() *recorder {
		r := newRecorder()
		r.onMessage = func(*Conn, ws.OpCode, []byte) error {
			if hold.Load() {
				return ErrPaused
			}
			return nil
		}
		return r
	}
	quiet, flood := pausing(), pausing()
	recs := make(chan *recorder, 2)
	recs <- quiet
	recs <- flood
	url := startServer(t, e, func() Handler { return <-recs })

	qc := dialClient(t, url)
	qconn := quiet.waitOpen(t)
	const quietMsgs = 16 // 256 KiB: under the shared bound
	for i := range quietMsgs {
		if err := wsutil.WriteClientBinary(qc, payload(msg, uint64(i))); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "quiet bytes held", func() bool { return e.PausedBuffered() >= quietMsgs*msg })

	fc := dialClient(t, url)
	flood.waitOpen(t)
	go func() {
		for i := range 128 { // 2 MiB: past the shared bound, under the per-connection one
			if wsutil.WriteClientBinary(fc, payload(msg, uint64(i))) != nil {
				return
			}
		}
	}()
	if err := flood.waitClose(t); !errors.Is(err, ErrBackpressure) {
		t.Fatalf("flooding connection closed with %v, want ErrBackpressure", err)
	}
	select {
	case err := <-quiet.closed:
		t.Fatalf("quiet connection closed too: %v", err)
	default:
	}
	if held := e.PausedBuffered(); held < quietMsgs*msg || held > 512<<10 {
		t.Fatalf("paused bytes after the close %d, want the quiet connection's %d", held, quietMsgs*msg)
	}

	hold.Store(false)
	qconn.Resume()
	for range quietMsgs {
		if m := quiet.waitMsg(t); len(m.data) != msg {
			t.Fatalf("message of %d bytes", len(m.data))
		}
	}
	waitFor(t, "paused bytes released", func() bool { return e.PausedBuffered() == 0 })
}

func TestServerMalformedClosesOnlyThatConn(t *testing.T) {
	e := startEngine(t, Options{Loops: 1}) // same loop for both
	badRec, goodRec := newRecorder(), newRecorder().echo()
	recs := make(chan *recorder, 2)
	recs <- badRec
	recs <- goodRec
	url := startServer(t, e, func() Handler { return <-recs })
	bad := dialClient(t, url)
	badRec.waitOpen(t)
	good := dialClient(t, url)
	goodRec.waitOpen(t)

	// Unmasked frame from a client: a protocol violation.
	if _, err := bad.Write(wsframe.AppendFrame(nil, ws.OpBinary, []byte("x"), false)); err != nil {
		t.Fatal(err)
	}
	f := bad.readFrame(t)
	code, _ := ws.ParseCloseFrameData(f.Payload)
	if f.Header.OpCode != ws.OpClose || code != ws.StatusProtocolError {
		t.Fatalf("bad peer got %v code %v", f.Header.OpCode, code)
	}
	if err := badRec.waitClose(t); !errors.Is(err, wsframe.ErrProtocol) {
		t.Fatalf("bad peer OnClose %v", err)
	}

	// Oversized message on a fresh connection: 1009.
	recs <- newRecorder()
	big := dialClient(t, url)
	_ = wsutil.WriteClientBinary(big, make([]byte, DefaultMaxConsumerMessage+1))
	f = big.readFrame(t)
	if code, _ := ws.ParseCloseFrameData(f.Payload); code != ws.StatusMessageTooBig {
		t.Fatalf("oversized: close code %v", code)
	}

	for i := range 10 {
		p := []byte(fmt.Sprint("still here ", i))
		if err := wsutil.WriteClientBinary(good, p); err != nil {
			t.Fatal(err)
		}
		if got, _ := good.readData(t); !bytes.Equal(got, p) {
			t.Fatalf("good peer echo %q", got)
		}
	}
}

func TestServerHandlerErrorCloses(t *testing.T) {
	e := startEngine(t, Options{})
	rec := newRecorder()
	rec.onMessage = func(*Conn, ws.OpCode, []byte) error { return errTest }
	url := startServer(t, e, func() Handler { return rec })
	c := dialClient(t, url)
	_ = wsutil.WriteClientText(c, []byte("hi"))
	f := c.readFrame(t)
	if code, _ := ws.ParseCloseFrameData(f.Payload); code != ws.StatusPolicyViolation {
		t.Fatalf("close code %v", code)
	}
	if err := rec.waitClose(t); !errors.Is(err, errTest) {
		t.Fatalf("OnClose %v", err)
	}
}

func TestServerOutboundCap(t *testing.T) {
	const limit = 1 << 20
	e := startEngine(t, Options{MaxOutboundBuffered: limit})
	rec := newRecorder()
	url := startServer(t, e, func() Handler { return rec })
	_ = dialClient(t, url) // never reads
	conn := rec.waitOpen(t)
	frame := wsframe.Compile(make([]byte, 64<<10))
	var err error
	var maxBuffered int
	for i := 0; i < 10_000 && err == nil; i++ {
		onLoop(t, conn, func(c *Conn) {
			err = c.Writev([][]byte{frame})
			maxBuffered = max(maxBuffered, c.Buffered())
		})
	}
	if !errors.Is(err, ErrBackpressure) {
		t.Fatalf("Writev: %v, want ErrBackpressure", err)
	}
	if maxBuffered > limit {
		t.Fatalf("buffered %d > cap %d", maxBuffered, limit)
	}
	if err := rec.waitClose(t); !errors.Is(err, ErrBackpressure) {
		t.Fatalf("OnClose %v", err)
	}
}

func TestServerWritevSharedFrames(t *testing.T) {
	e := startEngine(t, Options{})
	rec := newRecorder()
	url := startServer(t, e, func() Handler { return rec })
	c := dialClient(t, url)
	conn := rec.waitOpen(t)
	frames := make([][]byte, 1500) // more than IOV_MAX
	for i := range frames {
		p := make([]byte, 8)
		binary.BigEndian.PutUint64(p, uint64(i))
		frames[i] = wsframe.Compile(p)
	}
	onLoop(t, conn, func(c *Conn) {
		if err := c.Writev(append([][]byte(nil), frames...)); err != nil {
			t.Error(err)
		}
	})
	for i := range frames {
		p, _ := c.readData(t)
		if binary.BigEndian.Uint64(p) != uint64(i) {
			t.Fatalf("frame %d: got %d", i, binary.BigEndian.Uint64(p))
		}
	}
	if got := e.Loops(); len(got) == 0 || got[0] != conn.EventLoop() {
		t.Fatalf("Loops() = %v, conn loop %v", got, conn.EventLoop())
	}
}

func TestEngineStopSendsGoingAway(t *testing.T) {
	e, err := Start(Options{Loops: 2, Logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	rec := newRecorder()
	url := startServer(t, e, func() Handler { return rec })
	clients := []*wsClient{dialClient(t, url), dialClient(t, url), dialClient(t, url)}
	for range clients {
		rec.waitOpen(t)
	}
	if err := e.Stop(t.Context()); err != nil {
		t.Fatal(err)
	}
	for i, c := range clients {
		f := c.readFrame(t)
		if code, _ := ws.ParseCloseFrameData(f.Payload); f.Header.OpCode != ws.OpClose || code != ws.StatusGoingAway {
			t.Fatalf("client %d: %v code %v", i, f.Header.OpCode, code)
		}
		if err := rec.waitClose(t); !errors.Is(err, ErrClosed) {
			t.Fatalf("OnClose %v, want ErrClosed", err)
		}
	}
	if _, err := e.Dial(t.Context(), url, DialOptions{}, rec, nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("Dial after Stop: %v", err)
	}
}
