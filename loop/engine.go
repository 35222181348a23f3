package loop

import (
	"context"
	"log/slog"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gobwas/ws"
	"github.com/panjf2000/gnet/v2"

	"github.com/relay/relay/wsframe"
)

// Defaults of Options.
const (
	// DefaultPingInterval: a connection idle this long is pinged, and closed
	// with ErrDeadPeer after twice this long with nothing received.
	DefaultPingInterval = 30 * time.Second
	// DefaultMaxInboundBuffered bounds the bytes kept unconsumed for one
	// connection (paused or mid-frame). It must exceed the largest frame.
	DefaultMaxInboundBuffered = 16 << 20
	// DefaultMaxPausedBuffered bounds the bytes held unconsumed by all
	// paused connections of an engine together. A paused connection keeps
	// receiving (gnet has no way to stop reading one socket), so without
	// it every paused connection could fill its own MaxInboundBuffered.
	DefaultMaxPausedBuffered = 64 << 20
	// DefaultMaxOutboundBuffered is the hard cap on bytes queued for one
	// connection. The relay applies its own, smaller cap first (and tells a
	// slow consumer why); this one only keeps gnet's unbounded buffer bounded.
	DefaultMaxOutboundBuffered = 64 << 20
	// DefaultMaxConsumerMessage bounds a data message from a consumer
	// (server role): consumers have nothing to send but small control data.
	DefaultMaxConsumerMessage = 64 << 10
	// DefaultMaxUpstreamMessage bounds a data message from an upstream host
	// (client role): the atproto event-stream limit.
	DefaultMaxUpstreamMessage = wsframe.MaxEventFrameSize
)

// Internal timing constants.
const (
	// sweepsPerInterval is how many liveness sweeps run per ping interval;
	// it sets the precision of ping and dead-peer timing.
	sweepsPerInterval = 4
	// minSweepPeriod keeps very small ping intervals (tests) from turning
	// the sweep into a busy loop.
	minSweepPeriod = 5 * time.Millisecond
	// closeGrace is how long a connection that sent a close frame waits for
	// the peer's close before it is closed anyway.
	closeGrace = 5 * time.Second
	// writeScratchKeep bounds the per-loop scratch buffer kept between
	// control-frame writes; larger buffers are dropped after use.
	writeScratchKeep = 64 << 10
)

// Options configures an Engine. Zero values mean the defaults.
type Options struct {
	// Loops is the number of event loops; default GOMAXPROCS.
	Loops int
	// Logger receives the engine's and gnet's messages; default slog.Default.
	Logger *slog.Logger
	// PingInterval: ping a connection idle this long; close it (ErrDeadPeer)
	// after two intervals with nothing received. Default 30 s.
	PingInterval time.Duration
	// MaxInboundBuffered: bytes kept unconsumed for one connection (while
	// paused or mid-frame) before it is closed with ErrBackpressure.
	// Default 16 MiB.
	MaxInboundBuffered int
	// MaxPausedBuffered: bytes kept unconsumed by all paused connections
	// together. A paused connection whose new bytes take the total past it
	// is closed with ErrBackpressure (its peer resumes later from wherever
	// it left off); the connections that hold bytes stay. Default 64 MiB.
	MaxPausedBuffered int64
	// MaxOutboundBuffered: bytes queued for one connection past which a write
	// fails and the connection is closed with ErrBackpressure. Default 64 MiB.
	MaxOutboundBuffered int
	// MaxConsumerMessage bounds data messages read in the server role.
	// Default 64 KiB.
	MaxConsumerMessage int64
	// MaxUpstreamMessage bounds data messages read in the client role.
	// Default 5,000,000 bytes.
	MaxUpstreamMessage int64
}

