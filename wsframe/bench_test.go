package wsframe

import (
	"testing"

	"github.com/gobwas/ws"
)

func BenchmarkCompile(b *testing.B) {
	payload := testPayload(1024, 1)
	b.SetBytes(int64(len(payload)))
	b.ReportAllocs()
	for b.Loop() {
		_ = Compile(payload)
	}
}

func BenchmarkDecoderNext(b *testing.B) {
	payload := testPayload(1024, 1)
	b.Run("unmasked", func(b *testing.B) {
		frame := AppendFrame(nil, ws.OpBinary, payload, false)
		d := Decoder{RejectMasked: true}
		b.SetBytes(int64(len(frame)))
		b.ReportAllocs()
		for b.Loop() {
			if _, n, ok, err := d.Next(frame); !ok || err != nil || n != len(frame) {
				b.Fatal(n, ok, err)
			}
		}
	})
	b.Run("masked", func(b *testing.B) {
		// Unmasking is in place; Unread re-masks so the same bytes serve
		// every iteration (the cost of two cipher passes is measured).
		frame := AppendFrame(nil, ws.OpBinary, payload, true)
		d := Decoder{RequireMasked: true}
		b.SetBytes(int64(len(frame)))
		b.ReportAllocs()
		for b.Loop() {
			if _, _, ok, err := d.Next(frame); !ok || err != nil {
				b.Fatal(ok, err)
			}
			_ = d.Unread()
		}
	})
	b.Run("partial", func(b *testing.B) {
		frame := AppendFrame(nil, ws.OpBinary, payload, false)
		d := Decoder{}
		b.ReportAllocs()
		for b.Loop() {
			if _, n, _, err := d.Next(frame[:500]); n != 0 || err != nil {
				b.Fatal(n, err)
			}
		}
	})
}

func BenchmarkParseEventHeader(b *testing.B) {
	p := append(AppendEventHeader(nil, "#commit"), testPayload(1024, 2)...)
	b.ReportAllocs()
	for b.Loop() {
		if _, _, _, err := ParseEventHeader(p); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkAppendEventHeader(b *testing.B) {
	buf := make([]byte, 0, 64)
	b.ReportAllocs()
	for b.Loop() {
		buf = AppendEventHeader(buf[:0], "#commit")
	}
}

func TestDecoderNextDoesNotAllocate(t *testing.T) {
	frame := AppendFrame(nil, ws.OpBinary, testPayload(1024, 1), false)
	d := Decoder{}
	allocs := testing.AllocsPerRun(100, func() {
		if _, _, ok, err := d.Next(frame); !ok || err != nil {
			t.Fatal(ok, err)
		}
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per unfragmented frame", allocs)
	}
}
