package relay

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gobwas/ws"
	"github.com/panjf2000/gnet/v2"

	"github.com/relay/relay/loop"
	"github.com/relay/relay/persist/eventlog"
	"github.com/relay/relay/wsframe"
)

// Fan-out limits.
const (
	// maxFramesPerWrite bounds the iovecs of one writev to a consumer.
	maxFramesPerWrite = 256
	// replayChunkBytes is how much of the event log one replay step reads
	// for one consumer; with the outbound cap it bounds a replaying
	// consumer's memory.
	replayChunkBytes = 512 << 10
	// replayWorkers read the event log for consumers behind the ring, so
	// disk reads never run on an event loop.
	replayWorkers = 4
	// replayQueue bounds consumers waiting for a replay step; when full, a
	// consumer retries on the next tick.
	replayQueue = 4096
	// pumpInterval is how often every loop re-pumps its consumers, to
	// resume those whose socket buffer has drained (gnet has no writable
	// callback).
	pumpInterval = 20 * time.Millisecond
	// pumpGap is the least time between two pumps of a loop that serves at
	// least pacedConsumers consumers. Each pump costs a writev per
	// consumer, and on a busy relay the sequencer's batches come faster
	// than that (most hold one or two events at 2,000 ev/s), so merging
	// the batches of 2 ms into one write per consumer cuts the syscalls
	// of fan-out several times for at most 2 ms of latency. Loops with
	// fewer consumers pump on every batch.
	pumpGap        = 2 * time.Millisecond
	pacedConsumers = 32
)

// consumer is one subscribeRepos connection. Fields without atomics are
// owned by the conn's loop goroutine.
type consumer struct {
	id        uint64
	conn      *loop.Conn
	group     *loopGroup
	remote    string
	userAgent string
	since     time.Time
	cursor    int64 // the cursor it asked for (-1: none)

	pos       atomic.Int64 // last seq sent (or skipped)
	sent      atomic.Int64 // frames sent
	slot      atomic.Bool  // holds one of the broadcaster's consumer slots
	queued    atomic.Int64 // bytes queued on its socket at the last write
	live      bool         // caught up with the ring once: lag limit applies
	replaying bool         // a replay step is in flight
	closed    bool
}

// loopGroup is the set of consumers owned by one event loop. pump runs on
// that loop; scheduled collapses concurrent wake-ups into one Execute.
type loopGroup struct {
	el        gnet.EventLoop
	b         *Broadcaster
	consumers map[*consumer]struct{}
	scheduled atomic.Bool
	// size mirrors len(consumers) for schedule, which runs off the loop.
	size atomic.Int32
	// lastPump is when the last pump started (monotonic ns since start);
	// paced holds the pump back until pumpGap after it.
	lastPump atomic.Int64
	paced    *time.Timer
	run      gnet.RunnableFunc
	pumps    atomic.Int64 // pumps run, for tests
	// behind: after the last pump some consumer still lagged (its socket
	// was full or it waits for a replay step), so the ticker pumps again.
	behind atomic.Bool
	// iov is the loop's scratch list of frames for one writev, reused so a
	// pump does not allocate.
	iov [][]byte
}

// replaySource is what the broadcaster reads of the event log: durable
// records after a cursor, and where retention starts.
type replaySource interface {
	ReadAfter(cursor int64, maxBytes int, fn func(r eventlog.Record) error) (int64, error)
	OldestSeq() int64
}

// Broadcaster delivers published frames to consumers: one Execute per loop
// per batch; each consumer reads the ring from its own position, or the
// event log through the replay workers while it is behind the ring.
type Broadcaster struct {
	engine   *loop.Engine
	ring     *Ring
	log      replaySource
	metrics  *Metrics
	logger   *slog.Logger
	maxLag   int64
	outCap   int
	shutdown atomic.Bool

	mu        sync.Mutex
	groups    map[gnet.EventLoop]*loopGroup
	groupList atomic.Pointer[[]*loopGroup] // the groups' values, for Notify
	all       map[uint64]*consumer
	nextID    uint64
	slots     int // consumer slots taken: upgrades in progress and connected

	replayCh chan *consumer
	stop     chan struct{}
	wg       sync.WaitGroup
}

// NewBroadcaster starts the replay workers and the pump ticker.
func NewBroadcaster(engine *loop.Engine, ring *Ring, log replaySource, m *Metrics, maxLag int64, outCap int, logger *slog.Logger) *Broadcaster {
	b := &Broadcaster{
		engine: engine, ring: ring, log: log, metrics: m, logger: logger,
		maxLag: maxLag, outCap: outCap,
		groups: map[gnet.EventLoop]*loopGroup{}, all: map[uint64]*consumer{},
		replayCh: make(chan *consumer, replayQueue), stop: make(chan struct{}),
	}
	ring.SetRetain(b.ringNeed)
	m.Gauge("relay_consumers", func() float64 { return float64(b.Count()) })
	b.registerLagGauges(m) // dashboard_source.go
	for range replayWorkers {
		b.wg.Add(1)
		go b.replayWorker()
	}
	b.wg.Add(1)
	go b.ticker()
	return b
}

