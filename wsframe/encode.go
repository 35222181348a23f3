package wsframe

import (
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"unicode/utf8"

	"github.com/gobwas/ws"
)

// maxCloseReason is the longest close reason that fits a control frame next
// to the 2-byte status code (RFC 6455 5.5: control payloads <= 125 bytes).
const maxCloseReason = ws.MaxControlFramePayloadSize - 2

// errCloseTooShort is the cause of the ErrProtocol returned for a close
// payload of exactly one byte (RFC 6455 5.5.1: a body starts with a 2-byte
// code).
var errCloseTooShort = errors.New("close payload of one byte")

// newMask returns a fresh masking key. It draws from math/rand/v2's global
// generator, which is the runtime's per-thread ChaCha8 stream seeded from the
// OS: unpredictable to the peer as RFC 6455 10.3 requires, without a system
// call or a lock per frame (crypto/rand would cost a getrandom per frame).
func newMask() [4]byte {
	var m [4]byte
	binary.LittleEndian.PutUint32(m[:], rand.Uint32())
	return m
}

// AppendFrame appends one final frame with opcode op and payload to dst.
// Server frames are not masked; client frames (masked=true) get a fresh
// random key and the payload is masked in the appended copy, so payload
// itself is never modified.
func AppendFrame(dst []byte, op ws.OpCode, payload []byte, masked bool) []byte {
	return appendFrame(dst, true, op, payload, masked)
}

// appendFrame is AppendFrame with a choice of the FIN bit.
func appendFrame(dst []byte, fin bool, op ws.OpCode, payload []byte, masked bool) []byte {
	if !masked {
		dst = appendHeader(dst, fin, op, len(payload), nil)
		return append(dst, payload...)
	}
	mask := newMask()
	dst = appendHeader(dst, fin, op, len(payload), &mask)
	start := len(dst)
	dst = append(dst, payload...)
	ws.Cipher(dst[start:], mask, 0)
	return dst
}

// AppendClose appends a close frame with status code and reason to dst. A
// zero code sends an empty close body (no status). The reason is cut to the
// 123 bytes a control frame can hold, at a UTF-8 character boundary.
func AppendClose(dst []byte, code ws.StatusCode, reason string, masked bool) []byte {
	var body [ws.MaxControlFramePayloadSize]byte
	if code == 0 {
		return AppendFrame(dst, ws.OpClose, nil, masked)
	}
	if len(reason) > maxCloseReason {
		cut := maxCloseReason
		for cut > 0 && !utf8.RuneStart(reason[cut]) {
			cut--
		}
		reason = reason[:cut]
	}
	binary.BigEndian.PutUint16(body[:], uint16(code))
	n := 2 + copy(body[2:], reason)
	return AppendFrame(dst, ws.OpClose, body[:n], masked)
}

// ParseClose parses the payload of a close frame. An empty payload means no
// status was given and returns ws.StatusNoStatusRcvd. A one-byte payload,
// a code that must not appear on the wire (RFC 6455 7.4: below 1000, 1004,
// 1005, 1006, 1015, unassigned codes below 3000) or a reason that is not
// UTF-8 is an ErrProtocol.
func ParseClose(payload []byte) (code ws.StatusCode, reason string, err error) {
	switch len(payload) {
	case 0:
		return ws.StatusNoStatusRcvd, "", nil
	case 1:
		return 0, "", protocolError(errCloseTooShort)
	}
	code = ws.StatusCode(binary.BigEndian.Uint16(payload))
	reason = string(payload[2:])
	if err := checkClose(code, reason); err != nil {
		return 0, "", protocolError(err)
	}
	return code, reason, nil
}

// IANA-registered close codes that gobwas/ws does not know; servers send
// them when restarting or overloaded, so they must not fail the connection.
const (
	statusServiceRestart ws.StatusCode = 1012
	statusTryAgainLater  ws.StatusCode = 1013
	statusBadGateway     ws.StatusCode = 1014
)

// checkClose is ws.CheckCloseFrameData extended with the IANA-registered
// codes 1012-1014.
func checkClose(code ws.StatusCode, reason string) error {
	switch code {
	case statusServiceRestart, statusTryAgainLater, statusBadGateway:
		return ws.CheckCloseFrameData(ws.StatusNormalClosure, reason)
	}
	return ws.CheckCloseFrameData(code, reason)
}

// Compile returns the complete server-to-client binary WebSocket frame for
// payload, built once and shared by all consumers. The result is exactly
// sized and never modified afterwards, so it may be written to many sockets
// concurrently.
func Compile(payload []byte) []byte {
	h := ws.Header{Fin: true, OpCode: ws.OpBinary, Length: int64(len(payload))}
	dst := make([]byte, 0, ws.HeaderSize(h)+len(payload))
	return AppendFrame(dst, ws.OpBinary, payload, false)
}
