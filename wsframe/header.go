package wsframe

import (
	"encoding/binary"
	"errors"

	"github.com/gobwas/ws"
)

// Bits and length markers of the first two header bytes (RFC 6455 5.2).
const (
	finBit      = 0x80
	rsvBits     = 0x70
	opcodeBits  = 0x0f
	maskBit     = 0x80
	lengthBits  = 0x7f
	length16    = 126 // 7-bit length value announcing a 16-bit extended length
	length64    = 127 // 7-bit length value announcing a 64-bit extended length
	maskKeySize = 4
)

// errLengthMSB is the cause of the ErrProtocol returned for a 64-bit length
// with its most significant bit set, which RFC 6455 5.2 forbids.
var errLengthMSB = errors.New("64-bit payload length has its most significant bit set")

// ParseHeader parses a frame header at the start of b without copying.
// n == 0 && err == nil means b is too short yet. The header is checked for
// the rules that need no connection state: reserved opcodes, non-zero RSV
// bits (no extension is ever negotiated), control frames that are fragmented
// or longer than 125 bytes, and the 64-bit length MSB. Masking and
// fragmentation order depend on the role and the stream and are checked by
// Decoder. Non-minimal length encodings are accepted, as gobwas/ws does.
func ParseHeader(b []byte) (h ws.Header, n int, err error) {
	if len(b) < ws.MinHeaderSize {
		return h, 0, nil
	}
	b0, b1 := b[0], b[1]
	n = ws.MinHeaderSize
	switch b1 & lengthBits {
	case length16:
		n += 2
	case length64:
		n += 8
	}
	if b1&maskBit != 0 {
		n += maskKeySize
	}
	if len(b) < n {
		return h, 0, nil
	}

	h.Fin = b0&finBit != 0
	h.Rsv = (b0 & rsvBits) >> 4
	h.OpCode = ws.OpCode(b0 & opcodeBits)
	h.Masked = b1&maskBit != 0
	ext := b[ws.MinHeaderSize:n]
	switch l := b1 & lengthBits; l {
	case length16:
		h.Length = int64(binary.BigEndian.Uint16(ext))
		ext = ext[2:]
	case length64:
		u := binary.BigEndian.Uint64(ext)
		if u>>63 != 0 {
			return ws.Header{}, 0, protocolError(errLengthMSB)
		}
		h.Length = int64(u)
		ext = ext[8:]
	default:
		h.Length = int64(l)
	}
	if h.Masked {
		copy(h.Mask[:], ext)
	}
	// CheckHeader also judges the fragmentation order, which needs stream
	// state: claim whichever state makes this frame's opcode legal and let
	// Decoder check the order.
	var state ws.State
	if h.OpCode == ws.OpContinuation {
		state = ws.StateFragmented
	}
	if err := ws.CheckHeader(h, state); err != nil {
		return ws.Header{}, 0, protocolError(err)
	}
	return h, n, nil
}

// AppendHeader appends the header of a final (FIN) frame with opcode op and
// a payload of length bytes to dst. A non-nil mask sets the MASK bit and the
// masking key; the caller masks the payload itself (see AppendFrame).
func AppendHeader(dst []byte, op ws.OpCode, length int, mask *[4]byte) []byte {
	return appendHeader(dst, true, op, length, mask)
}

// appendHeader is AppendHeader with a choice of the FIN bit, used to build
// fragments.
func appendHeader(dst []byte, fin bool, op ws.OpCode, length int, mask *[4]byte) []byte {
	b0 := byte(op) & opcodeBits
	if fin {
		b0 |= finBit
	}
	var b1 byte
	if mask != nil {
		b1 = maskBit
	}
	switch {
	case length < length16:
		dst = append(dst, b0, b1|byte(length))
	case length <= 0xffff:
		dst = append(dst, b0, b1|length16)
		dst = binary.BigEndian.AppendUint16(dst, uint16(length))
	default:
		dst = append(dst, b0, b1|length64)
		dst = binary.BigEndian.AppendUint64(dst, uint64(length))
	}
	if mask != nil {
		dst = append(dst, mask[:]...)
	}
	return dst
}
