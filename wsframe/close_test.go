package wsframe

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/gobwas/ws"
)

func TestCloseRoundTrip(t *testing.T) {
	cases := []struct {
		code   ws.StatusCode
		reason string
	}{
		{ws.StatusNormalClosure, ""},
		{ws.StatusGoingAway, "shutting down"},
		{ws.StatusPolicyViolation, "ConsumerTooSlow"},
		{1013, "try again later"},
		{4000, "private"},
	}
	for _, c := range cases {
		for _, masked := range []bool{false, true} {
			b := AppendClose(nil, c.code, c.reason, masked)
			d := Decoder{RequireMasked: masked, RejectMasked: !masked}
			m, n, ok, err := d.Next(b)
			if err != nil || !ok || n != len(b) || m.Op != ws.OpClose {
				t.Fatalf("%v: decode: op %v ok %v err %v", c, m.Op, ok, err)
			}
			code, reason, err := ParseClose(m.Payload)
			if err != nil || code != c.code || reason != c.reason {
				t.Fatalf("%v: ParseClose = %v %q %v", c, code, reason, err)
			}
			// gobwas agrees on the body.
			gc, gr := ws.ParseCloseFrameData(m.Payload)
			if gc != c.code || gr != c.reason {
				t.Fatalf("%v: gobwas parsed %v %q", c, gc, gr)
			}
		}
	}
}

func TestCloseWithoutStatus(t *testing.T) {
	b := AppendClose(nil, 0, "ignored", false)
	if !bytes.Equal(b, []byte{0x88, 0}) {
		t.Fatalf("empty close = %x", b)
	}
	code, reason, err := ParseClose(nil)
	if code != ws.StatusNoStatusRcvd || reason != "" || err != nil {
		t.Fatalf("ParseClose(nil) = %v %q %v", code, reason, err)
	}
}

func TestCloseReasonTruncatedAtRuneBoundary(t *testing.T) {
	reason := strings.Repeat("é", 100) // 200 bytes
	b := AppendClose(nil, ws.StatusNormalClosure, reason, false)
	h, n, err := ParseHeader(b)
	if err != nil || h.Length > ws.MaxControlFramePayloadSize {
		t.Fatalf("header %+v err %v", h, err)
	}
	_, got, err := ParseClose(b[n:])
	if err != nil || !utf8.ValidString(got) || !strings.HasPrefix(reason, got) || len(got) < maxCloseReason-1 {
		t.Fatalf("truncated reason %q (%d bytes), err %v", got, len(got), err)
	}
}

func TestParseCloseRejects(t *testing.T) {
	cases := map[string][]byte{
		"one byte":          {0x03},
		"code 999":          {0x03, 0xe7},
		"code 1005 on wire": {0x03, 0xed},
		"code 1006 on wire": {0x03, 0xee},
		"unassigned 1016":   {0x03, 0xf8},
		"bad utf8 reason":   {0x03, 0xe8, 0xff, 0xfe},
	}
	for name, p := range cases {
		if _, _, err := ParseClose(p); !errors.Is(err, ErrProtocol) {
			t.Errorf("%s: err %v, want ErrProtocol", name, err)
		}
	}
}
