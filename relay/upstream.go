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
	if hop == 1 && t != "#info" && !h.ready.Load() {
		h.paused.Store(true)
		return loop.ErrPaused
	}
	if hop == -1 {
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
	if hop != 1 {
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
	prevLast := h.tracker.lastSeq()
	if it.useq <= prevLast {
		mt.Dropped("duplicate_seq").Inc()
		h.countDrop("duplicate_seq")
		return nil
	}
	if h.tracker.full() {
		h.paused.Store(true)
		return loop.ErrPaused
	}
	h.tracker.dispatch(it.useq, len(payload))
	if !m.ing.Offer(it) {
		h.tracker.undispatch(it.useq, prevLast)
		h.paused.Store(true)
		return loop.ErrPaused
	}
	h.received.Add(1)
	return nil
}