// ringNeed is the lowest seq a consumer reading from the ring still needs:
// one past the position of the furthest-behind consumer that is not behind
// the ring (those read the event log). The ring evicts what is older.
func (b *Broadcaster) ringNeed() int64 {
	oldest := b.ring.Oldest()
	need := b.ring.Head() + 1
	b.mu.Lock()
	for _, c := range b.all {
		if p := c.pos.Load() + 1; p >= oldest && p < need {
			need = p
		}
	}
	b.mu.Unlock()
	return need
}

// Count is the number of connected consumers.
func (b *Broadcaster) Count() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.all)
}

// Notify wakes every loop that has consumers (called after each batch).
func (b *Broadcaster) Notify() {
	for _, g := range b.loopGroups() {
		g.schedule()
	}
}

// loopGroups is the current list of loop groups. Groups are only ever
// added (one per loop), so the list is swapped on add and read without a
// lock or an allocation on every batch.
func (b *Broadcaster) loopGroups() []*loopGroup {
	if l := b.groupList.Load(); l != nil {
		return *l
	}
	return nil
}

// notifyBehind wakes only the loops with a consumer left behind: an idle
// relay does not touch its consumers.
func (b *Broadcaster) notifyBehind() {
	for _, g := range b.loopGroups() {
		if g.behind.Load() {
			g.schedule()
		}
	}
}

// newLoopGroup makes the group of el; its pump is bound once, so waking
// it does not allocate.
func newLoopGroup(b *Broadcaster, el gnet.EventLoop) *loopGroup {
	g := &loopGroup{el: el, b: b, consumers: map[*consumer]struct{}{}}
	g.run = func(context.Context) error {
		g.pump()
		return nil
	}
	g.paced = time.AfterFunc(time.Hour, g.execute)
	g.paced.Stop()
	return g
}

// schedule has the loop pump its consumers: at once, or pumpGap after the
// last pump when the loop serves pacedConsumers or more and pumped less
// than pumpGap ago. Wake-ups while one is pending collapse into it.
func (g *loopGroup) schedule() {
	if !g.scheduled.CompareAndSwap(false, true) {
		return
	}
	if g.size.Load() >= pacedConsumers {
		if wait := pumpGap - time.Duration(monoNow()-g.lastPump.Load()); wait > 0 {
			g.paced.Reset(wait)
			return
		}
	}
	g.execute()
}

func (g *loopGroup) execute() {
	if err := g.el.Execute(context.Background(), g.run); err != nil {
		g.scheduled.Store(false)
	}
}

// pump runs on the loop: every consumer gets what it can take.
func (g *loopGroup) pump() {
	g.lastPump.Store(monoNow())
	g.pumps.Add(1)
	g.scheduled.Store(false)
	behind := false
	head := g.b.ring.Head()
	for c := range g.consumers {
		g.b.fill(c)
		if !c.closed && c.pos.Load() < head {
			behind = true
		}
	}
	g.behind.Store(behind)
}

// monoStart anchors monoNow.
var monoStart = time.Now()

// monoNow is monotonic nanoseconds since the process started.
func monoNow() int64 { return int64(time.Since(monoStart)) }

func (b *Broadcaster) ticker() {
	defer b.wg.Done()
	t := time.NewTicker(pumpInterval)
	defer t.Stop()
	for {
		select {
		case <-b.stop:
			return
		case <-t.C:
			b.notifyBehind()
		}
	}
}

// Close stops the workers. Consumers are closed by the engine's Stop.
func (b *Broadcaster) Close() {
	if b.shutdown.Swap(true) {
		return
	}
	close(b.stop)
	b.wg.Wait()
	for _, g := range b.loopGroups() {
		g.paced.Stop()
	}
}

// Subscribe upgrades an HTTP request to a consumer connection. cursor < 0
// means live only. The cursor was validated by the caller.
//
// max > 0 bounds the consumers: a slot is taken before the upgrade, under
// the same lock as the check, so concurrent upgrades cannot exceed it;
// past it Subscribe returns ErrTooManyConsumers without answering.
func (b *Broadcaster) Subscribe(w http.ResponseWriter, r *http.Request, cursor int64, max int) error {
	b.mu.Lock()
	if max > 0 && b.slots >= max {
		b.mu.Unlock()
		return ErrTooManyConsumers
	}
	b.slots++
	b.nextID++
	c := &consumer{
		id: b.nextID, remote: r.RemoteAddr, userAgent: r.UserAgent(),
		since: time.Now(), cursor: cursor,
	}
	c.slot.Store(true)
	b.mu.Unlock()
	_, err := b.engine.Upgrade(w, r, b, c)
	if err != nil {
		b.release(c)
	}
	return err
}

