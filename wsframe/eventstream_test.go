package wsframe

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	comatproto "github.com/bluesky-social/indigo/api/atproto"
	"github.com/bluesky-social/indigo/events"
)

func indigoHeader(t *testing.T, op int64, typ string) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := (&events.EventHeader{Op: op, MsgType: typ}).MarshalCBOR(&buf); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestAppendEventHeaderMatchesIndigo(t *testing.T) {
	for _, typ := range []string{"#commit", "#identity", "#x", strings.Repeat("y", 40)} {
		got := AppendEventHeader([]byte("prefix"), typ)
		if !bytes.HasPrefix(got, []byte("prefix")) {
			t.Fatal("dst prefix lost")
		}
		if want := indigoHeader(t, events.EvtKindMessage, typ); !bytes.Equal(got[6:], want) {
			t.Fatalf("%s: header %x, indigo %x", typ, got[6:], want)
		}
	}
}

func TestErrorPayloadDecodesWithIndigo(t *testing.T) {
	for _, msg := range []string{"", "cursor is in the future"} {
		p := AppendErrorPayload(nil, "FutureCursor", msg)
		r := bytes.NewReader(p)
		var h events.EventHeader
		if err := h.UnmarshalCBOR(r); err != nil {
			t.Fatal(err)
		}
		if h.Op != events.EvtKindErrorFrame || h.MsgType != "" {
			t.Fatalf("header %+v", h)
		}
		var ef events.ErrorFrame
		if err := ef.UnmarshalCBOR(r); err != nil {
			t.Fatal(err)
		}
		if ef.Error != "FutureCursor" || ef.Message != msg || r.Len() != 0 {
			t.Fatalf("error frame %+v, %d bytes left", ef, r.Len())
		}
		op, typ, body, err := ParseEventHeader(p)
		if err != nil || op != OpError || typ != "" || len(body) != len(p)-len(indigoHeader(t, -1, "")) {
			t.Fatalf("ParseEventHeader = %d %q %d %v", op, typ, len(body), err)
		}
	}
}

func TestInfoPayloadDecodesWithIndigo(t *testing.T) {
	for _, msg := range []string{"", "cursor older than the oldest event"} {
		p := AppendInfoPayload(nil, "OutdatedCursor", msg)
		r := bytes.NewReader(p)
		var h events.EventHeader
		if err := h.UnmarshalCBOR(r); err != nil {
			t.Fatal(err)
		}
		if h.Op != events.EvtKindMessage || h.MsgType != "#info" {
			t.Fatalf("header %+v", h)
		}
		var info comatproto.SyncSubscribeRepos_Info
		if err := info.UnmarshalCBOR(r); err != nil {
			t.Fatal(err)
		}
		if info.Name != "OutdatedCursor" || (msg == "") != (info.Message == nil) || (info.Message != nil && *info.Message != msg) || r.Len() != 0 {
			t.Fatalf("info %+v, %d bytes left", info, r.Len())
		}
		// Canonical: the same bytes indigo would produce for the body.
		var want bytes.Buffer
		if err := info.MarshalCBOR(&want); err != nil {
			t.Fatal(err)
		}
		if body := p[len(indigoHeader(t, 1, "#info")):]; !bytes.Equal(body, want.Bytes()) {
			t.Fatalf("info body %x, indigo %x", body, want.Bytes())
		}
	}
}

func TestParseEventHeader(t *testing.T) {
	body := []byte{0xa1, 0x61, 0x61, 0x01} // {"a":1}
	for _, c := range []struct {
		op  int64
		typ string
	}{{1, "#commit"}, {1, "#sync"}, {1, "#someFutureType"}, {-1, ""}, {1000, "#x"}} {
		p := append(indigoHeader(t, c.op, c.typ), body...)
		op, typ, gotBody, err := ParseEventHeader(p)
		if err != nil || op != c.op || typ != c.typ || !bytes.Equal(gotBody, body) {
			t.Fatalf("%v: got %d %q %x %v", c, op, typ, gotBody, err)
		}
	}
	// Unknown keys are skipped, in any position.
	unknown := []byte{0xa3,
		0x61, 0x74, 0x63, '#', 'a', 'b', // "t": "#ab"
		0x62, 'o', 'p', 0x01, // "op": 1
		0x63, 'z', 'z', 'z', 0x82, 0x01, 0xa1, 0x61, 'k', 0x42, 0x00, 0x01, // "zzz": [1, {"k": h'0001'}]
	}
	op, typ, gotBody, err := ParseEventHeader(append(unknown, body...))
	if err != nil || op != 1 || typ != "#ab" || !bytes.Equal(gotBody, body) {
		t.Fatalf("unknown key: %d %q %x %v", op, typ, gotBody, err)
	}
}

func TestParseEventHeaderAllocs(t *testing.T) {
	p := append(indigoHeader(t, 1, "#commit"), 0xa0)
	allocs := testing.AllocsPerRun(100, func() {
		if _, _, _, err := ParseEventHeader(p); err != nil {
			t.Fatal(err)
		}
	})
	// The bytes.Reader handed to cbor-gen escapes; the type is interned.
	if allocs > 1 {
		t.Fatalf("%v allocations per ParseEventHeader", allocs)
	}
}

func TestParseEventHeaderRejects(t *testing.T) {
	good := append(indigoHeader(t, 1, "#commit"), 0xa0)
	cases := map[string][]byte{
		"empty":                nil,
		"not a map":            {0x82, 0x01, 0x02, 0xa0},
		"no op":                {0xa1, 0x61, 't', 0x61, 'x', 0xa0},
		"op is a string":       {0xa1, 0x62, 'o', 'p', 0x61, 'x', 0xa0},
		"duplicate op":         {0xa2, 0x62, 'o', 'p', 0x01, 0x62, 'o', 'p', 0x01, 0xa0},
		"integer key":          {0xa1, 0x01, 0x01, 0xa0},
		"no body":              indigoHeader(t, 1, "#commit"),
		"non-canonical length": {0xa1, 0x62, 'o', 'p', 0x18, 0x01, 0xa0},
		"indefinite map":       {0xbf, 0x62, 'o', 'p', 0x01, 0xff, 0xa0},
		"huge t":               append(indigoHeader(t, 1, strings.Repeat("t", MaxEventTypeLen+1)), 0xa0),
		"too many keys":        {0xb8, 0x20},
		"deep unknown":         append([]byte{0xa2, 0x62, 'o', 'p', 0x01, 0x61, 'u'}, append(bytes.Repeat([]byte{0x81}, 100), 0x01, 0xa0)...),
	}
	for i := range len(good) - 1 {
		cases["truncated "+string(rune('a'+i))] = good[:i]
	}
	for name, p := range cases {
		if _, _, _, err := ParseEventHeader(p); !errors.Is(err, ErrMalformedEvent) {
			t.Errorf("%s: err %v, want ErrMalformedEvent", name, err)
		}
	}
}
