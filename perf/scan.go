package perf

import (
	"encoding/binary"
	"errors"
)

// scanMaxDepth bounds CBOR nesting while skipping values, so a hostile
// frame cannot recurse the scanner deep.
const scanMaxDepth = 32

var (
	// ErrScanTruncated is returned when a frame ends inside a CBOR item.
	ErrScanTruncated = errors.New("perf: truncated CBOR in frame")
	// ErrScanInvalid is returned for CBOR a DAG-CBOR frame cannot contain
	// (indefinite lengths, reserved values, non-map header or body, deep nesting).
	ErrScanInvalid = errors.New("perf: invalid CBOR in frame")
)

// FrameInfo is what a firehose consumer needs from a frame. Byte slices
// alias the scanned payload and are valid only as long as it is.
type FrameInfo struct {
	Op     int64  // header op: 1 message, -1 error
	Type   string // header t ("#commit", ...; "" if absent; "?" if unknown)
	Seq    int64  // body seq (0 if absent)
	HasSeq bool   // the body has a seq field
	DID    []byte // body repo (#commit) or did
	Rev    []byte // body rev (#commit, #sync)
	Error  []byte // error frame name (op -1)
	Name   []byte // #info name
}

// knownTypes are the header types ScanFrame reports by name; it returns
// these constant strings so scanning does not allocate.
var knownTypes = []string{TypeCommit, TypeSync, TypeIdentity, TypeAccount, TypeInfo}

// ScanFrame reads the header and the top-level fields of the body of an
// event-stream frame payload without decoding the rest (blocks and ops are
// skipped by length). It does not allocate. It is the consumer fleet's
// parser: cheap enough to run for every frame at every consumer.
func ScanFrame(p []byte) (FrameInfo, error) {
	var fi FrameInfo
	i, err := scanMap(p, 0, func(key []byte, p []byte, i int) (int, error) {
		switch string(key) {
		case "op":
			v, n, err := cborInt(p, i)
			if err != nil {
				return 0, err
			}
			fi.Op = v
			return n, nil
		case "t":
			v, n, err := cborText(p, i)
			if err != nil {
				return 0, err
			}
			fi.Type = "?"
			for _, k := range knownTypes {
				if string(v) == k {
					fi.Type = k
					break
				}
			}
			return n, nil
		}
		return cborSkip(p, i, 0)
	})
	if err != nil {
		return fi, err
	}
	_, err = scanMap(p, i, func(key []byte, p []byte, i int) (int, error) {
		var dst *[]byte
		switch string(key) {
		case "seq":
			v, n, err := cborInt(p, i)
			if err != nil {
				return 0, err
			}
			fi.Seq, fi.HasSeq = v, true
			return n, nil
		case "repo":
			if fi.Type != TypeCommit {
				return cborSkip(p, i, 0)
			}
			dst = &fi.DID
		case "did":
			if fi.Type == TypeCommit {
				return cborSkip(p, i, 0)
			}
			dst = &fi.DID
		case "rev":
			if fi.Type != TypeCommit && fi.Type != TypeSync {
				return cborSkip(p, i, 0)
			}
			dst = &fi.Rev
		case "error":
			dst = &fi.Error
		case "name":
			dst = &fi.Name
		default:
			return cborSkip(p, i, 0)
		}
		if i < len(p) && p[i] == 0xf6 { // null
			return i + 1, nil
		}
		v, n, err := cborText(p, i)
		if err != nil {
			return 0, err
		}
		*dst = v
		return n, nil
	})
	return fi, err
}

// scanMap walks the map at p[i:], calling f for each text key with the
// offset of its value; f returns the offset after the value. It returns
// the offset after the map.
func scanMap(p []byte, i int, f func(key []byte, p []byte, i int) (int, error)) (int, error) {
	major, n, i, err := cborHead(p, i)
	if err != nil {
		return 0, err
	}
	if major != 5 {
		return 0, ErrScanInvalid
	}
	for range n {
		key, next, err := cborText(p, i)
		if err != nil {
			return 0, err
		}
		if i, err = f(key, p, next); err != nil {
			return 0, err
		}
	}
	return i, nil
}

// cborHead decodes the initial byte and argument of the item at p[i:].
func cborHead(p []byte, i int) (major byte, arg uint64, next int, err error) {
	if i >= len(p) {
		return 0, 0, 0, ErrScanTruncated
	}
	major = p[i] >> 5
	info := p[i] & 0x1f
	i++
	switch {
	case info < 24:
		return major, uint64(info), i, nil
	case info == 24:
		if i+1 > len(p) {
			return 0, 0, 0, ErrScanTruncated
		}
		return major, uint64(p[i]), i + 1, nil
	case info == 25:
		if i+2 > len(p) {
			return 0, 0, 0, ErrScanTruncated
		}
		return major, uint64(binary.BigEndian.Uint16(p[i:])), i + 2, nil
	case info == 26:
		if i+4 > len(p) {
			return 0, 0, 0, ErrScanTruncated
		}
		return major, uint64(binary.BigEndian.Uint32(p[i:])), i + 4, nil
	case info == 27:
		if i+8 > len(p) {
			return 0, 0, 0, ErrScanTruncated
		}
		return major, binary.BigEndian.Uint64(p[i:]), i + 8, nil
	}
	return 0, 0, 0, ErrScanInvalid
}

// cborInt decodes an integer (major 0 or 1).
func cborInt(p []byte, i int) (int64, int, error) {
	major, arg, next, err := cborHead(p, i)
	if err != nil {
		return 0, 0, err
	}
	if arg > 1<<63-1 {
		return 0, 0, ErrScanInvalid
	}
	switch major {
	case 0:
		return int64(arg), next, nil
	case 1:
		return -1 - int64(arg), next, nil
	}
	return 0, 0, ErrScanInvalid
}

// cborText returns the bytes of the text string at p[i:].
func cborText(p []byte, i int) ([]byte, int, error) {
	major, n, next, err := cborHead(p, i)
	if err != nil {
		return nil, 0, err
	}
	if major != 3 {
		return nil, 0, ErrScanInvalid
	}
	if n > uint64(len(p)-next) {
		return nil, 0, ErrScanTruncated
	}
	end := next + int(n)
	return p[next:end], end, nil
}

// cborSkip returns the offset after the item at p[i:].
func cborSkip(p []byte, i int, depth int) (int, error) {
	if depth > scanMaxDepth {
		return 0, ErrScanInvalid
	}
	major, arg, next, err := cborHead(p, i)
	if err != nil {
		return 0, err
	}
	switch major {
	case 0, 1, 7:
		return next, nil
	case 2, 3:
		if arg > uint64(len(p)-next) {
			return 0, ErrScanTruncated
		}
		return next + int(arg), nil
	case 4, 5:
		items := arg
		if major == 5 {
			if arg > uint64(len(p)) {
				return 0, ErrScanTruncated
			}
			items = 2 * arg
		}
		if items > uint64(len(p)-next) {
			// Every item takes at least one byte.
			return 0, ErrScanTruncated
		}
		for range items {
			if next, err = cborSkip(p, next, depth+1); err != nil {
				return 0, err
			}
		}
		return next, nil
	default: // 6: tag, then one item
		return cborSkip(p, next, depth+1)
	}
}