func (o *Options) setDefaults() {
	if o.Loops <= 0 {
		o.Loops = runtime.GOMAXPROCS(0)
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.PingInterval <= 0 {
		o.PingInterval = DefaultPingInterval
	}
	if o.MaxInboundBuffered <= 0 {
		o.MaxInboundBuffered = DefaultMaxInboundBuffered
	}
	if o.MaxPausedBuffered <= 0 {
		o.MaxPausedBuffered = DefaultMaxPausedBuffered
	}
	if o.MaxOutboundBuffered <= 0 {
		o.MaxOutboundBuffered = DefaultMaxOutboundBuffered
	}
	if o.MaxConsumerMessage <= 0 {
		o.MaxConsumerMessage = DefaultMaxConsumerMessage
	}
	if o.MaxUpstreamMessage <= 0 {
		o.MaxUpstreamMessage = DefaultMaxUpstreamMessage
	}
}

// Engine is a set of gnet event loops owning WebSocket connections. It has
// no listener: connections arrive through Upgrade and Dial.
type Engine struct {
	opts  Options
	log   *slog.Logger
	cli   *gnet.Client
	start time.Time
	clock atomic.Int64 // nanoseconds since start, refreshed by the sweeper

	mu     sync.Mutex
	loops  map[gnet.EventLoop]*loopState
	active []gnet.EventLoop // loops that have owned a connection, in order of first use

	// pausedHeld is the bytes paused connections hold unconsumed (each
	// connection's share is Conn.pausedHeld), against MaxPausedBuffered.
	pausedHeld atomic.Int64

	stopping   atomic.Bool
	stopTicker context.CancelFunc
	tickerDone chan struct{}
}

// loopState is the engine's per-loop state, touched only on its loop.
type loopState struct {
	e       *Engine
	el      gnet.EventLoop
	conns   []*Conn // connections owned by the loop, for the liveness sweep
	scratch []byte  // frame-writing buffer, reused on the loop
	sweep   gnet.RunnableFunc
}

// Start starts the event loops and the liveness sweeper.
func Start(opts Options) (*Engine, error) {
	opts.setDefaults()
	e := &Engine{
		opts:       opts,
		log:        opts.Logger.With("component", "loop"),
		start:      time.Now(),
		loops:      make(map[gnet.EventLoop]*loopState),
		tickerDone: make(chan struct{}),
	}
	cli, err := gnet.NewClient(&gnetHandler{e: e},
		gnet.WithNumEventLoop(opts.Loops),
		gnet.WithLogger(gnetLogger{opts.Logger}),
		gnet.WithTCPNoDelay(gnet.TCPNoDelay),
	)
	if err != nil {
		return nil, err
	}
	if err := cli.Start(); err != nil {
		return nil, err
	}
	e.cli = cli
	ctx, cancel := context.WithCancel(context.Background())
	e.stopTicker = cancel
	go e.sweeper(ctx)
	return e, nil
}

// now returns the engine clock: nanoseconds since Start, as of the last
// sweep tick or refresh. Coarse on purpose: reading it costs an atomic load.
func (e *Engine) now() int64 { return e.clock.Load() }

func (e *Engine) refreshClock() int64 {
	t := int64(time.Since(e.start))
	e.clock.Store(t)
	return t
}

// sweeper is the engine's one timer goroutine: it runs the liveness sweep
// on every loop that owns connections.
func (e *Engine) sweeper(ctx context.Context) {
	defer close(e.tickerDone)
	period := max(e.opts.PingInterval/sweepsPerInterval, minSweepPeriod)
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		e.refreshClock()
		for _, ls := range e.loopStates() {
			if err := ls.el.Execute(context.Background(), ls.sweep); err != nil {
				return // engine shut down
			}
		}
	}
}

func (e *Engine) loopStates() []*loopState {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make([]*loopState, 0, len(e.active))
	for _, el := range e.active {
		out = append(out, e.loops[el])
	}
	return out
}

