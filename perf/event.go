// Package perf is a synthetic AT Protocol network: a fake PLC directory, fake
// PDS hosts that serve com.atproto.sync.subscribeRepos, accounts with real
// keys and real signed sync-1.1 commits, load profiles that emit pregenerated
// events at a target rate, and a fleet of firehose consumers that check
// ordering and measure emit-to-receive latency.
//
// Nothing is faked at the protocol level: commits are built with indigo's
// MST and signed with atcrypto keys, frames are events.EventHeader plus the
// lexicon body in DAG-CBOR, and DID documents are what plc.directory serves.
// The same implementation serves the end-to-end tests, the perf harness and
// the demo, so what the tests prove is what the harness measures.
package perf

import (
	"bytes"
	"errors"

	comatproto "github.com/bluesky-social/indigo/api/atproto"
	"github.com/bluesky-social/indigo/events"
	lexutil "github.com/bluesky-social/indigo/lex/util"
)

// Event message types, as they appear in the frame header's "t" field.
const (
	TypeCommit   = "#commit"
	TypeSync     = "#sync"
	TypeIdentity = "#identity"
	TypeAccount  = "#account"
	TypeInfo     = "#info"
)

var (
	// ErrEmptyEvent is returned when an Event has no member set.
	ErrEmptyEvent = errors.New("perf: event has no member set")
	// ErrAmbiguousEvent is returned when an Event has more than one member set.
	ErrAmbiguousEvent = errors.New("perf: event has more than one member set")
)

// Event is one upstream firehose message. Exactly one member is set.
type Event struct {
	Commit   *comatproto.SyncSubscribeRepos_Commit
	Sync     *comatproto.SyncSubscribeRepos_Sync
	Identity *comatproto.SyncSubscribeRepos_Identity
	Account  *comatproto.SyncSubscribeRepos_Account
}

// Type returns the frame header type of the event ("#commit", ...), or ""
// if the event is not exactly one member.
func (ev Event) Type() string {
	t, err := ev.check()
	if err != nil {
		return ""
	}
	return t
}

// DID returns the account the event is about.
func (ev Event) DID() string {
	switch {
	case ev.Commit != nil:
		return ev.Commit.Repo
	case ev.Sync != nil:
		return ev.Sync.Did
	case ev.Identity != nil:
		return ev.Identity.Did
	case ev.Account != nil:
		return ev.Account.Did
	}
	return ""
}

// Rev returns the repo revision of a #commit or #sync, "" otherwise.
func (ev Event) Rev() string {
	switch {
	case ev.Commit != nil:
		return ev.Commit.Rev
	case ev.Sync != nil:
		return ev.Sync.Rev
	}
	return ""
}

func (ev Event) check() (string, error) {
	n := 0
	t := ""
	if ev.Commit != nil {
		n++
		t = TypeCommit
	}
	if ev.Sync != nil {
		n++
		t = TypeSync
	}
	if ev.Identity != nil {
		n++
		t = TypeIdentity
	}
	if ev.Account != nil {
		n++
		t = TypeAccount
	}
	switch n {
	case 0:
		return "", ErrEmptyEvent
	case 1:
		return t, nil
	}
	return "", ErrAmbiguousEvent
}

