package pebblestore

import "encoding/binary"

// Key layout. Each record type has a one-byte prefix; numeric IDs are
// big-endian so a range scan returns records in ID order.
//
//	h<id:8>0           host record (encodeHost)
//	h<id:8>1           host cursor, int64 big-endian (kept apart so the
//	                   periodic cursor flush is a blind write, and next to
//	                   the record so ListHosts reads both in one scan)
//	H<hostname>        host ID, 8 bytes (hostname lower-case)
//	a<uid:8>           account record (encodeAccount)
//	A<did>             account UID, 8 bytes
//	r<uid:8>           repo state (encodeRepoState)
//	d<domain>          domain ban, empty value
//	p<key>             (reserved: backfill progress of earlier versions, no longer read)
//	s<name>            last ID assigned by a sequence, 8 bytes
//	v                  on-disk format version, 8 bytes
//	c                  derived-state checkpoint: log seq (8 bytes) + resume detail
const (
	prefixHost       = 'h'
	prefixHostName   = 'H'
	prefixAccount    = 'a'
	prefixAccountDID = 'A'
	prefixRepo       = 'r'
	prefixDomainBan  = 'd'
	prefixSequence   = 's'
	prefixVersion    = 'v'
	prefixCheckpoint = 'c'
)

// Suffixes after a host's ID.
const (
	hostSuffixRecord = 0
	hostSuffixCursor = 1
)

// formatVersion is written at creation; Open refuses a directory written
// in another format instead of misreading it.
const formatVersion = 1

var (
	keyHostSeq    = []byte{prefixSequence, 'h'}
	keyAccountSeq = []byte{prefixSequence, 'a'}
	keyVersion    = []byte{prefixVersion}
	keyCheckpoint = []byte{prefixCheckpoint}
)

// idKeyLen is a prefix byte and a big-endian uint64.
const idKeyLen = 9

func idKey(prefix byte, id uint64) []byte {
	var k [idKeyLen]byte
	k[0] = prefix
	binary.BigEndian.PutUint64(k[1:], id)
	return k[:]
}

func hostKey(id uint64, suffix byte) []byte {
	var k [idKeyLen + 1]byte
	k[0] = prefixHost
	binary.BigEndian.PutUint64(k[1:], id)
	k[idKeyLen] = suffix
	return k[:]
}

func stringKey(prefix byte, s string) []byte {
	k := make([]byte, 1+len(s))
	k[0] = prefix
	copy(k[1:], s)
	return k
}

// afterKey returns the first key of a prefix's ID range after id, and
// false when id is the largest ID (nothing can follow it).
func afterKey(prefix byte, id uint64) ([]byte, bool) {
	if id == ^uint64(0) {
		return nil, false
	}
	return idKey(prefix, id+1), true
}

// prefixEnd is the exclusive upper bound of every key starting with prefix.
func prefixEnd(prefix byte) []byte { return []byte{prefix + 1} }

func u64(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }
