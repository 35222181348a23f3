package perf

import (
	"bytes"
	"testing"
)

// FuzzScanFrame checks the scanner never panics or reads out of bounds on
// hostile input, and agrees with indigo's decoder on what it accepts.
func FuzzScanFrame(f *testing.F) {
	a, err := NewAccount(K256, "fuzz.test", nil, nil)
	if err != nil {
		f.Fatal(err)
	}
	c, err := a.Commit(2)
	if err != nil {
		f.Fatal(err)
	}
	s, err := a.Sync()
	if err != nil {
		f.Fatal(err)
	}
	for _, ev := range []Event{{Commit: c}, {Sync: s}, {Identity: a.Identity()}, {Account: a.AccountEvent(false, "takendown")}} {
		b, err := EncodeEvent(ev, 77)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
		f.Add(TruncatedFrame(b))
	}
	ef, _ := EncodeErrorFrame("ConsumerTooSlow", "bye")
	f.Add(ef)
	f.Add(GarbageFrame())
	f.Add(UnknownTypeFrame())
	f.Fuzz(func(t *testing.T, p []byte) {
		orig := bytes.Clone(p)
		fi, err := ScanFrame(p)
		if !bytes.Equal(orig, p) {
			t.Fatal("ScanFrame modified its input")
		}
		if err != nil {
			return
		}
		ev, seq, derr := DecodeEvent(p)
		if derr == nil && (seq != fi.Seq || ev.DID() != string(fi.DID) || ev.Rev() != string(fi.Rev)) {
			t.Fatalf("scan %+v disagrees with decode seq %d did %s rev %s", fi, seq, ev.DID(), ev.Rev())
		}
	})
}
