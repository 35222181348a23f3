package relay

import (
	"github.com/bluesky-social/indigo/atproto/syntax"

	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"time"

	comatproto "github.com/bluesky-social/indigo/api/atproto"
	"github.com/bluesky-social/indigo/events"
	"github.com/gobwas/ws"

	"github.com/relay/relay/loop"
	"github.com/relay/relay/persist/meta"
	"github.com/relay/relay/wsframe"
)

// OnMessage is the loop.Handler hook for upstream messages. It runs on the
// host's event loop: it parses the frame, drops duplicates and junk, and
// offers the event to its validation worker. When the worker (or the
// host's in-flight budget) is full it returns loop.ErrPaused: the message
// stays in the socket buffer and is offered again after a resume.
//
// Events wait (paused) until the dialer has checked the handshake (relay
// loop guard, blocked status). Error frames do not: a host that answers
// FutureCursor sends it with its handshake and hangs up at once, and a
// paused frame would be lost with the connection.
func (m *HostManager) OnMessage(c *loop.Conn, op ws.OpCode, payload []byte) error {
	h := c.Context().(*hostConn)
	if it := h.held; it != nil {
		// The loop redelivers the message a pause left unconsumed: offer
		// the event decoded then, without decoding or counting it again.
		h.held = nil
		return m.dispatch(h, it, len(payload))
	}
	mt := m.metrics
	if op != ws.OpBinary {
		mt.Dropped("text_frame").Inc()
		h.countDrop("text_frame")
		return nil
	}
	hop, t, body, err := wsframe.ParseEventHeader(payload)
	if err != nil {
		mt.Dropped("bad_frame").Inc()
		h.countDrop("bad_frame")
		return nil
	}
	if hop == wsframe.OpMessage && t != "#info" && !h.ready.Load() {
		m.markPaused(h, nil)
		return loop.ErrPaused
	}
	if hop == wsframe.OpError {
		var ef events.ErrorFrame
		if err := ef.UnmarshalCBOR(bytes.NewReader(body)); err != nil {
			mt.Dropped("bad_frame").Inc()
			h.countDrop("bad_frame")
			return nil
		}
		if ef.Error == "FutureCursor" {
			return fmt.Errorf("%w: %s", ErrUpstreamFuture, ef.Message)
		}
		return fmt.Errorf("%w: %s: %s", ErrUpstreamError, ef.Error, ef.Message)
	}
	if hop != wsframe.OpMessage {
		mt.Dropped("bad_frame").Inc()
		h.countDrop("bad_frame")
		return nil
	}
	it := &ingestItem{host: h, recv: time.Now()}
	r := bytes.NewReader(body)
	switch t {
	case "#commit":
		var ev comatproto.SyncSubscribeRepos_Commit
		if err = ev.UnmarshalCBOR(r); err == nil {
			it.commit, it.did, it.useq = &ev, ev.Repo, ev.Seq
		}
	case "#sync":
		var ev comatproto.SyncSubscribeRepos_Sync
		if err = ev.UnmarshalCBOR(r); err == nil {
			it.sync, it.did, it.useq = &ev, ev.Did, ev.Seq
		}
	case "#identity":
		var ev comatproto.SyncSubscribeRepos_Identity
		if err = ev.UnmarshalCBOR(r); err == nil {
			it.identity, it.did, it.useq = &ev, ev.Did, ev.Seq
		}
	case "#account":
		var ev comatproto.SyncSubscribeRepos_Account
		if err = ev.UnmarshalCBOR(r); err == nil {
			it.account, it.did, it.useq = &ev, ev.Did, ev.Seq
		}
	case "#info":
		var ev comatproto.SyncSubscribeRepos_Info
		if ev.UnmarshalCBOR(r) == nil {
			m.logger.Info("host sent #info", "host", h.name, "name", ev.Name)
			if ev.Name == "OutdatedCursor" && h.tracker.lastSeq() > 0 {
				// Do not replay its whole window: resume live, resync.
				return ErrUpstreamOutdated
			}
		}
		return nil
	default:
		mt.Dropped("unknown_type").Inc()
		h.countDrop("unknown_type")
		return nil
	}
	if err != nil || it.did == "" {
		mt.Dropped("bad_cbor").Inc()
		h.countDrop("bad_cbor")
		return nil
	}
	// The DID is parsed once, here, where it enters the relay: everything
	// past this point (the stores' typed DID lookups) can trust it.
	if _, err := syntax.ParseDID(it.did); err != nil {
		mt.Dropped("bad_did").Inc()
		h.countDrop("bad_did")
		return nil
	}
	mt.EventsIn(t).Inc()
	h.lastEvent.Store(it.recv.UnixNano())
	return m.dispatch(h, it, len(payload))
}

