package wsframe

import (
	"bytes"
	"errors"
	"testing"

	"github.com/gobwas/ws"
)

// boundaryLengths are payload lengths around the 7-bit, 16-bit and 64-bit
// length encodings.
var boundaryLengths = []int{0, 1, 124, 125, 126, 127, 1000, 65535, 65536, 65537, 200_000}

func TestHeaderRoundTrip(t *testing.T) {
	for _, length := range boundaryLengths {
		for _, masked := range []bool{false, true} {
			var mask *[4]byte
			if masked {
				mask = &[4]byte{1, 2, 3, 4}
			}
			b := AppendHeader(nil, ws.OpBinary, length, mask)
			want := ws.Header{Fin: true, OpCode: ws.OpBinary, Masked: masked, Length: int64(length)}
			if masked {
				want.Mask = *mask
			}
			if len(b) != ws.HeaderSize(want) {
				t.Fatalf("len %d masked %v: header size %d, gobwas says %d", length, masked, len(b), ws.HeaderSize(want))
			}
			// gobwas must read what we wrote.
			gh, err := ws.ReadHeader(bytes.NewReader(b))
			if err != nil || gh != want {
				t.Fatalf("len %d masked %v: gobwas read %+v, %v; want %+v", length, masked, gh, err, want)
			}
			h, n, err := ParseHeader(b)
			if err != nil || n != len(b) || h != want {
				t.Fatalf("len %d masked %v: ParseHeader = %+v, %d, %v", length, masked, h, n, err)
			}
			// Every strict prefix is "too short yet".
			for i := range len(b) {
				if _, n, err := ParseHeader(b[:i]); n != 0 || err != nil {
					t.Fatalf("len %d masked %v: prefix %d gave n=%d err=%v", length, masked, i, n, err)
				}
			}
		}
	}
}

func TestParseHeaderMatchesGobwasWriter(t *testing.T) {
	for _, length := range boundaryLengths {
		h := ws.Header{Fin: false, OpCode: ws.OpText, Masked: true, Mask: [4]byte{9, 8, 7, 6}, Length: int64(length)}
		var buf bytes.Buffer
		if err := ws.WriteHeader(&buf, h); err != nil {
			t.Fatal(err)
		}
		got, n, err := ParseHeader(buf.Bytes())
		if err != nil || n != buf.Len() || got != h {
			t.Fatalf("len %d: got %+v n=%d err=%v", length, got, n, err)
		}
	}
}

func TestParseHeaderRejects(t *testing.T) {
	cases := []struct {
		name string
		b    []byte
	}{
		{"rsv1", []byte{0x80 | 0x40 | byte(ws.OpBinary), 0}},
		{"rsv3", []byte{0x80 | 0x10 | byte(ws.OpText), 0}},
		{"reserved data opcode", []byte{0x80 | 0x3, 0}},
		{"reserved control opcode", []byte{0x80 | 0xb, 0}},
		{"fragmented ping", []byte{byte(ws.OpPing), 0}},
		{"ping of 126 bytes", []byte{0x80 | byte(ws.OpPing), 126, 0, 126}},
		{"close of 200 bytes, 64-bit length", []byte{0x80 | byte(ws.OpClose), 127, 0, 0, 0, 0, 0, 0, 0, 200}},
		{"64-bit length MSB", []byte{0x80 | byte(ws.OpBinary), 127, 0x80, 0, 0, 0, 0, 0, 0, 0}},
	}
	for _, c := range cases {
		h, n, err := ParseHeader(c.b)
		if !errors.Is(err, ErrProtocol) || n != 0 {
			t.Errorf("%s: got %+v n=%d err=%v, want ErrProtocol", c.name, h, n, err)
		}
	}
}