// ErrTooManyConsumers: every consumer slot is taken.
var ErrTooManyConsumers = errors.New("relay: too many consumers")

// release gives back c's slot, once.
func (b *Broadcaster) release(c *consumer) {
	if c.slot.CompareAndSwap(true, false) {
		b.mu.Lock()
		b.slots--
		b.mu.Unlock()
	}
}

// OnOpen registers the consumer with its loop and decides where it starts.
func (b *Broadcaster) OnOpen(conn *loop.Conn) {
	c := conn.Context().(*consumer)
	c.conn = conn
	b.mu.Lock()
	g, ok := b.groups[conn.EventLoop()]
	if !ok {
		g = newLoopGroup(b, conn.EventLoop())
		b.groups[conn.EventLoop()] = g
		list := append(slices.Clone(b.loopGroups()), g)
		b.groupList.Store(&list)
	}
	b.all[c.id] = c
	b.mu.Unlock()
	g.consumers[c] = struct{}{}
	g.size.Add(1)
	c.group = g
	b.metrics.consumersConnected.Inc()

	head := b.ring.Head()
	switch {
	case c.cursor < 0:
		c.pos.Store(head)
	case c.cursor > head:
		b.kick(c, "future_cursor", wsframe.AppendErrorPayload(nil, "FutureCursor", "cursor is ahead of the relay's latest seq"))
		return
	default:
		oldest := b.log.OldestSeq()
		if oldest == 0 { // empty log: nothing retained
			oldest = head + 1
		}
		if c.cursor < oldest-1 {
			info := wsframe.AppendInfoPayload(nil, "OutdatedCursor", "cursor is older than the oldest retained event; streaming from the oldest")
			_ = conn.Writev([][]byte{wsframe.Compile(info)})
			c.pos.Store(oldest - 1)
		} else {
			c.pos.Store(c.cursor)
		}
	}
	b.pump(c)
}

// OnMessage ignores data from consumers: they have nothing to send.
func (b *Broadcaster) OnMessage(conn *loop.Conn, op ws.OpCode, payload []byte) error {
	b.metrics.messagesIgnored.Inc()
	return nil
}

// OnClose forgets the consumer.
func (b *Broadcaster) OnClose(conn *loop.Conn, err error) {
	c, ok := conn.Context().(*consumer)
	if !ok {
		return
	}
	c.closed = true
	if c.group != nil {
		delete(c.group.consumers, c)
		c.group.size.Add(-1)
	}
	b.mu.Lock()
	delete(b.all, c.id)
	b.mu.Unlock()
	b.release(c)
	if err != nil {
		b.logger.Debug("consumer closed", "remote", c.remote, "err", err)
	}
}

// kick sends an error frame and closes the consumer after it is flushed.
func (b *Broadcaster) kick(c *consumer, reason string, payload []byte) {
	b.metrics.ConsumerClosed(reason).Inc()
	_ = c.conn.Writev([][]byte{wsframe.Compile(payload)})
	c.conn.CloseWith(ws.StatusPolicyViolation, reason)
	c.closed = true
}

// pump writes what c can take and, if c is still behind, has the ticker
// come back to its loop. It runs on c's loop.
func (b *Broadcaster) pump(c *consumer) {
	b.fill(c)
	if !c.closed && c.group != nil && c.pos.Load() < b.ring.Head() {
		c.group.behind.Store(true)
	}
}

// fill writes what c can take from the ring, or starts a replay step when
// c is behind the ring.
func (b *Broadcaster) fill(c *consumer) {
	if c.closed || c.replaying {
		return
	}
	head := b.ring.Head()
	pos := c.pos.Load()
	if pos >= head {
		c.live = true
		return
	}
	if c.live && head-pos > b.maxLag {
		b.kick(c, "too_slow", wsframe.AppendErrorPayload(nil, "ConsumerTooSlow", "consumer fell too far behind the stream"))
		return
	}
	buffered := c.conn.Buffered()
	c.queued.Store(int64(buffered))
	if buffered >= b.outCap {
		return
	}
	iov := c.group.iov[:0]
	n, bytes := 0, 0
	for pos < head && n < maxFramesPerWrite && buffered+bytes < b.outCap {
		e := b.ring.Get(pos + 1)
		if e == nil {
			break // behind the ring: read the log
		}
		pos++
		if e.frame == nil {
			continue // taken down
		}
		iov = append(iov, e.frame)
		n++
		bytes += len(e.frame)
	}
	c.group.iov = iov[:0]
	// Position and counts move before the write, so what the consumer can
	// read is never ahead of what the admin API reports.
	c.pos.Store(pos)
	if n > 0 {
		c.sent.Add(int64(n))
		b.metrics.framesDelivered.Add(n)
		b.metrics.bytesDelivered.Add(bytes)
		err := c.conn.Writev(iov)
		clear(iov) // drop references to frames the ring may evict
		if err != nil {
			c.conn.Close(err)
			return
		}
	}
	if pos >= head {
		c.live = true
		return
	}
	if pos+1 < b.ring.Oldest() && buffered+bytes < b.outCap {
		c.replaying = true
		select {
		case b.replayCh <- c:
		default:
			c.replaying = false // queue full: retried on the next tick
		}
	}
}

