package collections

import (
	"bytes"
	"errors"
	"io"

	cbg "github.com/whyrusleeping/cbor-gen"

	"github.com/relay/relay/persist/collection"
)

// Bounds of the fast commit decoder (the relay validated the commit; these
// only keep a malformed record from costing much).
const (
	maxCBORDepth = 16
	maxTextLen   = 8 << 10
)

var errCBOR = errors.New("collections: malformed CBOR")

// decodeCommitFast reads only repo, rev, since and ops[].{action,path}
// from a #commit body, skipping blocks and everything else without
// copying. It is equivalent to SyncSubscribeRepos_Commit.UnmarshalCBOR
// for what the index needs (TestDecodeCommitFast) at a fraction of the
// cost: no block copy, no CID parsing.
func decodeCommitFast(body []byte) (collection.Change, error) {
	br := bytes.NewReader(body)
	cr := cbg.NewCborReader(br)
	maj, n, err := cr.ReadHeader()
	if err != nil || maj != cbg.MajMap {
		return collection.Change{}, errCBOR
	}
	ch := collection.Change{Kind: collection.KindCommit}
	for range n {
		key, err := readText(cr, br)
		if err != nil {
			return ch, err
		}
		switch key {
		case "repo":
			if ch.DID, err = readText(cr, br); err != nil {
				return ch, err
			}
		case "rev":
			if ch.Rev, err = readText(cr, br); err != nil {
				return ch, err
			}
		case "since":
			maj, extra, err := cr.ReadHeader()
			if err != nil {
				return ch, err
			}
			switch {
			case maj == cbg.MajOther && extra == 22: // null: the repo's first commit
				ch.First = true
			case maj == cbg.MajTextString && extra <= maxTextLen:
				if _, err := br.Seek(int64(extra), io.SeekCurrent); err != nil {
					return ch, err
				}
			default:
				return ch, errCBOR
			}
		case "ops":
			maj, cnt, err := cr.ReadHeader()
			if err != nil || maj != cbg.MajArray || cnt > 10_000 {
				return ch, errCBOR
			}
			ch.Ops = make([]collection.Op, 0, cnt)
			for range cnt {
				op, ok, err := readOp(cr, br)
				if err != nil {
					return ch, err
				}
				if ok {
					ch.Ops = append(ch.Ops, op)
				}
			}
		default:
			if err := skipCBOR(cr, br, 0); err != nil {
				return ch, err
			}
		}
	}
	return ch, nil
}

func readOp(cr *cbg.CborReader, br *bytes.Reader) (collection.Op, bool, error) {
	maj, n, err := cr.ReadHeader()
	if err != nil || maj != cbg.MajMap {
		return collection.Op{}, false, errCBOR
	}
	var op collection.Op
	for range n {
		key, err := readText(cr, br)
		if err != nil {
			return op, false, err
		}
		switch key {
		case "action":
			a, err := readText(cr, br)
			if err != nil {
				return op, false, err
			}
			switch a {
			case "create":
				op.Action = collection.Create
			case "update":
				op.Action = collection.Update
			case "delete":
				op.Action = collection.Delete
			}
		case "path":
			p, err := readText(cr, br)
			if err != nil {
				return op, false, err
			}
			op.Collection = collection.CollectionOf(p)
		default:
			if err := skipCBOR(cr, br, 0); err != nil {
				return op, false, err
			}
		}
	}
	return op, op.Action != 0, nil
}

func readText(cr *cbg.CborReader, br *bytes.Reader) (string, error) {
	maj, n, err := cr.ReadHeader()
	if err != nil || maj != cbg.MajTextString || n > maxTextLen || n > uint64(br.Len()) {
		return "", errCBOR
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(br, b); err != nil {
		return "", err
	}
	return string(b), nil
}

// skipCBOR skips one data item.
func skipCBOR(cr *cbg.CborReader, br *bytes.Reader, depth int) error {
	if depth > maxCBORDepth {
		return errCBOR
	}
	maj, n, err := cr.ReadHeader()
	if err != nil {
		return err
	}
	switch maj {
	case cbg.MajUnsignedInt, cbg.MajNegativeInt, cbg.MajOther:
		return nil
	case cbg.MajByteString, cbg.MajTextString:
		if n > uint64(br.Len()) {
			return errCBOR
		}
		_, err := br.Seek(int64(n), io.SeekCurrent)
		return err
	case cbg.MajArray, cbg.MajMap:
		items := n
		if maj == cbg.MajMap {
			items *= 2
		}
		if items > uint64(br.Len()) {
			return errCBOR
		}
		for range items {
			if err := skipCBOR(cr, br, depth+1); err != nil {
				return err
			}
		}
		return nil
	case cbg.MajTag:
		return skipCBOR(cr, br, depth+1)
	}
	return errCBOR
}
