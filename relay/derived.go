package relay

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/relay/relay/persist/meta"
)

// The rule for derived state (README "Crash consistency"): the event log
// is the source of truth. Every record the relay appends carries, in its
// meta section, the state the event derives: its source host and upstream
// seq, the host's safe cursor when the event was submitted, the repo head
// it moves the account to, and the account status it sets. Once a batch
// is durable the sequencer marks its events done at their hosts, applies
// their effects to an in-memory overlay (derivedState), and only then
// publishes the batch; the API and the validation workers read through
// the overlay, so nothing a consumer has received is unknown to them. A
// checkpointer writes the overlay and the host cursors to the metadata
// store in one atomic write, with the log seq it covers. At start the
// relay replays the log past the last checkpoint into a new checkpoint
// (recoverDerived) before any host is dialed.

// Derived-state limits.
const (
	// maxDerivedPending bounds repo heads and status changes that are
	// durable but not yet checkpointed. When full (the store is slow or
	// down), the sequencer waits before publishing: backpressure to the
	// workers and hosts, nothing dropped.
	maxDerivedPending = 1 << 17
	// checkpointInterval is how often the overlay is written to the store.
	checkpointInterval = 200 * time.Millisecond
	// checkpointRefresh is the longest a running relay goes without a
	// checkpoint, even with nothing new, so the checkpoint's time bounds
	// the relay's downtime after a crash.
	checkpointRefresh = time.Minute
	// checkpointTimeout bounds one checkpoint write.
	checkpointTimeout = 10 * time.Second
	// recoveryChunk bounds the repo heads of one recovery write, so a
	// long log tail does not become one huge transaction.
	recoveryChunk = 50_000
)

// recordMeta is what one event log record says about where its event came
// from and what it changed. It is encoded into the record's meta section.
type recordMeta struct {
	hostID uint64 // 0: the relay's own event (admin #account)
	useq   int64  // upstream seq
	floor  int64  // the host's safe cursor when the event was submitted
	repo   *meta.RepoState
	status *meta.StatusChange
}

const (
	metaVersion    = 1
	metaHasHost    = 1 << 0
	metaHasRepo    = 1 << 1
	metaHasStatus  = 1 << 2
	metaKnownFlags = metaHasHost | metaHasRepo | metaHasStatus
)

// ErrBadRecordMeta: a record's meta section does not decode.
var ErrBadRecordMeta = errors.New("relay: bad event log record meta")

