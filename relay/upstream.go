package relay

import (
	"bytes"
	"fmt"
	"time"

	comatproto "github.com/bluesky-social/indigo/api/atproto"
	"github.com/bluesky-social/indigo/events"
	"github.com/gobwas/ws"

	"github.com/relay/relay/loop"
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
	mt := m.r.metrics
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
		m.r.metrics.Dropped("duplicate_seq").Inc()
		h.countDrop("duplicate_seq")
		return nil
	case admitFull:
		return m.pause(h, it, p)
	case admitDurable:
		// Replayed by the host after a restart, already in the event log.
		m.r.metrics.Dropped("already_durable").Inc()
		h.countDrop("already_durable")
		return nil
	}
	if prevLast == 0 {
		// The host's first event: store its cursor soon, so a crash
		// cannot make the relay resubscribe live and miss what follows.
		m.checkpointSoon()
	}
	if !p.offer(it) {
		h.tracker.undispatch(it.useq, prevLast)
		return m.pause(h, it, p)
	}
	h.received.Add(1)
	return nil
}

// pause holds it and leaves its message in the socket buffer until the
// resume sweep sees room for it. Paused hosts keep up to the loop's inbound
// bound (16 MiB) buffered each, so at most maxPausedHosts are paused at
// once: past that the connection is closed and resumed later from the
// host's cursor, which loses nothing.
func (m *HostManager) pause(h *hostConn, it *ingestItem, p *partition) error {
	if !m.markPaused(h, p) {
		m.r.metrics.backpressureCloses.Inc()
		return loop.ErrBackpressure
	}
	h.held = it
	return loop.ErrPaused
}