// dispatch checks the upstream seq and offers the event to its worker, or
// pauses the host holding the decoded event.
func (m *HostManager) dispatch(h *hostConn, it *ingestItem, size int) error {
	p := m.ing.partitionOf(it.did)
	verdict, prevLast := h.tracker.admit(it.useq, size)
	switch verdict {
	case admitDuplicate:
		m.metrics.Dropped("duplicate_seq").Inc()
		h.countDrop("duplicate_seq")
		return nil
	case admitFull:
		return m.pause(h, it, p)
	case admitDurable:
		// Replayed by the host after a restart, already in the event log.
		m.metrics.Dropped("already_durable").Inc()
		h.countDrop("already_durable")
		return nil
	}
	if prevLast == 0 {
		// The host's first event: store its cursor soon, so a crash
		// cannot make the relay resubscribe live and miss what follows.
		m.checkpointSoon()
	}
	now := time.Now()
	if !h.rate.ready(now) {
		// Over its event rate limits: the event waits (backpressure on
		// this host's socket alone), nothing is dropped.
		h.tracker.undispatch(it.useq, prevLast)
		return m.pauseForRate(h, it, now)
	}
	if !p.offer(it) {
		h.tracker.undispatch(it.useq, prevLast)
		return m.pause(h, it, p)
	}
	h.rate.take(now)
	h.received.Add(1)
	return nil
}

// pauseForRate holds it until the host's rate limits allow it (see pause).
func (m *HostManager) pauseForRate(h *hostConn, it *ingestItem, now time.Time) error {
	if !m.markPausedFor(h, pauseCause{rate: true}) {
		return loop.ErrBackpressure
	}
	h.rate.hold(now)
	h.held = it
	return loop.ErrPaused
}

// pause holds it and leaves its message in the socket buffer until the
// resume sweep sees room for it. At most maxPausedHosts are paused at
// once, and the loop engine bounds the bytes they hold together: past
// either the connection is closed (loop.ErrBackpressure) and resumed later
// from the host's cursor, which loses nothing.
func (m *HostManager) pause(h *hostConn, it *ingestItem, p *partition) error {
	if !m.markPaused(h, p) {
		return loop.ErrBackpressure
	}
	h.held = it
	return loop.ErrPaused
}

func (m *HostManager) connectStaggered(hosts []*hostConn) {
	tick := time.NewTicker(time.Second / startConnectsPerSecond)
	defer tick.Stop()
	for _, h := range hosts {
		select {
		case <-m.stop:
			return
		case <-tick.C:
			m.connect(h)
		}
	}
}

// connect dials h in a short-lived goroutine unless it is already
// connected, dialing, or not allowed to connect.
func (m *HostManager) connect(h *hostConn) {
	if m.closing.Load() {
		return
	}
	if m.sequencerErr() != nil {
		// Nothing can be made durable: do not take events from the host.
		m.retryLater(h, reconnectMax)
		return
	}
	h.mu.Lock()
	if h.dialing || h.connected.Load() || h.rec.Status == meta.HostBlocked || h.rec.Status == meta.HostBanned {
		h.mu.Unlock()
		return
	}
	h.dialing = true
	if h.timer != nil {
		h.timer.Stop()
		h.timer = nil
	}
	h.mu.Unlock()
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		m.dial(h)
	}()
}

