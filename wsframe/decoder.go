package wsframe

import (
	"errors"

	"github.com/gobwas/ws"
)

// MaxEventFrameSize is the atproto limit on one event-stream message (the
// reference relay's read limit). It is the default of Decoder.MaxFrame and
// Decoder.MaxMessage.
const MaxEventFrameSize = 5_000_000

// Causes of ErrProtocol specific to the decoder's state.
var (
	errMaskRequired    = ws.ErrProtocolMaskRequired
	errMaskUnexpected  = ws.ErrProtocolMaskUnexpected
	errContExpected    = ws.ErrProtocolContinuationExpected
	errContUnexpected  = ws.ErrProtocolContinuationUnexpected
	errNothingToUnread = errors.New("wsframe: Unread without a message from the previous Next")
)

// Message is a control frame or a complete data message.
//
// Payload is unmasked. It aliases the bytes passed to Decoder.Next (unmasked
// in place) or, for a reassembled fragmented message, the decoder's fragment
// buffer; either way it is valid only until the next call on the decoder.
type Message struct {
	Op      ws.OpCode
	Payload []byte
}

// Decoder turns a byte stream into control frames and complete data
// messages. It holds no buffer for unfragmented frames: the caller keeps the
// unconsumed bytes (an event loop's input buffer) and passes them again with
// more data appended. Fragments are reassembled into a buffer allocated only
// while a fragmented message is in progress, bounded by MaxMessage, and
// dropped once the message has been delivered.
//
// The zero Decoder is ready to use with both limits at MaxEventFrameSize and
// no masking rule.
type Decoder struct {
	// MaxFrame bounds the payload of one frame; larger => ErrFrameTooLarge.
	// Zero means MaxEventFrameSize.
	MaxFrame int64
	// MaxMessage bounds a data message, the sum of its fragments; larger =>
	// ErrMessageTooLarge. Zero means MaxEventFrameSize.
	MaxMessage int64
	// RequireMasked is for the server side: client frames must be masked
	// (RFC 6455 5.1); an unmasked frame is an ErrProtocol.
	RequireMasked bool
	// RejectMasked is for the client side: server frames must not be
	// masked; a masked frame is an ErrProtocol.
	RejectMasked bool

	frag      []byte    // reassembly of the fragmented message in progress
	fragOp    ws.OpCode // opcode of that message; 0 when none is in progress
	need      int       // total size of the frame at the head, once its header is known
	delivered bool      // frag was handed out as a Message; drop it on the next call

	// What the last successful Next did, so Unread can revert it.
	last struct {
		ok      bool
		payload []byte // the frame's payload inside the caller's bytes
		masked  bool
		mask    [4]byte
		fragOp  ws.OpCode // fragOp before the call
		fragLen int       // len(frag) before the call
	}
}

func (d *Decoder) maxFrame() int64 {
	if d.MaxFrame > 0 {
		return d.MaxFrame
	}
	return MaxEventFrameSize
}

func (d *Decoder) maxMessage() int64 {
	if d.MaxMessage > 0 {
		return d.MaxMessage
	}
	return MaxEventFrameSize
}

// Next consumes at most one frame from b. It returns the number of bytes
// consumed; ok is true when m is a control frame or a complete data message.
// A partial frame returns n=0, ok=false, err=nil: call again with more bytes.
// A non-final data fragment is consumed (n>0) with ok=false.
//
// Errors (the stream is then unusable): bad opcode, RSV bits, fragmented or
// oversized (>125) control frames, continuation without a started message,
// a new data frame inside a fragmented message, a masking rule broken (all
// ErrProtocol), ErrFrameTooLarge, ErrMessageTooLarge.
func (d *Decoder) Next(b []byte) (m Message, n int, ok bool, err error) {
	if d.delivered {
		d.delivered = false
		d.frag = nil
	}
	d.last.ok = false

	h, hn, err := ParseHeader(b)
	if err != nil || hn == 0 {
		d.need = 0
		return Message{}, 0, false, err
	}
	switch {
	case d.RequireMasked && !h.Masked:
		return Message{}, 0, false, protocolError(errMaskRequired)
	case d.RejectMasked && h.Masked:
		return Message{}, 0, false, protocolError(errMaskUnexpected)
	case h.OpCode == ws.OpContinuation && d.fragOp == 0:
		return Message{}, 0, false, protocolError(errContUnexpected)
	case h.OpCode.IsData() && h.OpCode != ws.OpContinuation && d.fragOp != 0:
		return Message{}, 0, false, protocolError(errContExpected)
	}
	if h.Length > d.maxFrame() {
		return Message{}, 0, false, ErrFrameTooLarge
	}
	if h.OpCode.IsData() && int64(len(d.frag))+h.Length > d.maxMessage() {
		return Message{}, 0, false, ErrMessageTooLarge
	}
	total := hn + int(h.Length)
	if len(b) < total {
		d.need = total
		return Message{}, 0, false, nil
	}
	d.need = 0

	payload := b[hn:total:total]
	if h.Masked {
		ws.Cipher(payload, h.Mask, 0)
	}
	d.last.payload = payload
	d.last.masked = h.Masked
	d.last.mask = h.Mask
	d.last.fragOp = d.fragOp
	d.last.fragLen = len(d.frag)

	switch {
	case h.OpCode.IsControl():
		d.last.ok = true
		return Message{Op: h.OpCode, Payload: payload}, total, true, nil
	case h.OpCode != ws.OpContinuation && h.Fin:
		d.last.ok = true
		return Message{Op: h.OpCode, Payload: payload}, total, true, nil
	case h.OpCode != ws.OpContinuation: // first fragment
		d.fragOp = h.OpCode
		d.frag = append(d.frag[:0], payload...)
		return Message{}, total, false, nil
	case !h.Fin: // middle fragment
		d.frag = append(d.frag, payload...)
		return Message{}, total, false, nil
	default: // final fragment
		d.frag = append(d.frag, payload...)
		m = Message{Op: d.fragOp, Payload: d.frag}
		d.fragOp = 0
		d.delivered = true
		d.last.ok = true
		return m, total, true, nil
	}
}

// Unread reverts the last Next, which must have returned ok=true, so that
// passing the same bytes again yields the same message. It re-masks the
// payload in place and rewinds the fragment buffer. A caller uses it when
// the consumer of a message cannot take it yet and leaves the bytes
// unconsumed (see loop's ErrPaused).
func (d *Decoder) Unread() error {
	if !d.last.ok {
		return errNothingToUnread
	}
	d.last.ok = false
	if d.last.masked {
		ws.Cipher(d.last.payload, d.last.mask, 0)
	}
	if d.delivered {
		// The final fragment completed a reassembled message: take its bytes
		// back out and wait for it again.
		d.delivered = false
		d.fragOp = d.last.fragOp
		d.frag = d.frag[:d.last.fragLen]
	}
	d.last.payload = nil
	return nil
}

// Need reports the total size (header and payload) of the frame at the head
// of the stream after a Next that returned a partial frame whose header was
// complete; 0 if the header itself is incomplete or nothing is pending. A
// caller uses it to bound or pre-size its input buffer.
func (d *Decoder) Need() int {
	return d.need
}

// Fragmenting reports whether a fragmented data message is in progress.
func (d *Decoder) Fragmenting() bool {
	return d.fragOp != 0
}

// Reset drops any partial message and its buffer, keeping the limits and
// masking rules.
func (d *Decoder) Reset() {
	d.frag = nil
	d.fragOp = 0
	d.need = 0
	d.delivered = false
	d.last.ok = false
	d.last.payload = nil
}
