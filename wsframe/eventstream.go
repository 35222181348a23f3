package wsframe

import (
	"bytes"
	"errors"
	"fmt"
	"io"

	cbg "github.com/whyrusleeping/cbor-gen"
)

// Event-stream header values (XRPC subscriptions: a header object then a
// body object in one binary message).
const (
	// OpMessage is the header op of a regular message; t names its type.
	OpMessage = 1
	// OpError is the header op of an error frame; the body is
	// {error, message?} and the server closes the stream after it.
	OpError = -1
)

// Bounds applied when parsing an event-stream header. A header is tiny
// ({op, t}); anything far larger is not a header.
const (
	// MaxEventTypeLen bounds the header's "t" string.
	MaxEventTypeLen = 128
	// maxHeaderEntries bounds the keys of the header map (op, t and a few
	// unknown keys for forward compatibility).
	maxHeaderEntries = 8
	// maxHeaderKeyLen bounds one key of the header map.
	maxHeaderKeyLen = 64
	// maxSkipItems bounds the CBOR items walked to skip one unknown header
	// value, so a hostile nested value costs little.
	maxSkipItems = 64
	// maxSkipBytes bounds a byte or text string inside a skipped value.
	maxSkipBytes = 1024
)

// Causes of ErrMalformedEvent.
var (
	errHeaderNotMap    = errors.New("header is not a map")
	errHeaderKey       = errors.New("header key is not a short text string")
	errHeaderDupKey    = errors.New("duplicate header key")
	errHeaderOp        = errors.New("header op is not an integer")
	errHeaderNoOp      = errors.New("header has no op")
	errHeaderType      = errors.New("header t is not a short text string")
	errHeaderSkip      = errors.New("unknown header value too large")
	errNoBody          = errors.New("no body after the header")
	errHeaderTruncated = errors.New("header truncated")
)

// commonTypes are returned as constants by ParseEventHeader, sparing an
// allocation per message for the types a relay sees all the time.
var commonTypes = [...]string{"#commit", "#identity", "#account", "#sync", "#info"}

// sliceWriter is an io.Writer appending to a byte slice, so cbor-gen's
// writer can append to a caller's buffer.
type sliceWriter struct{ b []byte }

func (w *sliceWriter) Write(p []byte) (int, error) {
	w.b = append(w.b, p...)
	return len(p), nil
}

func (w *sliceWriter) WriteString(s string) (int, error) {
	w.b = append(w.b, s...)
	return len(s), nil
}

// cborEncoder appends DAG-CBOR items with cbor-gen's header encoding. Writes
// to a sliceWriter cannot fail, so errors are not returned.
// The encoder is one allocation: cbor-gen's writer and its sink escape
// through interfaces, so they live together.
type cborEncoder struct {
	w  sliceWriter
	cw cbg.CborWriter
}

func newCBOREncoder(dst []byte) *cborEncoder {
	e := &cborEncoder{w: sliceWriter{b: dst}}
	e.cw.SetWriter(&e.w)
	return e
}

func (e *cborEncoder) mapHeader(n int) { _ = e.cw.WriteMajorTypeHeader(cbg.MajMap, uint64(n)) }

func (e *cborEncoder) text(s string) {
	_ = e.cw.WriteMajorTypeHeader(cbg.MajTextString, uint64(len(s)))
	_, _ = e.cw.WriteString(s)
}

func (e *cborEncoder) int(v int64) {
	if v >= 0 {
		_ = e.cw.WriteMajorTypeHeader(cbg.MajUnsignedInt, uint64(v))
		return
	}
	_ = e.cw.WriteMajorTypeHeader(cbg.MajNegativeInt, uint64(-v-1))
}

// AppendEventHeader appends the header object {"op":1,"t":t} of a message to
// dst, keys in DAG-CBOR canonical order (shorter key first: "t", "op"), the
// same bytes indigo's events.EventHeader encodes.
func AppendEventHeader(dst []byte, t string) []byte {
	e := newCBOREncoder(dst)
	e.mapHeader(2)
	e.text("t")
	e.text(t)
	e.text("op")
	e.int(OpMessage)
	return e.w.b
}

// AppendErrorPayload appends a complete error-frame payload to dst: header
// {"op":-1} then body {"error":name,"message":message}, message omitted
// when empty (it is optional in the lexicon).
func AppendErrorPayload(dst []byte, name, message string) []byte {
	e := newCBOREncoder(dst)
	e.mapHeader(1)
	e.text("op")
	e.int(OpError)
	if message == "" {
		e.mapHeader(1)
		e.text("error")
		e.text(name)
		return e.w.b
	}
	e.mapHeader(2)
	e.text("error")
	e.text(name)
	e.text("message")
	e.text(message)
	return e.w.b
}