func (m *HostManager) dial(h *hostConn) {
	scheme := "wss"
	if h.noSSL {
		scheme = "ws"
	}
	if m.staleCursor(h, time.Time{}) {
		m.onStaleCursor(h) // back from a long absence: live, and resync
	}
	url := scheme + "://" + h.name + "/xrpc/com.atproto.sync.subscribeRepos"
	// A first subscription without a known cursor starts live. Once the
	// host has been subscribed, a reconnection always names a cursor, even
	// 0 (nothing received yet): events the host emitted between the two
	// connections are replayed instead of lost.
	if c := h.tracker.lastSeq(); c > 0 || h.subscribed.Load() {
		url += "?cursor=" + strconv.FormatInt(c, 10)
	}
	ctx, cancel := context.WithTimeout(context.Background(), dialTimeout)
	defer cancel()
	h.ready.Store(false)
	hdr := http.Header{}
	hdr.Set("User-Agent", userAgent)
	res, err := m.engine.Dial(ctx, url, loop.DialOptions{Timeout: dialTimeout, TLSConfig: m.tlsConfig, Header: hdr, NetDial: m.dialer}, m, h)
	if err != nil {
		h.mu.Lock()
		h.dialing = false // on success OnOpen cleared it
		h.mu.Unlock()
		m.dialFailed(h, err)
		return
	}
	if strings.Contains(strings.ToLower(res.ResponseHeader.Get("Server")), relayLoopGuard) {
		_ = res.Conn.Execute(func(c *loop.Conn) { c.Close(ErrHostIsRelay) })
		m.refuseRelay(h)
		return
	}
	// The connection may already be closed (the host sent an error frame
	// and hung up, or an admin blocked it): OnClose then decided the
	// host's status, and it must not be undone here. The check and the
	// change are one step under h.mu, which OnClose also takes.
	h.mu.Lock()
	live := h.conn.Load() == res.Conn
	status := h.rec.Status
	if !live || status == meta.HostBlocked || status == meta.HostBanned {
		h.mu.Unlock()
		if live {
			_ = res.Conn.Execute(func(c *loop.Conn) { c.Close(ErrHostBlocked) })
		}
		return
	}
	h.rec.Failures = 0
	reactivated := status != meta.HostActive && status != meta.HostThrottled
	if reactivated {
		h.rec.Status = meta.HostActive
	}
	h.subscribed.Store(true)
	h.ready.Store(true)
	h.mu.Unlock()
	if reactivated {
		m.writeHost(h)
	}
	res.Conn.Resume()
	m.logger.Info("host connected", "host", h.name, "cursor", h.tracker.lastSeq())
}

func (m *HostManager) dialFailed(h *hostConn, err error) {
	h.noteError(err)
	h.mu.Lock()
	h.rec.Failures++
	failures := h.rec.Failures
	h.mu.Unlock()
	m.metrics.hostDialFailures.Inc()
	if failures >= maxHostFailures {
		// Offline, not forgotten: probed again with a slow backoff, and a
		// requestCrawl from it brings it back at once.
		probe := failures - maxHostFailures + 1
		wait := m.probeBackoff(probe)
		m.logger.Warn("host offline after repeated failures; probing later", "host", h.name, "failures", failures, "err", err, "probe_in", wait.Round(time.Second))
		m.setStatus(h, meta.HostOffline)
		m.retryLater(h, wait)
		return
	}
	m.logger.Info("host dial failed", "host", h.name, "failures", failures, "err", err)
	m.retryLater(h, m.backoff(failures))
}

// setUpstreamTLS makes wss:// dials and https:// describeServer probes
// trust cfg (e.g. a private CA) instead of the system roots. It must be
// called before Relay.Start; tests use it for self-signed PDS hosts.
func (m *HostManager) setUpstreamTLS(cfg *tls.Config) {
	m.tlsConfig = cfg
	if tr, ok := m.client.Transport.(*http.Transport); ok {
		tr.TLSClientConfig = cfg.Clone()
	}
}

// backoff is exponential with jitter in [d/2, d].
func backoff(failures int) time.Duration {
	d := reconnectBase << min(failures, 16)
	if d > reconnectMax || d <= 0 {
		d = reconnectMax
	}
	return d/2 + rand.N(d/2+1)
}

