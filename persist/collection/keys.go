package collection

import (
	"encoding/binary"
	"errors"
)

// Key layout (one Pebble DB, its own directory). Every key starts with a
// one-byte prefix; DIDs and NSIDs never contain 0x00, which separates
// the two parts of a composite key.
//
//	'l' collection 0x00 did  -> ""                       listing (only listed DIDs)
//	'c' did 0x00 collection  -> uvarint(n) flags         per (did, collection) record count
//	'd' did                  -> status flags rev         per DID state
//	'r' did                  -> reason                   a resync is owed (durable to-do list)
//	'n' collection           -> uvarint(listed DIDs)     per collection listing size
//	'm' name                 -> value                    checkpoint, totals, backfill progress
const (
	pList   = 'l'
	pCount  = 'c'
	pDID    = 'd'
	pResync = 'r'
	pColl   = 'n'
	pMeta   = 'm'
)

// Meta keys.
var (
	keyApplied     = []byte("mapplied")     // int64 seq: the log is applied through it
	keyEntries     = []byte("mentries")     // int64: listing keys
	keyCollections = []byte("mcollections") // int64: collections with >= 1 listing key
	keyBackfill    = []byte("mbackfill")    // JSON BackfillProgress
)

// count flags.
const (
	// flagUnknown: the count is a lower bound. The DID was first seen
	// mid-life (or its repo changed under a #sync) and the baseline,
	// the records it held before, is not known.
	flagUnknown byte = 1
)

// DID status byte.
const (
	statusActive  byte = 0 // listed
	statusHidden  byte = 1 // kept, not listed (deactivated, suspended, ...)
	statusRemoved byte = 2 // taken down or deleted: no counts kept (tombstone)
)

// DID flags.
const (
	// didBorn: the follower saw the repo's first commit (since = null) or
	// a resync established every count: a collection without a count
	// holds no record.
	didBorn byte = 1
	// didBackfilled: the DID came from a backfill and the relay has not
	// seen an event of it yet.
	didBackfilled byte = 2
)

func listKey(coll, did string) []byte {
	k := make([]byte, 0, 2+len(coll)+len(did))
	k = append(k, pList)
	k = append(k, coll...)
	k = append(k, 0)
	return append(k, did...)
}

func listPrefix(coll string) []byte {
	k := make([]byte, 0, 2+len(coll))
	k = append(k, pList)
	k = append(k, coll...)
	return append(k, 0)
}

func countKey(did, coll string) []byte {
	k := make([]byte, 0, 2+len(coll)+len(did))
	k = append(k, pCount)
	k = append(k, did...)
	k = append(k, 0)
	return append(k, coll...)
}

func countPrefix(did string) []byte {
	k := make([]byte, 0, 2+len(did))
	k = append(k, pCount)
	k = append(k, did...)
	return append(k, 0)
}

func didKey(did string) []byte    { return append([]byte{pDID}, did...) }
func resyncKey(did string) []byte { return append([]byte{pResync}, did...) }
func collKey(coll string) []byte  { return append([]byte{pColl}, coll...) }

// prefixEnd is the smallest key greater than every key with prefix p.
func prefixEnd(p []byte) []byte {
	end := append([]byte(nil), p...)
	for i := len(end) - 1; i >= 0; i-- {
		end[i]++
		if end[i] != 0 {
			return end[:i+1]
		}
	}
	return nil
}

type countVal struct {
	n       int64
	unknown bool
}

func encodeCount(c countVal) []byte {
	b := binary.AppendUvarint(make([]byte, 0, 4), uint64(c.n))
	var f byte
	if c.unknown {
		f |= flagUnknown
	}
	return append(b, f)
}

var errBadValue = errors.New("collection: malformed value in the index")

func decodeCount(b []byte) (countVal, error) {
	n, k := binary.Uvarint(b)
	if k <= 0 || k >= len(b)+1 {
		return countVal{}, errBadValue
	}
	c := countVal{n: int64(n)}
	if k < len(b) {
		c.unknown = b[k]&flagUnknown != 0
	}
	return c, nil
}

type didState struct {
	status byte
	flags  byte
	rev    string
}

func encodeDID(s didState) []byte {
	b := make([]byte, 0, 2+len(s.rev))
	b = append(b, s.status, s.flags)
	return append(b, s.rev...)
}

func decodeDID(b []byte) (didState, error) {
	if len(b) < 2 {
		return didState{}, errBadValue
	}
	return didState{status: b[0], flags: b[1], rev: string(b[2:])}, nil
}

func encodeInt(v int64) []byte { return binary.BigEndian.AppendUint64(nil, uint64(v)) }

func decodeInt(b []byte) (int64, error) {
	if len(b) != 8 {
		return 0, errBadValue
	}
	return int64(binary.BigEndian.Uint64(b)), nil
}
