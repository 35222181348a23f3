// Package wsframe is a WebSocket (RFC 6455) and XRPC event-stream frame codec
// over byte slices. It parses frames in place, without copying, so that a
// caller holding bytes from an event loop's input buffer can decode them
// straight from there, and it builds outgoing frames by appending to caller
// slices so that one compiled frame can be shared by many consumers.
//
// The package knows nothing of atproto records, DIDs or commits: it only
// knows that an event-stream message is a DAG-CBOR header object followed by
// a body object.
package wsframe

import (
	"errors"
	"fmt"
)

// Errors returned by the codec. Errors caused by the peer wrap ErrProtocol
// (or one of the size errors) so callers can choose a close status code with
// errors.Is.
var (
	// ErrProtocol reports a violation of RFC 6455 by the peer: reserved
	// opcode or RSV bits, a fragmented or oversized control frame, a
	// continuation frame without a started message, a new data frame inside a
	// fragmented message, a masking rule broken, a malformed close payload.
	ErrProtocol = errors.New("wsframe: websocket protocol violation")
	// ErrFrameTooLarge reports a frame whose declared length exceeds
	// Decoder.MaxFrame. It is returned as soon as the header is parsed, before
	// the payload arrives.
	ErrFrameTooLarge = errors.New("wsframe: frame too large")
	// ErrMessageTooLarge reports a data message (one frame or the sum of its
	// fragments) exceeding Decoder.MaxMessage.
	ErrMessageTooLarge = errors.New("wsframe: message too large")
	// ErrMalformedEvent reports an event-stream payload whose header object
	// is not a well-formed DAG-CBOR map with an integer "op" and an optional
	// string "t", or that has no body after the header.
	ErrMalformedEvent = errors.New("wsframe: malformed event-stream header")
)

// protocolError wraps a specific cause (often one of gobwas/ws's
// ProtocolError values) under ErrProtocol. It allocates only on the error
// path.
func protocolError(cause error) error {
	return fmt.Errorf("%w: %w", ErrProtocol, cause)
}
