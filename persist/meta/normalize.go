package meta

import (
	"strings"
	"time"
)

// TimePrecision is the resolution every backend keeps for timestamps:
// Postgres timestamptz stores microseconds, so the embedded backend rounds
// the same way and a value reads back equal from either.
const TimePrecision = time.Microsecond

// StoredTime returns t as a backend stores it: UTC, truncated to
// TimePrecision. A zero t becomes the current time.
func StoredTime(t time.Time) time.Time {
	if t.IsZero() {
		t = time.Now()
	}
	return t.UTC().Truncate(TimePrecision)
}

// NormalizeHostname returns the stored form of a hostname or banned
// domain: DNS names are case-insensitive, so they are kept lower-case and
// lookups lower-case their argument too.
// strings.ToLower returns an already lower-case ASCII string without
// allocating, so the lookup path stays allocation-free.
func NormalizeHostname(s string) string {
	return strings.ToLower(s)
}

// CheckLimit returns ErrBadLimit unless 1 <= limit <= MaxListLimit.
func CheckLimit(limit int) error {
	if limit < 1 || limit > MaxListLimit {
		return ErrBadLimit
	}
	return nil
}

// DefaultHostStatus returns s, or HostActive when s is empty.
func DefaultHostStatus(s HostStatus) HostStatus {
	if s == "" {
		return HostActive
	}
	return s
}

// DefaultAccountStatus returns s, or AccountActive when s is empty.
func DefaultAccountStatus(s AccountStatus) AccountStatus {
	if s == "" {
		return AccountActive
	}
	return s
}
