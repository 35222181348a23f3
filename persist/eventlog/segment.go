package eventlog

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
)

// header is a decoded record header.
type header struct {
	flags, kind, length uint32
	uid                 uint64
	seq                 int64
}

// Header field offsets (little-endian), as in indigo's diskpersist.
const (
	offFlags  = 0
	offKind   = 4
	offLength = 8
	offUID    = 12
	offSeq    = 20
)

// putHeader encodes a record header into b[:HeaderSize].
func putHeader(b []byte, flags, kind uint32, length int, uid uint64, seq int64) {
	_ = b[HeaderSize-1]
	binary.LittleEndian.PutUint32(b[offFlags:], flags)
	binary.LittleEndian.PutUint32(b[offKind:], kind)
	binary.LittleEndian.PutUint32(b[offLength:], uint32(length))
	binary.LittleEndian.PutUint64(b[offUID:], uid)
	binary.LittleEndian.PutUint64(b[offSeq:], uint64(seq))
}

// decodeHeader decodes b[:HeaderSize].
func decodeHeader(b []byte) header {
	_ = b[HeaderSize-1]
	return header{
		flags:  binary.LittleEndian.Uint32(b[offFlags:]),
		kind:   binary.LittleEndian.Uint32(b[offKind:]),
		length: binary.LittleEndian.Uint32(b[offLength:]),
		uid:    binary.LittleEndian.Uint64(b[offUID:]),
		seq:    int64(binary.LittleEndian.Uint64(b[offSeq:])),
	}
}

// plausible reports whether h can be the record after one with seq prev.
// The format has no checksum; these checks reject zeros, torn headers and
// random bytes (the flags word alone passes by chance once in 2^31).
func (h header) plausible(prev int64) bool {
	if h.flags&FlagMeta != 0 && h.length < 3 {
		return false
	}
	return h.flags&^knownFlags == 0 && h.length <= maxStoredLen && h.seq > prev
}

// maxStoredLen bounds a header's length field: the largest payload plus
// the largest meta section.
const maxStoredLen = MaxPayloadSize + 2 + MaxMetaSize

// splitStored separates a record's stored bytes (what follows its header)
// into meta and payload. ok is false when a meta section does not fit.
func splitStored(flags uint32, stored []byte) (meta, payload []byte, ok bool) {
	if flags&FlagMeta == 0 {
		return nil, stored, true
	}
	if len(stored) < 2 {
		return nil, nil, false
	}
	n := int(binary.LittleEndian.Uint16(stored))
	if n == 0 || 2+n > len(stored) {
		return nil, nil, false
	}
	return stored[2 : 2+n : 2+n], stored[2+n:], true
}

// payloadOffset is where a record's payload starts, relative to the
// record, given its stored bytes' first two (the meta length, if any).
func payloadOffset(flags uint32, metaLen uint16) int64 {
	if flags&FlagMeta == 0 {
		return HeaderSize
	}
	return HeaderSize + 2 + int64(metaLen)
}

// recordSize is the on-disk size of a record with this header.
func (h header) recordSize() int64 { return HeaderSize + int64(h.length) }

// errTorn reports that a scan stopped at bytes that are not a whole record.
var errTorn = errors.New("eventlog: torn record")

// scanHeaders calls fn for each whole, plausible record in f[0:size), in
// order, with its offset. It reads in large chunks into buf and returns the
// offset just past the last good record. It stops with errTorn at the first
// header that is short, implausible (see header.plausible, with seqs at
// least minSeq) or whose payload runs past size, and with fn's error if fn
// fails.
//
// Only a record that runs past size (the physical end of the file) is torn;
// a read that fails for another reason is returned as an error, never as a
// torn tail, so the caller cannot truncate good records for it.
func scanHeaders(f io.ReaderAt, name string, size, minSeq int64, buf []byte, fn func(h header, off int64) error) (int64, error) {
	var (
		off      int64
		chunkOff int64
		n        int // buf[:n] holds f[chunkOff:chunkOff+n]
		prev     = minSeq - 1
	)
	for off < size {
		if size-off < HeaderSize {
			return off, errTorn
		}
		if n == 0 || off < chunkOff || off+HeaderSize > chunkOff+int64(n) {
			want := int64(len(buf))
			if size-off < want {
				want = size - off
			}
			m, err := f.ReadAt(buf[:want], off)
			if int64(m) < want {
				// want never passes size: a short read is an I/O error (or
				// the file shrank under us), not a torn record.
				if err == nil || err == io.EOF {
					err = io.ErrUnexpectedEOF
				}
				return off, fmt.Errorf("eventlog: read %s at offset %d: %w", name, off, err)
			}
			chunkOff, n = off, m
		}
		h := decodeHeader(buf[off-chunkOff:])
		if !h.plausible(prev) || off+h.recordSize() > size {
			return off, errTorn
		}
		if err := fn(h, off); err != nil {
			return off, err
		}
		prev = h.seq
		off += h.recordSize()
	}
	return off, nil
}

// addIndex records that the record seq starts at off. Called by the writer
// for every indexInterval-th record of the active segment.
func (s *segment) addIndex(seq, off int64) {
	s.idxMu.Lock()
	s.idx = append(s.idx, indexEntry{seq: seq, off: off})
	s.idxMu.Unlock()
}

// locate returns the offset of a record boundary at or before the first
// record with seq >= target. A sealed segment found by Open is indexed on
// first use by scanning its headers through f, with buf as scratch.
func (s *segment) locate(f *os.File, target int64, buf []byte) (int64, error) {
	s.idxMu.Lock()
	defer s.idxMu.Unlock()
	if !s.indexed {
		if err := s.buildIndex(f, buf); err != nil {
			return 0, err
		}
	}
	// Largest entry with seq <= target.
	lo, hi := 0, len(s.idx)
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if s.idx[m].seq <= target {
			lo = m + 1
		} else {
			hi = m
		}
	}
	if lo == 0 {
		return 0, nil
	}
	return s.idx[lo-1].off, nil
}

// buildIndex scans a sealed segment and fills its sparse index. Called with
// idxMu held.
func (s *segment) buildIndex(f *os.File, buf []byte) error {
	var count int
	idx := s.idx[:0]
	size := s.durSize.Load()
	end, err := scanHeaders(f, f.Name(), size, s.firstSeq, buf, func(h header, off int64) error {
		if count%indexInterval == 0 {
			idx = append(idx, indexEntry{seq: h.seq, off: off})
		}
		count++
		return nil
	})
	if err != nil || end != size {
		if err == nil || errors.Is(err, errTorn) {
			return fmt.Errorf("%w: %s: bad record at offset %d of %d", ErrCorrupt, s.path, end, size)
		}
		return err
	}
	s.idx = idx
	s.indexed = true
	return nil
}