// appendMeta encodes m after b. Repo heads are stored without their UID
// (the record header has it).
func (m *recordMeta) append(b []byte) []byte {
	var flags byte
	if m.hostID != 0 {
		flags |= metaHasHost
	}
	if m.repo != nil {
		flags |= metaHasRepo
	}
	if m.status != nil {
		flags |= metaHasStatus
	}
	b = append(b, metaVersion, flags)
	if m.hostID != 0 {
		b = binary.AppendUvarint(b, m.hostID)
		b = binary.AppendVarint(b, m.useq)
		b = binary.AppendVarint(b, m.floor)
	}
	if m.repo != nil {
		b = appendString(b, m.repo.Rev)
		b = appendString(b, m.repo.CommitCID)
		b = appendString(b, m.repo.DataCID)
	}
	if m.status != nil {
		b = binary.AppendUvarint(b, m.status.UID)
		b = appendString(b, string(m.status.Status))
		b = appendString(b, string(m.status.UpstreamStatus))
	}
	return b
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// metaReader decodes a meta section.
type metaReader struct {
	b   []byte
	err bool
}

func (r *metaReader) uvarint() uint64 {
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.err = true
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *metaReader) varint() int64 {
	v, n := binary.Varint(r.b)
	if n <= 0 {
		r.err = true
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *metaReader) string() string {
	n := r.uvarint()
	if r.err || n > uint64(len(r.b)) {
		r.err = true
		return ""
	}
	s := string(r.b[:n])
	r.b = r.b[n:]
	return s
}

// decodeRecordMeta decodes the meta section of the record of account uid.
func decodeRecordMeta(b []byte, uid uint64) (recordMeta, error) {
	var m recordMeta
	if len(b) < 2 || b[0] != metaVersion || b[1]&^metaKnownFlags != 0 {
		return m, ErrBadRecordMeta
	}
	flags := b[1]
	r := metaReader{b: b[2:]}
	if flags&metaHasHost != 0 {
		m.hostID = r.uvarint()
		m.useq = r.varint()
		m.floor = r.varint()
	}
	if flags&metaHasRepo != 0 {
		m.repo = &meta.RepoState{UID: uid, Rev: r.string(), CommitCID: r.string(), DataCID: r.string()}
	}
	if flags&metaHasStatus != 0 {
		m.status = &meta.StatusChange{UID: r.uvarint(), Status: meta.AccountStatus(r.string()), UpstreamStatus: meta.AccountStatus(r.string())}
	}
	if r.err || len(r.b) != 0 {
		return recordMeta{}, ErrBadRecordMeta
	}
	return m, nil
}

// derivedState is the overlay of derived state that is durable in the
// event log but not yet in a checkpoint. Readers (API, validation workers
// loading an account) consult it before the store.
type derivedState struct {
	mu   sync.Mutex
	cond *sync.Cond // signalled when a checkpoint frees room
	// cur collects effects since the last swap; flushing is the generation
	// being written (still readable until the write succeeded).
	cur, flushing *derivedGen
	seq           int64 // last durable seq whose effects are applied
	closed        bool
}

// derivedGen is one generation of the overlay.
type derivedGen struct {
	repos    map[uint64]meta.RepoState
	statuses map[uint64]meta.StatusChange
}

func newDerivedGen() *derivedGen {
	return &derivedGen{repos: map[uint64]meta.RepoState{}, statuses: map[uint64]meta.StatusChange{}}
}

func (g *derivedGen) size() int { return len(g.repos) + len(g.statuses) }

func newDerivedState(seq int64) *derivedState {
	d := &derivedState{cur: newDerivedGen(), seq: seq}
	d.cond = sync.NewCond(&d.mu)
	return d
}

// effect is one durable event's derived state.
type effect struct {
	repo   *meta.RepoState
	status *meta.StatusChange
}

// apply records the effects of a durable batch ending at seq. It waits
// while the overlay is full (see maxDerivedPending).
func (d *derivedState) apply(effects []effect, seq int64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for !d.closed && d.pendingLocked() >= maxDerivedPending {
		d.cond.Wait()
	}
	for _, e := range effects {
		if e.repo != nil {
			d.cur.repos[e.repo.UID] = *e.repo
		}
		if e.status != nil {
			d.cur.statuses[e.status.UID] = *e.status
		}
	}
	d.seq = seq
}

func (d *derivedState) pendingLocked() int {
	n := d.cur.size()
	if d.flushing != nil {
		n += d.flushing.size()
	}
	return n
}

// pending is the number of effects not yet checkpointed.
func (d *derivedState) pending() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.pendingLocked()
}

// repo returns the newest durable head of uid not yet checkpointed.
func (d *derivedState) repo(uid uint64) (meta.RepoState, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if rs, ok := d.cur.repos[uid]; ok {
		return rs, true
	}
	if d.flushing != nil {
		if rs, ok := d.flushing.repos[uid]; ok {
			return rs, true
		}
	}
	return meta.RepoState{}, false
}

// status returns the newest durable status change of uid not yet
// checkpointed.
func (d *derivedState) status(uid uint64) (meta.StatusChange, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if c, ok := d.cur.statuses[uid]; ok {
		return c, true
	}
	if d.flushing != nil {
		if c, ok := d.flushing.statuses[uid]; ok {
			return c, true
		}
	}
	return meta.StatusChange{}, false
}

// overlayAccount applies a durable status change not yet checkpointed to
// an account read from the store.
func (d *derivedState) overlayAccount(a *meta.Account) {
	if c, ok := d.status(a.UID); ok {
		a.Status, a.UpstreamStatus = c.Status, c.UpstreamStatus
	}
}

// swap starts a checkpoint: the current generation becomes the flushing
// one. It returns nil when a write is still pending (a failed one is
// merged back first by restore).
func (d *derivedState) swap() (*derivedGen, int64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.flushing != nil {
		return nil, 0
	}
	g := d.cur
	d.flushing, d.cur = g, newDerivedGen()
	return g, d.seq
}

// flushed ends a checkpoint: ok drops the written generation; !ok merges
// it back under the newer one, to be written next time.
func (d *derivedState) flushed(ok bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	g := d.flushing
	d.flushing = nil
	if !ok && g != nil {
		for uid, rs := range d.cur.repos {
			g.repos[uid] = rs
		}
		for uid, c := range d.cur.statuses {
			g.statuses[uid] = c
		}
		d.cur = g
	}
	d.cond.Broadcast()
}

// close releases a sequencer waiting for room (shutdown).
func (d *derivedState) close() {
	d.mu.Lock()
	d.closed = true
	d.mu.Unlock()
	d.cond.Broadcast()
}

// hostResume is where a host's subscription resumes after a restart: its
// cursor, and the upstream seqs above it whose events are already durable
// (skipped when the host replays them).
type hostResume struct {
	cursor int64
	done   []int64 // ascending, all > cursor
	known  bool    // the cursor is known even if 0: never resume live
}

// resumeSource is what the checkpointer reads from the hosts: each host's
// current resume point.
type resumeSource interface {
	resumePoints() map[uint64]hostResume
}

// encodeResume encodes the resume detail the store keeps opaque: when it
// was taken (unix seconds; a restart long after it means every host's
// cursor is old, see maxCursorAge), then the hosts
// whose resume point is more than a cursor (durable seqs above it, or a
// known cursor of 0).
func encodeResume(points map[uint64]hostResume, at time.Time) []byte {
	b := binary.AppendUvarint(nil, uint64(max(at.Unix(), 0)))
	n := 0
	for _, p := range points {
		if len(p.done) > 0 || (p.known && p.cursor == 0) {
			n++
		}
	}
	b = binary.AppendUvarint(b, uint64(n))
	for id, p := range points {
		if len(p.done) == 0 && !(p.known && p.cursor == 0) {
			continue
		}
		b = binary.AppendUvarint(b, id)
		b = binary.AppendVarint(b, p.cursor)
		b = binary.AppendUvarint(b, uint64(len(p.done)))
		prev := p.cursor
		for _, s := range p.done {
			b = binary.AppendUvarint(b, uint64(s-prev))
			prev = s
		}
	}
	return b
}

func decodeResume(b []byte) (map[uint64]hostResume, time.Time, error) {
	out := map[uint64]hostResume{}
	if len(b) == 0 {
		return out, time.Time{}, nil
	}
	r := metaReader{b: b}
	at := time.Unix(int64(r.uvarint()), 0)
	n := r.uvarint()
	for i := uint64(0); i < n && !r.err; i++ {
		id := r.uvarint()
		p := hostResume{cursor: r.varint(), known: true}
		k := r.uvarint()
		if k > uint64(len(r.b)) {
			r.err = true
			break
		}
		prev := p.cursor
		for j := uint64(0); j < k && !r.err; j++ {
			prev += int64(r.uvarint())
			p.done = append(p.done, prev)
		}
		out[id] = p
	}
	if r.err {
		return nil, time.Time{}, fmt.Errorf("relay: checkpoint resume detail does not decode")
	}
	return out, at, nil
}

// checkpointer writes the overlay and the hosts' resume points to the
// store, every checkpointInterval and when woken.
type checkpointer struct {
	store   meta.Store
	derived *derivedState
	hosts   resumeSource
	logger  *slog.Logger
	metrics *Metrics

	wake chan struct{}
	stop chan struct{}
	done chan struct{}
	last map[uint64]int64 // cursors of the last written checkpoint
	seq  int64            // seq of the last written checkpoint
	at   time.Time        // when it was written
}

func newCheckpointer(store meta.Store, d *derivedState, hosts resumeSource, seq int64, m *Metrics, logger *slog.Logger) *checkpointer {
	c := &checkpointer{
		store: store, derived: d, hosts: hosts, logger: logger, metrics: m, seq: seq,
		wake: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{}),
		last: map[uint64]int64{},
	}
	go c.run()
	return c
}

