package relay

import "testing"

// TestRingKeepsOnlyWhatReadersNeed: past the floor, the ring evicts frames
// older than the retain hook's seq, keeps those a reader still needs (up to
// maxBytes), and always holds at least the floor of the tip.
func TestRingKeepsOnlyWhatReadersNeed(t *testing.T) {
	const frame = 1000
	r := NewRing(1<<12, 100*frame)
	r.floorBytes = 10 * frame
	need := int64(-1)
	r.SetRetain(func() int64 { return need })
	r.Reset(0)
	seq := int64(0)
	publish := func(n int) {
		var es []*ringEntry
		for range n {
			seq++
			es = append(es, &ringEntry{seq: seq, frame: make([]byte, frame)})
		}
		r.Publish(es)
	}

	need = 1 // a reader at the start: everything is kept up to maxBytes
	publish(50)
	if r.Oldest() != 1 || r.Len() != 50 {
		t.Fatalf("reader at seq 1: oldest %d, len %d; want 1, 50", r.Oldest(), r.Len())
	}
	publish(80) // past maxBytes: the byte bound wins over the reader
	if r.Bytes() > 100*frame || r.Oldest() != seq-99 {
		t.Fatalf("over maxBytes: %d bytes, oldest %d (head %d)", r.Bytes(), r.Oldest(), seq)
	}

	need = seq - 29 // the slowest reader has 30 frames to go
	publish(1)
	if r.Oldest() != need || r.Len() != 31 {
		t.Fatalf("reader 30 behind: oldest %d (want %d), len %d", r.Oldest(), need, r.Len())
	}

	need = seq + 1 // every reader is at the head: only the floor stays
	publish(5)
	if r.Bytes() != 10*frame || r.Oldest() != seq-9 {
		t.Fatalf("no reader behind: %d bytes, oldest %d (head %d); want the 10-frame floor", r.Bytes(), r.Oldest(), seq)
	}
	for s := r.Oldest(); s <= seq; s++ {
		if e := r.Get(s); e == nil || e.seq != s {
			t.Fatalf("seq %d in the floor is not served", s)
		}
	}
	if r.Get(r.Oldest()-1) != nil {
		t.Fatal("an evicted seq is still served")
	}
}
