package wsframe

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/gobwas/ws"
)

// testPayload returns n deterministic bytes.
func testPayload(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, uint64(n)))
	p := make([]byte, n)
	for i := range p {
		p[i] = byte(r.UintN(256))
	}
	return p
}

// appendFragments appends msg as a fragmented message of op, cut at the
// given sizes, with a ping between consecutive fragments.
func appendFragments(dst []byte, op ws.OpCode, msg []byte, sizes []int, masked bool) []byte {
	first := true
	for len(msg) > 0 || first {
		n := len(msg)
		if len(sizes) > 0 {
			n = min(sizes[0], n)
			sizes = sizes[1:]
		}
		fop := ws.OpContinuation
		if first {
			fop = op
		}
		fin := n == len(msg)
		dst = appendFrame(dst, fin, fop, msg[:n], masked)
		msg = msg[n:]
		first = false
		if !fin {
			dst = AppendFrame(dst, ws.OpPing, []byte("interleaved"), masked)
		}
	}
	return dst
}

type decoded struct {
	op      ws.OpCode
	payload []byte
}

// decodeStream feeds data to d in chunks of size chunk, the way an event
// loop would (unconsumed bytes stay at the head of the buffer, new bytes are
// appended), and returns the copied messages and the first error.
func decodeStream(d *Decoder, data []byte, chunk int) ([]decoded, error) {
	var out []decoded
	var buf []byte
	pos := 0
	for {
		m, n, ok, err := d.Next(buf)
		if err != nil {
			return out, err
		}
		if n > len(buf) || n < 0 {
			return out, fmt.Errorf("consumed %d of %d bytes", n, len(buf))
		}
		if n == 0 {
			if pos == len(data) {
				return out, nil
			}
			end := min(pos+chunk, len(data))
			buf = append(buf, data[pos:end]...)
			pos = end
			continue
		}
		buf = buf[n:]
		if ok {
			out = append(out, decoded{m.Op, bytes.Clone(m.Payload)})
		}
	}
}

func TestDecoderRoundTrip(t *testing.T) {
	for _, masked := range []bool{false, true} {
		var stream []byte
		var want []decoded
		for i, length := range boundaryLengths {
			p := testPayload(length, uint64(i))
			op := ws.OpBinary
			if i%3 == 0 {
				op = ws.OpText
			}
			stream = AppendFrame(stream, op, p, masked)
			want = append(want, decoded{op, p})
			if i%2 == 0 {
				stream = AppendFrame(stream, ws.OpPong, []byte("pong"), masked)
				want = append(want, decoded{ws.OpPong, []byte("pong")})
			}
		}
		for _, chunk := range []int{1, 7, 125, 4096, len(stream)} {
			if chunk == 1 && masked {
				// One byte at a time over 500 KB is slow and adds nothing
				// over 7 here.
				continue
			}
			d := Decoder{RequireMasked: masked, RejectMasked: !masked}
			got, err := decodeStream(&d, stream, chunk)
			if err != nil {
				t.Fatalf("masked %v chunk %d: %v", masked, chunk, err)
			}
			compareDecoded(t, fmt.Sprintf("masked %v chunk %d", masked, chunk), got, want)
		}
	}
}

func compareDecoded(t *testing.T, name string, got, want []decoded) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d messages, want %d", name, len(got), len(want))
	}
	for i := range got {
		if got[i].op != want[i].op || !bytes.Equal(got[i].payload, want[i].payload) {
			t.Fatalf("%s: message %d: op %v len %d, want op %v len %d", name, i, got[i].op, len(got[i].payload), want[i].op, len(want[i].payload))
		}
	}
}

func TestDecoderReadsGobwasFrames(t *testing.T) {
	var buf bytes.Buffer
	var want []decoded
	for i, length := range boundaryLengths {
		p := testPayload(length, uint64(i))
		f := ws.MaskFrame(ws.NewBinaryFrame(p))
		if err := ws.WriteFrame(&buf, f); err != nil {
			t.Fatal(err)
		}
		want = append(want, decoded{ws.OpBinary, p})
	}
	d := Decoder{RequireMasked: true}
	got, err := decodeStream(&d, buf.Bytes(), 1000)
	if err != nil {
		t.Fatal(err)
	}
	compareDecoded(t, "gobwas frames", got, want)
}