// soon asks for a checkpoint without waiting for the interval (a host's
// first events: its cursor should be stored before a crash can lose it).
func (c *checkpointer) soon() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

func (c *checkpointer) run() {
	defer close(c.done)
	t := time.NewTicker(checkpointInterval)
	defer t.Stop()
	for {
		select {
		case <-c.stop:
			return
		case <-t.C:
		case <-c.wake:
		}
		c.write()
	}
}

// write takes one checkpoint. The overlay is swapped before the hosts'
// resume points are read: every event up to the swapped seq was marked
// done at its host before its effects were applied, so the points cover
// it (as a cursor or as a durable seq above one).
func (c *checkpointer) write() bool {
	g, seq := c.derived.swap()
	if g == nil {
		return false
	}
	points := c.hosts.resumePoints()
	cursors := make(map[uint64]int64)
	for id, p := range points {
		if prev, ok := c.last[id]; !ok || prev != p.cursor {
			cursors[id] = p.cursor
		}
	}
	// With nothing new, write only to keep the checkpoint's time recent:
	// after a restart it tells how long the relay was down (staleCursor).
	if g.size() == 0 && len(cursors) == 0 && seq == c.seq && time.Since(c.at) < checkpointRefresh {
		c.derived.flushed(true)
		return true
	}
	cp := &meta.Checkpoint{Seq: seq, Cursors: cursors, Resume: encodeResume(points, time.Now())}
	cp.Repos = make([]meta.RepoState, 0, len(g.repos))
	for _, rs := range g.repos {
		cp.Repos = append(cp.Repos, rs)
	}
	cp.Statuses = make([]meta.StatusChange, 0, len(g.statuses))
	for _, s := range g.statuses {
		cp.Statuses = append(cp.Statuses, s)
	}
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), checkpointTimeout)
	err := c.store.WriteCheckpoint(ctx, cp)
	cancel()
	if err != nil {
		c.metrics.checkpointFailures.Inc()
		c.logger.Error("checkpoint write failed; will retry", "err", err, "seq", seq, "repos", len(cp.Repos))
		c.derived.flushed(false)
		return false
	}
	c.metrics.checkpointSeconds.UpdateDuration(start)
	c.derived.flushed(true)
	for id, v := range cursors {
		c.last[id] = v
	}
	c.seq, c.at = seq, time.Now()
	return true
}

// close writes a last checkpoint (after the sequencer closed) and stops.
func (c *checkpointer) close() {
	close(c.stop)
	<-c.done
	for range 3 {
		if c.write() && c.derived.pending() == 0 {
			return
		}
	}
}