// replayWorker reads the event log for consumers behind the ring and hands
// the frames to their loops.
func (b *Broadcaster) replayWorker() {
	defer b.wg.Done()
	for {
		select {
		case <-b.stop:
			return
		case c := <-b.replayCh:
			b.replayStep(c)
		}
	}
}

// replayBufPool holds replay chunk buffers. A chunk is written with one
// Writev; gnet has written or copied it when Writev returns, so the buffer
// goes back to the pool right after.
var replayBufPool = sync.Pool{New: func() any {
	b := make([]byte, 0, replayChunkBytes+64<<10)
	return &b
}}

// maxPooledReplayBuf: a chunk grown past this (one huge record) is not kept.
const maxPooledReplayBuf = 8 << 20

func putReplayBuf(bp *[]byte) {
	if cap(*bp) <= maxPooledReplayBuf {
		*bp = (*bp)[:0]
		replayBufPool.Put(bp)
	}
}

func (b *Broadcaster) replayStep(c *consumer) {
	from := c.pos.Load()
	bp := replayBufPool.Get().(*[]byte)
	buf := (*bp)[:0]
	frames := 0
	last, err := b.log.ReadAfter(from, replayChunkBytes, func(r eventlog.Record) error {
		// Frames are contiguous in buf: one write sends them all.
		buf = wsframe.AppendHeader(buf, ws.OpBinary, len(r.Payload), nil)
		buf = append(buf, r.Payload...)
		frames++
		return nil
	})
	*bp = buf
	if err != nil {
		// Nothing is skipped: the consumer is closed where it stands and
		// resumes by cursor when it reconnects.
		b.logger.Error("replay read failed; closing the consumer", "err", err, "cursor", from, "remote", c.remote)
		b.metrics.replayReadErrors.Inc()
		putReplayBuf(bp)
		_ = c.conn.Execute(func(conn *loop.Conn) {
			c.replaying = false
			if !c.closed {
				b.metrics.ConsumerClosed("replay_error").Inc()
				conn.Close(err)
				c.closed = true
			}
		})
		return
	}
	b.metrics.replayBytes.Add(len(buf))
	execErr := c.conn.Execute(func(conn *loop.Conn) {
		defer putReplayBuf(bp)
		c.replaying = false
		if c.closed {
			return
		}
		if last > c.pos.Load() {
			c.pos.Store(last)
		}
		if frames > 0 {
			c.sent.Add(int64(frames))
			b.metrics.framesDelivered.Add(frames)
			c.group.iov = append(c.group.iov[:0], buf)
			werr := conn.Writev(c.group.iov)
			clear(c.group.iov)
			if werr != nil {
				conn.Close(werr)
				return
			}
		}
		b.pump(c)
	})
	if execErr != nil {
		putReplayBuf(bp) // closed meanwhile
	}
}

// ConsumerInfo describes one consumer for the admin API.
type ConsumerInfo struct {
	ID             uint64    `json:"id"`
	RemoteAddr     string    `json:"remoteAddr"`
	UserAgent      string    `json:"userAgent"`
	Cursor         int64     `json:"cursor"`
	Position       int64     `json:"position"`
	Lag            int64     `json:"lag"`
	EventsSent     int64     `json:"eventsSent"`
	QueuedBytes    int64     `json:"queuedBytes"` // outbound bytes queued when last written to
	ConnectedSince time.Time `json:"connectedSince"`
}

// Consumers lists connected consumers.
func (b *Broadcaster) Consumers() []ConsumerInfo {
	head := b.ring.Head()
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make([]ConsumerInfo, 0, len(b.all))
	for _, c := range b.all {
		pos := c.pos.Load()
		out = append(out, ConsumerInfo{
			ID: c.id, RemoteAddr: c.remote, UserAgent: c.userAgent, Cursor: c.cursor,
			Position: pos, Lag: head - pos, EventsSent: c.sent.Load(), QueuedBytes: c.queued.Load(), ConnectedSince: c.since,
		})
	}
	return out
}