func TestGobwasReadsOurFrames(t *testing.T) {
	for i, length := range boundaryLengths {
		p := testPayload(length, uint64(i))
		for _, masked := range []bool{false, true} {
			b := AppendFrame(nil, ws.OpBinary, p, masked)
			//lint:ignore SA1019 the peer is the test\'s own local server; its frames are small and trusted
			f, err := ws.ReadFrame(bytes.NewReader(b))
			if err != nil {
				t.Fatal(err)
			}
			if f.Header.Masked != masked {
				t.Fatalf("len %d: masked %v, want %v", length, f.Header.Masked, masked)
			}
			if masked {
				f = ws.UnmaskFrameInPlace(f)
			}
			if !f.Header.Fin || f.Header.OpCode != ws.OpBinary || !bytes.Equal(f.Payload, p) {
				t.Fatalf("len %d masked %v: payload differs", length, masked)
			}
		}
	}
	if c := Compile([]byte("abc")); !bytes.Equal(c, ws.MustCompileFrame(ws.NewBinaryFrame([]byte("abc")))) {
		t.Fatalf("Compile = %x", c)
	}
}

func TestDecoderFragmentedWithInterleavedPings(t *testing.T) {
	for _, masked := range []bool{false, true} {
		msg := testPayload(70_000, 1)
		var stream []byte
		stream = appendFragments(stream, ws.OpBinary, msg, []int{1, 125, 65536}, masked)
		stream = AppendFrame(stream, ws.OpBinary, []byte("after"), masked)
		stream = appendFragments(stream, ws.OpText, []byte("hello world"), []int{5, 0, 3}, masked)
		stream = appendFragments(stream, ws.OpBinary, nil, nil, masked) // empty single-fragment message

		ping := decoded{ws.OpPing, []byte("interleaved")}
		want := []decoded{ping, ping, ping, {ws.OpBinary, msg}, {ws.OpBinary, []byte("after")},
			ping, ping, ping, {ws.OpText, []byte("hello world")}, {ws.OpBinary, nil}}
		for _, chunk := range []int{3, 1000, len(stream)} {
			d := Decoder{RequireMasked: masked}
			got, err := decodeStream(&d, stream, chunk)
			if err != nil {
				t.Fatalf("masked %v chunk %d: %v", masked, chunk, err)
			}
			compareDecoded(t, fmt.Sprintf("masked %v chunk %d", masked, chunk), got, want)
			if d.Fragmenting() || d.frag != nil && !d.delivered {
				t.Fatalf("fragment buffer kept after the message: %d bytes", len(d.frag))
			}
		}
	}
}

func TestDecoderErrors(t *testing.T) {
	frame := func(fin bool, op ws.OpCode, n int, masked bool) []byte {
		return appendFrame(nil, fin, op, make([]byte, n), masked)
	}
	cat := func(bs ...[]byte) []byte { return bytes.Join(bs, nil) }
	cases := []struct {
		name string
		d    Decoder
		b    []byte
		want error
	}{
		{"continuation without start", Decoder{}, frame(true, ws.OpContinuation, 3, false), ErrProtocol},
		{"data inside fragmented message", Decoder{}, cat(frame(false, ws.OpBinary, 3, false), frame(true, ws.OpText, 3, false)), ErrProtocol},
		{"unmasked from client", Decoder{RequireMasked: true}, frame(true, ws.OpBinary, 3, false), ErrProtocol},
		{"masked from server", Decoder{RejectMasked: true}, frame(true, ws.OpBinary, 3, true), ErrProtocol},
		{"fragmented control", Decoder{}, frame(false, ws.OpPing, 3, false), ErrProtocol},
		{"frame over MaxFrame", Decoder{MaxFrame: 100}, frame(true, ws.OpBinary, 101, false)[:10], ErrFrameTooLarge},
		{"frame over default limit", Decoder{}, AppendHeader(nil, ws.OpBinary, MaxEventFrameSize+1, nil), ErrFrameTooLarge},
		{"message over MaxMessage", Decoder{MaxMessage: 100}, frame(true, ws.OpBinary, 101, false), ErrMessageTooLarge},
		{"fragments over MaxMessage", Decoder{MaxMessage: 100}, cat(frame(false, ws.OpBinary, 60, false), frame(true, ws.OpContinuation, 41, false)), ErrMessageTooLarge},
		{"reserved opcode", Decoder{}, frame(true, ws.OpCode(0x5), 0, false), ErrProtocol},
	}
	for _, c := range cases {
		_, err := decodeStream(&c.d, c.b, len(c.b))
		if !errors.Is(err, c.want) {
			t.Errorf("%s: err %v, want %v", c.name, err, c.want)
		}
	}
	// A ping of at most 125 bytes is fine even when MaxMessage is tiny:
	// limits on data do not apply to control frames.
	d := Decoder{MaxMessage: 1, MaxFrame: 200}
	if got, err := decodeStream(&d, frame(true, ws.OpPing, 125, false), 1000); err != nil || len(got) != 1 {
		t.Fatalf("ping with small MaxMessage: %v %v", got, err)
	}
}