func (m *HostManager) retryLater(h *hostConn, d time.Duration) {
	if m.closing.Load() {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.timer != nil {
		h.timer.Stop()
	}
	h.timer = time.AfterFunc(d, func() { m.connect(h) })
}

// OnOpen is the loop.Handler hook for upstream connections. It ends the
// dial: from here on OnClose schedules any redial, so a redial timer that
// fires while dial finishes its checks is not refused as "dialing".
func (m *HostManager) OnOpen(c *loop.Conn) {
	h := c.Context().(*hostConn)
	h.mu.Lock()
	h.dialing = false
	h.conn.Store(c)
	h.connected.Store(true)
	h.mu.Unlock()
}

// OnClose schedules a reconnect, unless the host must not be redialed.
func (m *HostManager) OnClose(c *loop.Conn, err error) {
	h, ok := c.Context().(*hostConn)
	if !ok {
		return
	}
	h.noteError(err)
	if errors.Is(err, loop.ErrBackpressure) {
		m.metrics.backpressureCloses.Inc()
	}
	h.mu.Lock()
	if !h.conn.CompareAndSwap(c, nil) {
		// A newer connection of this host owns its state.
		h.mu.Unlock()
		return
	}
	h.connected.Store(false)
	h.ready.Store(false)
	h.held = nil // its dispatch was undone; the host resends it
	h.mu.Unlock()
	m.unmarkPaused(h)
	h.mu.Lock()
	status := h.rec.Status
	stay := status == meta.HostBlocked || status == meta.HostBanned || status == meta.HostOffline ||
		errors.Is(err, ErrHostIsRelay) || errors.Is(err, ErrHostBlocked)
	idle := !stay && errors.Is(err, ErrUpstreamFuture)
	if idle {
		h.rec.Status = meta.HostIdle
	}
	h.mu.Unlock()
	if m.closing.Load() || stay {
		return
	}
	if idle {
		// Check the host off the event loop (describeServer, store writes).
		m.wg.Add(1)
		go m.onFutureCursor(h)
		return
	}
	if errors.Is(err, ErrUpstreamOutdated) {
		m.onOutdatedCursor(h)
		return
	}
	m.logger.Info("host disconnected; reconnecting", "host", h.name, "err", err)
	m.retryLater(h, m.backoff(0))
}

// pauseCause is what a paused host waits for: room in a worker, the
// dialer's checks (neither set), or its event rate limits.
type pauseCause struct {
	p    *partition
	rate bool
}

// markPaused records h as paused, waiting for room in p (nil: waiting for
// the dialer's checks). It refuses when maxPausedHosts are already paused.
func (m *HostManager) markPaused(h *hostConn, p *partition) bool {
	return m.markPausedFor(h, pauseCause{p: p})
}

func (m *HostManager) markPausedFor(h *hostConn, c pauseCause) bool {
	m.pausedMu.Lock()
	defer m.pausedMu.Unlock()
	if _, ok := m.paused[h]; !ok && len(m.paused) >= maxPausedHosts {
		return false
	}
	m.paused[h] = c
	h.paused.Store(true)
	return true
}

func (m *HostManager) unmarkPaused(h *hostConn) {
	m.pausedMu.Lock()
	delete(m.paused, h)
	m.pausedMu.Unlock()
	h.paused.Store(false)
	if h.rate != nil {
		m.throttled(h, h.rate.release(time.Now()))
	}
}

// resumeLoop resumes paused hosts once what stopped them has room: the
// worker that refused the held event has drained to half, and the host's
// in-flight budget is not full. Resuming earlier would make the loop
// re-read a large buffered backlog only to pause again.
func (m *HostManager) resumeLoop() {
	defer m.wg.Done()
	t := time.NewTicker(resumeInterval)
	defer t.Stop()
	var ready []*hostConn
	for {
		select {
		case <-m.stop:
			return
		case <-t.C:
			ready = ready[:0]
			now := time.Now()
			m.pausedMu.Lock()
			for h, c := range m.paused {
				if h.tracker.full() {
					continue
				}
				if c.rate {
					if !h.rate.ready(now) {
						continue
					}
					m.throttled(h, h.rate.release(now))
				} else if c.p == nil && !h.ready.Load() {
					continue
				}
				if c.p != nil && len(c.p.in) > partitionQueue/2 {
					continue
				}
				delete(m.paused, h)
				h.paused.Store(false)
				ready = append(ready, h)
			}
			m.pausedMu.Unlock()
			for _, h := range ready {
				if c := h.conn.Load(); c != nil {
					c.Resume()
				}
			}
		}
	}
}

// disconnect closes h's connection with cause (which tells OnClose not to
// redial) and waits up to disconnectWait for it to be closed.
func (m *HostManager) disconnect(h *hostConn, cause error) {
	h.mu.Lock()
	if h.timer != nil {
		h.timer.Stop()
		h.timer = nil
	}
	h.mu.Unlock()
	if c := h.conn.Load(); c != nil {
		_ = c.Execute(func(c *loop.Conn) { c.Close(cause) })
	}
	deadline := time.Now().Add(disconnectWait)
	for h.connected.Load() && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
}