// AppendInfoPayload appends a complete #info message payload to dst: header
// {"op":1,"t":"#info"} then body {"name":name,"message":message}, message
// omitted when empty.
func AppendInfoPayload(dst []byte, name, message string) []byte {
	dst = AppendEventHeader(dst, "#info")
	e := newCBOREncoder(dst)
	if message == "" {
		e.mapHeader(1)
		e.text("name")
		e.text(name)
		return e.w.b
	}
	e.mapHeader(2)
	e.text("name")
	e.text(name)
	e.text("message")
	e.text(message)
	return e.w.b
}

// ParseEventHeader parses the header object at the start of an event-stream
// payload and returns its op, its type t ("" when absent, as in error
// frames) and body, the bytes after the header object (not parsed). The
// header must be a DAG-CBOR map (canonical lengths) with an integer "op";
// unknown keys with small values are skipped. Errors wrap ErrMalformedEvent.
func ParseEventHeader(payload []byte) (op int64, t string, body []byte, err error) {
	// One allocation: cbor-gen takes an io.Reader and a scratch slice, both
	// of which escape; keep them in one object.
	st := new(headerReader)
	st.br.Reset(payload)
	br, scratch := &st.br, st.scratch[:]
	maj, n, err := cbg.CborReadHeaderBuf(br, scratch)
	if err != nil {
		return 0, "", nil, malformed(err)
	}
	if maj != cbg.MajMap || n > maxHeaderEntries {
		return 0, "", nil, malformed(errHeaderNotMap)
	}
	var haveOp, haveT bool
	for range n {
		key, err := readText(br, payload, scratch, maxHeaderKeyLen)
		if err != nil {
			return 0, "", nil, malformed(errHeaderKey)
		}
		switch string(key) {
		case "op":
			if haveOp {
				return 0, "", nil, malformed(errHeaderDupKey)
			}
			haveOp = true
			maj, v, err := cbg.CborReadHeaderBuf(br, scratch)
			if err != nil || v > 1<<63-1 {
				return 0, "", nil, malformed(errHeaderOp)
			}
			switch maj {
			case cbg.MajUnsignedInt:
				op = int64(v)
			case cbg.MajNegativeInt:
				op = -1 - int64(v)
			default:
				return 0, "", nil, malformed(errHeaderOp)
			}
		case "t":
			if haveT {
				return 0, "", nil, malformed(errHeaderDupKey)
			}
			haveT = true
			tb, err := readText(br, payload, scratch, MaxEventTypeLen)
			if err != nil {
				return 0, "", nil, malformed(errHeaderType)
			}
			t = internType(tb)
		default:
			if err := skipValue(br, scratch); err != nil {
				return 0, "", nil, malformed(err)
			}
		}
	}
	if !haveOp {
		return 0, "", nil, malformed(errHeaderNoOp)
	}
	body = payload[len(payload)-br.Len():]
	if len(body) == 0 {
		return 0, "", nil, malformed(errNoBody)
	}
	return op, t, body, nil
}

// headerReader is the state of one ParseEventHeader call.
type headerReader struct {
	br      bytes.Reader
	scratch [9]byte // cbor-gen's header scratch: the longest CBOR head
}

func malformed(cause error) error {
	return fmt.Errorf("%w: %w", ErrMalformedEvent, cause)
}

// readText reads a text string header from br and returns the string's
// bytes as a slice of payload (no copy).
func readText(br *bytes.Reader, payload, scratch []byte, limit uint64) ([]byte, error) {
	maj, n, err := cbg.CborReadHeaderBuf(br, scratch)
	if err != nil {
		return nil, err
	}
	if maj != cbg.MajTextString || n > limit || n > uint64(br.Len()) {
		return nil, errHeaderTruncated
	}
	start := len(payload) - br.Len()
	if _, err := br.Seek(int64(n), io.SeekCurrent); err != nil {
		return nil, err
	}
	return payload[start : start+int(n)], nil
}

// internType returns one of commonTypes when b spells it, else a new string.
func internType(b []byte) string {
	for _, s := range commonTypes {
		if string(b) == s {
			return s
		}
	}
	return string(b)
}

// skipValue skips one CBOR value of an unknown header key, walking at most
// maxSkipItems items.
func skipValue(br *bytes.Reader, scratch []byte) error {
	remaining := uint64(1)
	for walked := 0; remaining > 0; walked++ {
		if walked == maxSkipItems {
			return errHeaderSkip
		}
		remaining--
		maj, n, err := cbg.CborReadHeaderBuf(br, scratch)
		if err != nil {
			return err
		}
		switch maj {
		case cbg.MajUnsignedInt, cbg.MajNegativeInt, cbg.MajOther:
		case cbg.MajByteString, cbg.MajTextString:
			if n > maxSkipBytes || n > uint64(br.Len()) {
				return errHeaderSkip
			}
			if _, err := br.Seek(int64(n), io.SeekCurrent); err != nil {
				return err
			}
		case cbg.MajTag:
			remaining++
		case cbg.MajArray:
			if n > maxSkipItems {
				return errHeaderSkip
			}
			remaining += n
		case cbg.MajMap:
			if n > maxSkipItems {
				return errHeaderSkip
			}
			remaining += 2 * n
		}
	}
	return nil
}
