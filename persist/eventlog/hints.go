package eventlog

import "sync"

// hintSlots is the number of resume positions remembered. Replay workers
// page through the log one ReadAfter call at a time; each call starts where
// one of the recent calls stopped. When more readers than this interleave,
// the oldest hints are overwritten and those readers fall back to the
// sparse index (a scan of up to indexInterval records).
const hintSlots = 128

// hint says that in segment s the record after seq starts at off.
type hint struct {
	s   *segment
	seq int64
	off int64
}

// hintCache is a small ring of resume positions, so that paging through
// the log does not rescan from the nearest sparse index entry on each call.
type hintCache struct {
	mu   sync.Mutex
	next int
	h    [hintSlots]hint
}

// get returns the offset of the record after seq in s, if remembered.
func (c *hintCache) get(s *segment, seq int64) (int64, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := range c.h {
		if h := &c.h[i]; h.s == s && h.seq == seq {
			return h.off, true
		}
	}
	return 0, false
}

// put remembers that in s the record after seq starts at off, replacing
// the oldest hint.
func (c *hintCache) put(s *segment, seq, off int64) {
	c.mu.Lock()
	c.h[c.next] = hint{s: s, seq: seq, off: off}
	c.next = (c.next + 1) % hintSlots
	c.mu.Unlock()
}

// forget drops the hints into removed segments so they can be collected.
func (c *hintCache) forget(removed []*segment) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := range c.h {
		for _, s := range removed {
			if c.h[i].s == s {
				c.h[i] = hint{}
			}
		}
	}
}