// loopState returns the state of el, creating it on first use.
func (e *Engine) loopState(el gnet.EventLoop) *loopState {
	e.mu.Lock()
	defer e.mu.Unlock()
	ls := e.loops[el]
	if ls == nil {
		ls = &loopState{e: e, el: el}
		ls.sweep = func(context.Context) error {
			ls.sweepConns(e.refreshClock())
			return nil
		}
		e.loops[el] = ls
		e.active = append(e.active, el)
	}
	return ls
}

// Stop closes every connection, sending a close frame 1001 (going away)
// best-effort, reports ErrClosed to their OnClose, and stops the loops. It
// returns ctx's error if that ends first (the loops keep stopping).
func (e *Engine) Stop(ctx context.Context) error {
	if e.stopping.Swap(true) {
		return ErrClosed
	}
	e.stopTicker()
	<-e.tickerDone

	var wg sync.WaitGroup
	for _, ls := range e.loopStates() {
		wg.Add(1)
		err := ls.el.Execute(ctx, gnet.RunnableFunc(func(context.Context) error {
			defer wg.Done()
			for len(ls.conns) > 0 {
				c := ls.conns[len(ls.conns)-1]
				if c.state == stateOpen {
					c.writeClose(ws.StatusGoingAway, "relay shutting down")
				}
				c.Close(ErrClosed)
				if len(ls.conns) > 0 && ls.conns[len(ls.conns)-1] == c {
					ls.remove(c) // a close that failed must not stall the loop
				}
			}
			return nil
		}))
		if err != nil {
			wg.Done()
		}
	}
	done := make(chan error, 1)
	go func() {
		wg.Wait()
		done <- e.cli.Stop()
	}()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// sweepConns pings idle connections, closes dead ones and finishes closing
// handshakes that the peer did not answer. It runs on the loop.
func (ls *loopState) sweepConns(now int64) {
	interval := int64(ls.e.opts.PingInterval)
	for i := len(ls.conns) - 1; i >= 0; i-- {
		if i >= len(ls.conns) {
			continue // closes below may remove more than one
		}
		c := ls.conns[i]
		switch idle := now - c.lastRecv; {
		case c.state == stateClosing && now >= c.closeBy:
			c.closeNow(nil)
		case idle >= 2*interval:
			c.Close(ErrDeadPeer)
		case idle >= interval && now-c.lastPing >= interval:
			c.lastPing = now
			_ = c.writeControl(ws.OpPing, nil)
		}
	}
}

func (ls *loopState) add(c *Conn) {
	c.idx = len(ls.conns)
	ls.conns = append(ls.conns, c)
}

func (ls *loopState) remove(c *Conn) {
	i := c.idx
	if i < 0 || i >= len(ls.conns) || ls.conns[i] != c {
		return
	}
	last := len(ls.conns) - 1
	ls.conns[i] = ls.conns[last]
	ls.conns[i].idx = i
	ls.conns[last] = nil
	ls.conns = ls.conns[:last]
	c.idx = -1
}

// gnetHandler receives gnet's events for every connection and forwards them
// to the connection's Conn (carried as gnet's context).
type gnetHandler struct {
	gnet.BuiltinEventEngine
	e *Engine
}

func (g *gnetHandler) OnOpen(gc gnet.Conn) ([]byte, gnet.Action) {
	c, ok := gc.Context().(*Conn)
	if !ok {
		return nil, gnet.Close
	}
	return nil, c.onOpen(gc, g.e.loopState(gc.EventLoop()))
}

func (g *gnetHandler) OnTraffic(gc gnet.Conn) gnet.Action {
	c, ok := gc.Context().(*Conn)
	if !ok {
		return gnet.Close
	}
	return c.onTraffic()
}

func (g *gnetHandler) OnClose(gc gnet.Conn, err error) gnet.Action {
	if c, ok := gc.Context().(*Conn); ok {
		c.onClose(err)
	}
	return gnet.None
}

// PausedBuffered reports the bytes paused connections hold unconsumed
// (bounded by Options.MaxPausedBuffered).
func (e *Engine) PausedBuffered() int64 { return e.pausedHeld.Load() }
