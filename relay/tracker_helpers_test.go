package relay

// Test-only access to the tracker: the relay itself goes through admit.

// dispatch records seq, a message of size bytes, as in flight.
func (t *seqTracker) dispatch(seq int64, size int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.dispatchLocked(seq, size)
}

// inflightBytes is the message bytes of events dispatched and not done.
func (t *seqTracker) inflightBytes() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.bytes
}

// skip records a seq dropped before dispatch (bad frame): it is done.
func (t *seqTracker) skip(seq int64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if seq > t.last {
		t.last = seq
	}
}
