package relay

import (
	"sync"
	"sync/atomic"
)

// ringEntry is one published event: its relay seq and the compiled
// server-to-client WebSocket frame shared by every consumer.
type ringEntry struct {
	seq   int64
	uid   uint64
	frame []byte // nil once the account was taken down: skipped, never sent
}

// Ring holds the most recent durable frames, indexed by seq, so live
// consumers are served from memory. It is bounded twice: by slot count
// (RingSize) and by bytes (maxBytes); when either is exceeded the oldest
// entries are evicted and consumers that still need them read the event log.
//
// Within those bounds it keeps only what a consumer still needs: past
// floorBytes, entries older than the retain hook's seq (the position of
// the furthest-behind consumer that reads from the ring) are evicted, so
// frames every live consumer has been sent are not duplicated in memory
// (the page cache holds them for late readers). Consumers that lag keep
// their frames in the ring, up to maxBytes.
//
// One writer (the sequencer) publishes; any number of loops read without
// locks: a reader loads a slot and checks that it holds the seq it wants.
type Ring struct {
	slots    []atomic.Pointer[ringEntry]
	mask     int64
	maxBytes int64

	head   atomic.Int64 // last published seq (0 = nothing yet)
	oldest atomic.Int64 // oldest seq still held (0 = empty)

	mu    sync.Mutex // writer side: bytes accounting and eviction
	bytes int64

	// floorBytes: the ring keeps at least this much of the tip, needed or
	// not (a consumer that connects near the head is served from memory).
	floorBytes int64
	// retain, when set, returns the lowest seq a ring reader still needs
	// (head+1 when none does). Set once before the first Publish.
	retain func() int64
}

// ringFloorBytes is the tip kept whatever consumers need: ~750 frames of
// ~2.7 KB, 0.4 s at 2,000 ev/s.
const ringFloorBytes = 2 << 20

// DefaultRingMaxBytes is the byte bound of a ring made with maxBytes <= 0.
const DefaultRingMaxBytes = DefaultRingBytes

// NewRing returns a ring of at least size slots (rounded up to a power of
// two), holding at most maxBytes of frames.
func NewRing(size int, maxBytes int64) *Ring {
	n := 1
	for n < size {
		n <<= 1
	}
	if maxBytes <= 0 {
		maxBytes = DefaultRingMaxBytes
	}
	return &Ring{slots: make([]atomic.Pointer[ringEntry], n), mask: int64(n - 1), maxBytes: maxBytes, floorBytes: min(ringFloorBytes, maxBytes)}
}

// SetRetain installs the hook that tells Publish which entries a reader
// still needs (see Ring). Call it before the first Publish.
func (r *Ring) SetRetain(fn func() int64) { r.retain = fn }

// Reset sets the head for an empty ring (at start, after the log's last seq).
func (r *Ring) Reset(head int64) {
	r.head.Store(head)
	r.oldest.Store(head + 1)
}

// Head returns the last published seq.
func (r *Ring) Head() int64 { return r.head.Load() }

// Oldest returns the oldest seq the ring can still serve.
func (r *Ring) Oldest() int64 { return r.oldest.Load() }

// Bytes returns the frame bytes held.
func (r *Ring) Bytes() int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.bytes
}

// Len returns the number of entries held.
func (r *Ring) Len() int64 {
	h, o := r.head.Load(), r.oldest.Load()
	if h < o {
		return 0
	}
	return h - o + 1
}

// Publish appends entries with consecutive seqs following Head. Only the
// sequencer calls it, after the entries are durable.
func (r *Ring) Publish(entries []*ringEntry) {
	if len(entries) == 0 {
		return
	}
	needFrom := int64(-1) // lowest seq a reader needs; -1: keep up to maxBytes
	if r.retain != nil {
		needFrom = r.retain()
	}
	r.mu.Lock()
	n := int64(len(r.slots))
	for _, e := range entries {
		// Evict what this entry overwrites, and what the byte bound requires.
		if old := r.slots[e.seq&r.mask].Load(); old != nil && old.seq <= e.seq-n {
			r.bytes -= int64(len(old.frame))
		}
		r.slots[e.seq&r.mask].Store(e)
		r.bytes += int64(len(e.frame))
		if o := e.seq - n + 1; o > r.oldest.Load() {
			r.oldest.Store(o)
		}
	}
	last := entries[len(entries)-1].seq
	for r.bytes > r.maxBytes || (r.bytes > r.floorBytes && needFrom >= 0 && r.oldest.Load() < needFrom) {
		o := r.oldest.Load()
		if o >= last {
			break // always keep the newest entry
		}
		if old := r.slots[o&r.mask].Load(); old != nil && old.seq == o {
			r.bytes -= int64(len(old.frame))
			r.slots[o&r.mask].Store(nil)
		}
		r.oldest.Store(o + 1)
	}
	r.mu.Unlock()
	r.head.Store(last)
}

// Get returns the entry for seq, or nil when seq is not held (evicted, or
// not yet published). A non-nil entry with a nil frame was taken down.
func (r *Ring) Get(seq int64) *ringEntry {
	if seq < r.oldest.Load() || seq > r.head.Load() {
		return nil
	}
	e := r.slots[seq&r.mask].Load()
	if e == nil || e.seq != seq {
		return nil
	}
	return e
}

// Takedown removes every held frame of uid, so live consumers skip them as
// replay from the log does.
func (r *Ring) Takedown(uid uint64) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for i := range r.slots {
		e := r.slots[i].Load()
		if e != nil && e.uid == uid && e.frame != nil {
			r.bytes -= int64(len(e.frame))
			r.slots[i].Store(&ringEntry{seq: e.seq, uid: uid})
			n++
		}
	}
	return n
}