// EncodeEvent encodes ev as one event-stream frame payload (header CBOR
// followed by body CBOR) with the body's seq set to seq. ev itself is not
// modified. A nil Blobs or Ops list is encoded as an empty array, as the
// lexicon requires both fields.
func EncodeEvent(ev Event, seq int64) ([]byte, error) {
	var buf bytes.Buffer
	if err := AppendEvent(&buf, ev, seq); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// AppendEvent is EncodeEvent writing into buf, for callers that reuse buffers.
func AppendEvent(buf *bytes.Buffer, ev Event, seq int64) error {
	t, err := ev.check()
	if err != nil {
		return err
	}
	hdr := events.EventHeader{Op: events.EvtKindMessage, MsgType: t}
	if err := hdr.MarshalCBOR(buf); err != nil {
		return err
	}
	switch {
	case ev.Commit != nil:
		c := *ev.Commit
		c.Seq = seq
		if c.Blobs == nil {
			c.Blobs = []lexutil.LexLink{}
		}
		if c.Ops == nil {
			c.Ops = []*comatproto.SyncSubscribeRepos_RepoOp{}
		}
		return c.MarshalCBOR(buf)
	case ev.Sync != nil:
		s := *ev.Sync
		s.Seq = seq
		return s.MarshalCBOR(buf)
	case ev.Identity != nil:
		i := *ev.Identity
		i.Seq = seq
		return i.MarshalCBOR(buf)
	default:
		a := *ev.Account
		a.Seq = seq
		return a.MarshalCBOR(buf)
	}
}

// EncodeErrorFrame encodes an error frame ({op:-1} header, {error, message}
// body), as a relay sends for FutureCursor or ConsumerTooSlow. The PDS uses it
// for an outdated cursor; tests use it to fake a misbehaving upstream.
func EncodeErrorFrame(name, message string) ([]byte, error) {
	var buf bytes.Buffer
	hdr := events.EventHeader{Op: events.EvtKindErrorFrame}
	if err := hdr.MarshalCBOR(&buf); err != nil {
		return nil, err
	}
	body := events.ErrorFrame{Error: name, Message: message}
	if err := body.MarshalCBOR(&buf); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// encodeInfo encodes an #info frame ({op:1, t:"#info"}, {name, message}).
func encodeInfo(name, message string) ([]byte, error) {
	var buf bytes.Buffer
	hdr := events.EventHeader{Op: events.EvtKindMessage, MsgType: TypeInfo}
	if err := hdr.MarshalCBOR(&buf); err != nil {
		return nil, err
	}
	msg := message
	body := comatproto.SyncSubscribeRepos_Info{Name: name, Message: &msg}
	if err := body.MarshalCBOR(&buf); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// DecodeEvent decodes a message frame payload produced by EncodeEvent (or
// by any relay) with indigo's generated decoders. It returns the upstream seq
// of the body. Error and #info frames return an error; consumers use the
// cheaper ScanFrame.
func DecodeEvent(payload []byte) (Event, int64, error) {
	r := bytes.NewReader(payload)
	var hdr events.EventHeader
	if err := hdr.UnmarshalCBOR(r); err != nil {
		return Event{}, 0, err
	}
	if hdr.Op != events.EvtKindMessage {
		return Event{}, 0, ErrNotMessage
	}
	var ev Event
	var seq int64
	switch hdr.MsgType {
	case TypeCommit:
		ev.Commit = new(comatproto.SyncSubscribeRepos_Commit)
		if err := ev.Commit.UnmarshalCBOR(r); err != nil {
			return Event{}, 0, err
		}
		seq = ev.Commit.Seq
	case TypeSync:
		ev.Sync = new(comatproto.SyncSubscribeRepos_Sync)
		if err := ev.Sync.UnmarshalCBOR(r); err != nil {
			return Event{}, 0, err
		}
		seq = ev.Sync.Seq
	case TypeIdentity:
		ev.Identity = new(comatproto.SyncSubscribeRepos_Identity)
		if err := ev.Identity.UnmarshalCBOR(r); err != nil {
			return Event{}, 0, err
		}
		seq = ev.Identity.Seq
	case TypeAccount:
		ev.Account = new(comatproto.SyncSubscribeRepos_Account)
		if err := ev.Account.UnmarshalCBOR(r); err != nil {
			return Event{}, 0, err
		}
		seq = ev.Account.Seq
	default:
		return Event{}, 0, ErrNotMessage
	}
	return ev, seq, nil
}

// ErrNotMessage is returned by DecodeEvent for error frames, #info frames
// and unknown message types.
var ErrNotMessage = errors.New("perf: frame is not a #commit, #sync, #identity or #account message")
