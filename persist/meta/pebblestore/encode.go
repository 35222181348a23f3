package pebblestore

import (
	"github.com/bluesky-social/indigo/atproto/syntax"

	"encoding/binary"
	"errors"
	"time"

	"github.com/relay/relay/persist/meta"
)

// ErrCorrupt means a stored record could not be decoded.
var ErrCorrupt = errors.New("pebblestore: corrupt record")

// recordVersion leads every encoded record so the encoding can change
// without a migration of old records.
const recordVersion = 1

// Host flag bits.
const (
	hostFlagNoSSL   = 1 << 0
	hostFlagTrusted = 1 << 1
)

// encodeHost appends the host record (everything but ID and Cursor, which
// live in the key and the cursor key).
func encodeHost(b []byte, h *meta.Host) []byte {
	b = append(b, recordVersion)
	var flags byte
	if h.NoSSL {
		flags |= hostFlagNoSSL
	}
	if h.Trusted {
		flags |= hostFlagTrusted
	}
	b = append(b, flags)
	b = appendString(b, string(h.Status))
	b = binary.AppendVarint(b, h.AccountLimit)
	b = binary.AppendVarint(b, h.AccountCount)
	b = binary.AppendVarint(b, int64(h.Failures))
	b = binary.AppendVarint(b, h.CreatedAt.UnixMicro())
	b = binary.AppendVarint(b, h.UpdatedAt.UnixMicro())
	return appendString(b, h.Hostname)
}

func decodeHost(b []byte, h *meta.Host) error {
	d := decoder{b: b}
	if d.byte() != recordVersion {
		return ErrCorrupt
	}
	flags := d.byte()
	h.NoSSL = flags&hostFlagNoSSL != 0
	h.Trusted = flags&hostFlagTrusted != 0
	h.Status = hostStatus(d.bytes())
	h.AccountLimit = d.varint()
	h.AccountCount = d.varint()
	h.Failures = int(d.varint())
	h.CreatedAt = d.time()
	h.UpdatedAt = d.time()
	h.Hostname = string(d.bytes())
	return d.err
}

// encodeAccount appends the account record (everything but UID).
func encodeAccount(b []byte, a *meta.Account) []byte {
	b = append(b, recordVersion)
	b = binary.AppendUvarint(b, a.HostID)
	b = appendString(b, string(a.Status))
	b = appendString(b, string(a.UpstreamStatus))
	b = binary.AppendVarint(b, a.CreatedAt.UnixMicro())
	return appendString(b, string(a.DID))
}

func decodeAccount(b []byte, a *meta.Account) error {
	d := decoder{b: b}
	if d.byte() != recordVersion {
		return ErrCorrupt
	}
	a.HostID = d.uvarint()
	a.Status = accountStatus(d.bytes())
	a.UpstreamStatus = accountStatus(d.bytes())
	a.CreatedAt = d.time()
	a.DID = syntax.DID(d.bytes())
	return d.err
}

// encodeRepoState appends the repo state (everything but UID).
func encodeRepoState(b []byte, r *meta.RepoState) []byte {
	b = append(b, recordVersion)
	b = appendString(b, r.Rev)
	b = appendString(b, r.CommitCID)
	return appendString(b, r.DataCID)
}

func decodeRepoState(b []byte, r *meta.RepoState) error {
	d := decoder{b: b}
	if d.byte() != recordVersion {
		return ErrCorrupt
	}
	r.Rev = string(d.bytes())
	r.CommitCID = string(d.bytes())
	r.DataCID = string(d.bytes())
	return d.err
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// hostStatus returns the status constant for b without allocating when b
// is a known status (the compiler does not copy b for a switch on
// string(b)).
func hostStatus(b []byte) meta.HostStatus {
	switch string(b) {
	case "active":
		return meta.HostActive
	case "idle":
		return meta.HostIdle
	case "offline":
		return meta.HostOffline
	case "throttled":
		return meta.HostThrottled
	case "banned":
		return meta.HostBanned
	case "blocked":
		return meta.HostBlocked
	}
	return meta.HostStatus(b)
}

// accountStatus is hostStatus for account statuses.
func accountStatus(b []byte) meta.AccountStatus {
	switch string(b) {
	case "active":
		return meta.AccountActive
	case "deactivated":
		return meta.AccountDeactivated
	case "deleted":
		return meta.AccountDeleted
	case "desynchronized":
		return meta.AccountDesynchronized
	case "suspended":
		return meta.AccountSuspended
	case "takendown":
		return meta.AccountTakendown
	case "throttled":
		return meta.AccountThrottled
	}
	return meta.AccountStatus(b)
}

// decoder reads a record; the first malformed field sets err and every
// later read returns zero values.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) fail() { d.err, d.b = ErrCorrupt, nil }

func (d *decoder) byte() byte {
	if len(d.b) < 1 {
		d.fail()
		return 0
	}
	c := d.b[0]
	d.b = d.b[1:]
	return c
}

func (d *decoder) uvarint() uint64 {
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail()
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) varint() int64 {
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.fail()
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) time() time.Time {
	return time.UnixMicro(d.varint()).UTC()
}

// bytes returns a length-prefixed field; it aliases the record.
func (d *decoder) bytes() []byte {
	n := d.uvarint()
	if n > uint64(len(d.b)) {
		d.fail()
		return nil
	}
	v := d.b[:n]
	d.b = d.b[n:]
	return v
}
