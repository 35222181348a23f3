package relay

import (
	"slices"
	"sort"
	"sync"
)

// Bounds on one host's events between its socket and durability. Past
// either, the host's socket is paused: one busy host cannot fill every
// worker queue, and the memory its decoded events hold is bounded whatever
// their sizes (a 4,096-event budget of 5 MB frames would be 20 GB).
const (
	maxInflightPerHost      = 4096
	maxInflightBytesPerHost = 64 << 20
)

// seqTracker follows one host's upstream seqs from dispatch to durable (or
// dropped), so the persisted cursor never passes an event that a crash
// could lose: the cursor is the highest seq below which everything is done.
type seqTracker struct {
	mu    sync.Mutex
	seqs  []int64
	dones []bool
	sizes []int
	head  int   // first not-done index
	last  int64 // highest seq seen (dispatched or dropped at the socket)
	bytes int   // message bytes of dispatched events not yet done
	// durableAbove lists seqs above the cursor whose events are already durable
	// (found in the event log at start): when the host replays them they
	// are done at once, never accepted twice. Ascending; bounded by what
	// was in flight at the crash.
	durableAbove []int64
}

// reset starts from a persisted cursor.
func (t *seqTracker) reset(cursor int64) {
	t.resume(cursor, nil)
}

// resume starts from a recovered cursor and the durable seqs above it.
func (t *seqTracker) resume(cursor int64, durable []int64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.seqs, t.dones, t.sizes, t.head, t.last, t.bytes = t.seqs[:0], t.dones[:0], t.sizes[:0], 0, cursor, 0
	t.durableAbove = append(t.durableAbove[:0], durable...)
}

// rewind forgets what is in flight and goes back to the cursor: the host
// is disconnected and resumes from there (its in-flight events will never
// be durable). Late done calls for forgotten seqs are ignored.
func (t *seqTracker) rewind() {
	t.mu.Lock()
	defer t.mu.Unlock()
	c := t.cursorLocked()
	var durable []int64
	for i := t.head; i < len(t.seqs); i++ {
		if t.dones[i] {
			durable = append(durable, t.seqs[i])
		}
	}
	t.seqs, t.dones, t.sizes, t.head, t.last, t.bytes = t.seqs[:0], t.dones[:0], t.sizes[:0], 0, c, 0
	t.durableAbove = append(durable, t.durableAbove...)
	slices.Sort(t.durableAbove)
}

// resumePoint is where a restart may resume: the cursor, and the seqs
// above it already done (durable or dropped).
func (t *seqTracker) resumePoint() (int64, []int64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	c := t.cursorLocked()
	var above []int64
	for i := t.head; i < len(t.seqs); i++ {
		if t.dones[i] {
			above = append(above, t.seqs[i])
		}
	}
	for _, s := range t.durableAbove {
		if s > c {
			above = append(above, s)
		}
	}
	slices.Sort(above)
	return c, slices.Compact(above)
}

// lastSeq is the highest seq seen: older or equal seqs are duplicates.
func (t *seqTracker) lastSeq() int64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.last
}

// full reports whether the host has too much in flight.
func (t *seqTracker) full() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.fullLocked()
}

func (t *seqTracker) fullLocked() bool {
	return len(t.seqs)-t.head >= maxInflightPerHost || t.bytes >= maxInflightBytesPerHost
}

// inflight is the number of events dispatched and not yet done.
func (t *seqTracker) inflight() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.seqs) - t.head
}

// admission is what admit decided for an upstream event.
type admission int

const (
	admitted       admission = iota // recorded in flight
	admitDuplicate                  // seq not after the last seen: drop it
	admitFull                       // the host's budget is spent: pause
	admitDurable                    // already in the event log: done, not processed again
)

// admit is the socket's one call per event: it drops duplicates, refuses
// when the budget is spent, or records seq (size bytes) as in flight. It
// returns the last seq seen before, for undispatch.
func (t *seqTracker) admit(seq int64, size int) (admission, int64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	prev := t.last
	switch {
	case seq <= prev:
		return admitDuplicate, prev
	case t.fullLocked():
		return admitFull, prev
	}
	if len(t.durableAbove) > 0 {
		// Seqs the host did not resend are gone for good.
		i := 0
		for i < len(t.durableAbove) && t.durableAbove[i] < seq {
			i++
		}
		t.durableAbove = t.durableAbove[i:]
		if len(t.durableAbove) > 0 && t.durableAbove[0] == seq {
			t.durableAbove = t.durableAbove[1:]
			t.dispatchLocked(seq, 0)
			t.doneLocked(seq)
			return admitDurable, prev
		}
	}
	t.dispatchLocked(seq, size)
	return admitted, prev
}

func (t *seqTracker) dispatchLocked(seq int64, size int) {
	if t.head > 0 && t.head >= len(t.seqs)/2 {
		n := copy(t.seqs, t.seqs[t.head:])
		copy(t.dones, t.dones[t.head:])
		copy(t.sizes, t.sizes[t.head:])
		t.seqs, t.dones, t.sizes, t.head = t.seqs[:n], t.dones[:n], t.sizes[:n], 0
	}
	t.seqs = append(t.seqs, seq)
	t.dones = append(t.dones, false)
	t.sizes = append(t.sizes, size)
	t.bytes += size
	t.last = seq
}

// undispatch forgets the newest dispatch (the worker refused it).
func (t *seqTracker) undispatch(seq, prevLast int64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if n := len(t.seqs); n > t.head && t.seqs[n-1] == seq {
		t.bytes -= t.sizes[n-1]
		t.seqs, t.dones, t.sizes = t.seqs[:n-1], t.dones[:n-1], t.sizes[:n-1]
	}
	t.last = prevLast
}

// done marks seq durable or dropped.
func (t *seqTracker) done(seq int64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.doneLocked(seq)
}

func (t *seqTracker) doneLocked(seq int64) {
	live := t.seqs[t.head:]
	i := sort.Search(len(live), func(i int) bool { return live[i] >= seq })
	if i == len(live) || live[i] != seq || t.dones[t.head+i] {
		return
	}
	t.dones[t.head+i] = true
	t.bytes -= t.sizes[t.head+i]
	for t.head < len(t.seqs) && t.dones[t.head] {
		t.head++
	}
}

// cursor is the seq a restart may resume after without losing anything.
func (t *seqTracker) cursor() int64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.cursorLocked()
}

func (t *seqTracker) cursorLocked() int64 {
	if t.head == len(t.seqs) {
		return t.last
	}
	return t.seqs[t.head] - 1
}