func TestDecoderNeed(t *testing.T) {
	var d Decoder
	b := AppendFrame(nil, ws.OpBinary, make([]byte, 1000), false)
	if _, n, ok, err := d.Next(b[:3]); n != 0 || ok || err != nil || d.Need() != 0 {
		t.Fatalf("incomplete header: n=%d ok=%v err=%v need=%d", n, ok, err, d.Need())
	}
	if _, n, ok, err := d.Next(b[:500]); n != 0 || ok || err != nil || d.Need() != len(b) {
		t.Fatalf("partial payload: n=%d ok=%v err=%v need=%d, want %d", n, ok, err, d.Need(), len(b))
	}
	if _, n, ok, err := d.Next(b); n != len(b) || !ok || err != nil || d.Need() != 0 {
		t.Fatalf("complete: n=%d ok=%v err=%v need=%d", n, ok, err, d.Need())
	}
}

func TestDecoderUnread(t *testing.T) {
	msg := testPayload(300, 7)
	// A masked single frame: Unread must restore the masked bytes.
	b := AppendFrame(nil, ws.OpBinary, msg, true)
	orig := bytes.Clone(b)
	d := Decoder{RequireMasked: true}
	m, n, ok, err := d.Next(b)
	if err != nil || !ok || n != len(b) || !bytes.Equal(m.Payload, msg) {
		t.Fatalf("first decode: ok=%v n=%d err=%v", ok, n, err)
	}
	if err := d.Unread(); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b, orig) {
		t.Fatal("Unread did not restore the masked frame")
	}
	if err := d.Unread(); err == nil {
		t.Fatal("second Unread succeeded")
	}
	if m, _, ok, _ := d.Next(b); !ok || !bytes.Equal(m.Payload, msg) {
		t.Fatal("decode after Unread differs")
	}

	// A fragmented message: Unread of the final fragment rewinds the
	// reassembly so the message is delivered whole, exactly once.
	stream := appendFragments(nil, ws.OpBinary, msg, []int{100, 100}, true)
	d = Decoder{RequireMasked: true}
	var delivered [][]byte
	unreadDone := false
	for len(stream) > 0 {
		m, n, ok, err := d.Next(stream)
		if err != nil || n == 0 {
			t.Fatalf("n=%d err=%v", n, err)
		}
		if ok && m.Op == ws.OpBinary && !unreadDone {
			unreadDone = true
			if err := d.Unread(); err != nil {
				t.Fatal(err)
			}
			if !d.Fragmenting() {
				t.Fatal("Unread of the final fragment did not restore the fragmenting state")
			}
			continue // same bytes again
		}
		if ok && m.Op == ws.OpBinary {
			delivered = append(delivered, bytes.Clone(m.Payload))
		}
		stream = stream[n:]
	}
	if len(delivered) != 1 || !bytes.Equal(delivered[0], msg) {
		t.Fatalf("delivered %d messages after Unread", len(delivered))
	}
}

func TestDecoderResetDropsFragments(t *testing.T) {
	var d Decoder
	b := appendFrame(nil, false, ws.OpBinary, []byte("part"), false)
	if _, n, ok, err := d.Next(b); n != len(b) || ok || err != nil {
		t.Fatalf("first fragment: n=%d ok=%v err=%v", n, ok, err)
	}
	d.Reset()
	if d.Fragmenting() || d.frag != nil {
		t.Fatal("Reset kept the fragment")
	}
	// After Reset a continuation is unexpected again.
	c := appendFrame(nil, true, ws.OpContinuation, []byte("x"), false)
	if _, _, _, err := d.Next(c); !errors.Is(err, ErrProtocol) {
		t.Fatalf("continuation after Reset: %v", err)
	}
}
