package relay

import "testing"

func TestSeqTrackerCursorOnlyPassesDoneEvents(t *testing.T) {
	var tr seqTracker
	tr.reset(10)
	if got := tr.cursor(); got != 10 {
		t.Fatalf("cursor %d, want 10", got)
	}
	for _, s := range []int64{11, 12, 15, 16} {
		tr.dispatch(s, 100)
	}
	tr.skip(17) // a junk frame after them
	tr.done(12)
	tr.done(16)
	if got := tr.cursor(); got != 10 {
		t.Fatalf("cursor %d with 11 in flight, want 10", got)
	}
	tr.done(11)
	if got := tr.cursor(); got != 14 {
		t.Fatalf("cursor %d with 15 in flight, want 14", got)
	}
	if got := tr.inflightBytes(); got != 100 {
		t.Fatalf("in-flight bytes %d, want 100", got)
	}
	tr.done(15)
	tr.done(15) // a second done changes nothing
	if got, last := tr.cursor(), tr.lastSeq(); got != 17 || last != 17 {
		t.Fatalf("cursor %d, last %d; want 17, 17", got, last)
	}
	if got := tr.inflightBytes(); got != 0 {
		t.Fatalf("in-flight bytes %d after all done", got)
	}
}

func TestSeqTrackerFullByCountAndBytes(t *testing.T) {
	var tr seqTracker
	for i := int64(1); i < maxInflightPerHost; i++ {
		tr.dispatch(i, 1)
	}
	if tr.full() {
		t.Fatal("full below the count bound")
	}
	tr.dispatch(maxInflightPerHost, 1)
	if !tr.full() {
		t.Fatal("not full at the count bound")
	}
	tr.reset(0)
	tr.dispatch(1, maxInflightBytesPerHost-1)
	if tr.full() {
		t.Fatal("full below the byte bound")
	}
	tr.dispatch(2, 1)
	if !tr.full() {
		t.Fatal("not full at the byte bound")
	}
	tr.undispatch(2, 1)
	if tr.full() || tr.lastSeq() != 1 {
		t.Fatalf("undispatch: full %v, last %d", tr.full(), tr.lastSeq())
	}
}
