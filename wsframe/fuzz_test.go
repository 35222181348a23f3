package wsframe

import (
	"bytes"
	"errors"
	"testing"

	"github.com/gobwas/ws"
)

// FuzzDecoder checks that any byte stream is decoded without panic, that
// the result does not depend on how the stream is cut into reads, and that
// every decoded message respects the limits and re-encodes to a stream that
// decodes to the same messages. mode selects the masking rule and limits.
func FuzzDecoder(f *testing.F) {
	f.Add(AppendFrame(nil, ws.OpBinary, []byte("hello"), false), uint8(0))
	f.Add(AppendFrame(nil, ws.OpText, []byte("hello"), true), uint8(1))
	f.Add(appendFragments(nil, ws.OpBinary, []byte("fragmented message"), []int{3, 5}, true), uint8(1))
	f.Add(AppendClose(nil, ws.StatusGoingAway, "bye", false), uint8(2))
	f.Fuzz(func(t *testing.T, data []byte, mode uint8) {
		newDecoder := func() Decoder {
			d := Decoder{RequireMasked: mode&1 != 0, RejectMasked: mode&2 != 0}
			if mode&4 != 0 {
				d.MaxFrame, d.MaxMessage = 64, 100
			}
			return d
		}
		d1 := newDecoder()
		whole, err1 := decodeStream(&d1, bytes.Clone(data), len(data)+1)
		d2 := newDecoder()
		chunk := int(mode>>3) + 1
		pieces, err2 := decodeStream(&d2, bytes.Clone(data), chunk)
		if (err1 == nil) != (err2 == nil) {
			t.Fatalf("whole: %v, chunks of %d: %v", err1, chunk, err2)
		}
		compareDecoded(t, "whole vs chunked", pieces, whole)

		maxMsg := int64(MaxEventFrameSize)
		if mode&4 != 0 {
			maxMsg = 100
		}
		var re []byte
		for _, m := range whole {
			if m.op.IsControl() && len(m.payload) > ws.MaxControlFramePayloadSize || m.op.IsData() && int64(len(m.payload)) > maxMsg {
				t.Fatalf("op %v with %d bytes passed the limits", m.op, len(m.payload))
			}
			if m.op == ws.OpClose {
				_, _, _ = ParseClose(m.payload)
			}
			re = AppendFrame(re, m.op, m.payload, false)
		}
		d3 := Decoder{}
		again, err := decodeStream(&d3, re, len(re)+1)
		if err != nil {
			t.Fatalf("re-encoded stream: %v", err)
		}
		compareDecoded(t, "re-encoded", again, whole)
	})
}

// FuzzParseEventHeader checks that any payload is parsed without panic and
// that a parsed header re-encodes (for op 1 and -1) to a header that parses
// to the same values.
func FuzzParseEventHeader(f *testing.F) {
	f.Add(append(AppendEventHeader(nil, "#commit"), 0xa0))
	f.Add(AppendErrorPayload(nil, "FutureCursor", "cursor in the future"))
	f.Add(AppendInfoPayload(nil, "OutdatedCursor", ""))
	f.Add([]byte{0xa2, 0x62, 'o', 'p', 0x01, 0x61, 'u', 0x82, 0x01, 0x02, 0xa0})
	f.Fuzz(func(t *testing.T, payload []byte) {
		op, typ, body, err := ParseEventHeader(payload)
		if err != nil {
			if !errors.Is(err, ErrMalformedEvent) {
				t.Fatalf("error %v is not ErrMalformedEvent", err)
			}
			return
		}
		if len(body) == 0 || len(body) >= len(payload) || !bytes.HasSuffix(payload, body) {
			t.Fatalf("body of %d bytes from a %d-byte payload", len(body), len(payload))
		}
		if op == OpMessage {
			p := append(AppendEventHeader(nil, typ), body...)
			op2, typ2, body2, err := ParseEventHeader(p)
			if err != nil || op2 != op || typ2 != typ || !bytes.Equal(body2, body) {
				t.Fatalf("re-encoded header: %d %q %v", op2, typ2, err)
			}
		}
	})
}

// FuzzParseClose checks that any close payload is parsed without panic and
// that an accepted one re-encodes to the same payload.
func FuzzParseClose(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte{0x03, 0xe8})
	f.Add([]byte{0x03, 0xe9, 'b', 'y', 'e'})
	f.Add([]byte{0x03})
	f.Fuzz(func(t *testing.T, payload []byte) {
		code, reason, err := ParseClose(payload)
		if err != nil {
			if !errors.Is(err, ErrProtocol) {
				t.Fatalf("error %v is not ErrProtocol", err)
			}
			return
		}
		if len(payload) == 0 {
			if code != ws.StatusNoStatusRcvd {
				t.Fatalf("empty payload gave code %v", code)
			}
			return
		}
		if len(payload) > ws.MaxControlFramePayloadSize {
			return // not a valid control frame anyway; AppendClose would cut it
		}
		fr := AppendClose(nil, code, reason, false)
		_, n, err := ParseHeader(fr)
		if err != nil || !bytes.Equal(fr[n:], payload) {
			t.Fatalf("re-encoded close %x, want %x (%v)", fr[n:], payload, err)
		}
	})
}
