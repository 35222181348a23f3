package perf

import (
	"errors"
	"time"

	comatproto "github.com/bluesky-social/indigo/api/atproto"
	"github.com/bluesky-social/indigo/atproto/syntax"
)

// Fault builders. Each returns an event that is well formed except for the
// one property named, which a correct relay must reject. None of them
// advances the account: the next Commit chains from the last good one.

// Fault sizes.
const (
	// oversizedPosts x oversizedPostText is the record payload of
	// OversizedCommit: about 2.03 MB, over MaxBlocksBytes but under
	// cbor-gen's 2 MiB byte-string limit (so the frame still decodes), the
	// 5 MB frame limit and MaxCommitOps: only the blocks size is wrong.
	oversizedPosts    = 101
	oversizedPostText = 20_000
	// futureRevSkew is how far ahead FutureRevCommit dates its rev.
	futureRevSkew = FutureRevTolerance + 5*time.Minute
)

// BadSignatureCommit is a valid next commit signed with a fresh key of the
// account's type that the DID document does not name.
func (a *Account) BadSignatureCommit() (*comatproto.SyncSubscribeRepos_Commit, error) {
	key, err := newKey(a.keyType)
	if err != nil {
		return nil, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.build(commitSpec{ops: 1, signer: key})
}

// StaleRevCommit is a correctly signed, correctly chained commit whose rev
// is one microsecond older than the last commit's rev (a replay or a
// clock going backwards). It needs a previous commit.
func (a *Account) StaleRevCommit() (*comatproto.SyncSubscribeRepos_Commit, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.rev == "" {
		return nil, ErrNoCommit
	}
	last, err := syntax.ParseTID(a.rev)
	if err != nil {
		return nil, err
	}
	older := syntax.NewTID(last.Time().UnixMicro()-1, last.ClockID())
	return a.build(commitSpec{ops: 1, rev: older.String()})
}

// FutureRevCommit is a correct commit whose rev is dated ten minutes ahead,
// past the relay's five-minute tolerance.
func (a *Account) FutureRevCommit() (*comatproto.SyncSubscribeRepos_Commit, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	rev := syntax.NewTIDFromTime(time.Now().Add(futureRevSkew), a.clock.ClockID)
	return a.build(commitSpec{ops: 1, rev: rev.String()})
}

// TooManyOpsCommit is a correct commit of MaxCommitOps+1 ops.
func (a *Account) TooManyOpsCommit() (*comatproto.SyncSubscribeRepos_Commit, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.build(commitSpec{ops: MaxCommitOps + 1})
}

// OversizedCommit is a correct commit whose blocks exceed MaxBlocksBytes
// (101 posts of 20 kB text) while the frame stays decodable.
func (a *Account) OversizedCommit() (*comatproto.SyncSubscribeRepos_Commit, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.build(commitSpec{ops: oversizedPosts, postText: oversizedPostText})
}

// BrokenPrevDataCommit is a correctly signed commit whose prevData does
// not match the tree before it: MST inversion must fail. It needs a
// previous commit.
func (a *Account) BrokenPrevDataCommit() (*comatproto.SyncSubscribeRepos_Commit, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.rev == "" {
		return nil, ErrNoCommit
	}
	// The previous commit's CID is a real dag-cbor CID that is not the
	// previous tree root.
	wrong := a.head
	return a.build(commitSpec{ops: 1, prevData: &wrong})
}

// GarbageFrame is a WebSocket payload that is not CBOR at all.
func GarbageFrame() []byte {
	return []byte("\xff\xfe this is not a DAG-CBOR event stream frame \x00\x01")
}

// TruncatedFrame cuts a valid frame payload in the middle of its body, so
// the header decodes and the body does not.
func TruncatedFrame(frame []byte) []byte {
	n := len(frame) / 2
	if n < 1 {
		n = len(frame)
	}
	return append([]byte(nil), frame[:n]...)
}

// UnknownTypeFrame is a well-formed frame with a message type no relay
// knows; relays skip it rather than fail the connection.
func UnknownTypeFrame() []byte {
	// {t: "#unknown", op: 1} (DAG-CBOR key order) followed by {seq: 0}
	return []byte{
		0xa2, 0x61, 't', 0x68, '#', 'u', 'n', 'k', 'n', 'o', 'w', 'n', 0x62, 'o', 'p', 0x01,
		0xa1, 0x63, 's', 'e', 'q', 0x00,
	}
}

// FaultKind names a fault event mixed into a pregenerated batch. The names
// are the relay's drop reasons for them.
type FaultKind string

// Fault kinds.
const (
	FaultNone         FaultKind = ""
	FaultBadSignature FaultKind = "bad_signature"
	FaultWrongHost    FaultKind = "wrong_host"
	FaultStaleRev     FaultKind = "stale_rev"
	FaultGarbage      FaultKind = "garbage"
)

// wrongHostVictimShare: one account in this many (at least one) is set
// aside to send only wrong-host commits, so the commits a relay drops for
// the wrong host never break the chain of an account it follows.
const wrongHostVictimShare = 50

// ErrFaultOptions is returned for fault fractions outside [0, 1], summing
// over 1, or a negative disconnect rate.
var ErrFaultOptions = errors.New("perf: fault fractions must be in [0, 1] and sum to at most 1; disconnects >= 0")

// FaultOptions mixes faults into a pregenerated batch. The fractions are
// of the batch's events; each fault event replaces a valid one.
type FaultOptions struct {
	// BadSignature: commits signed with a key the DID document does not name.
	BadSignature float64
	// WrongHost: valid commits of an account sent by another host (needs
	// two hosts; from accounts set aside for it, see wrongHostVictimShare).
	WrongHost float64
	// StaleRev: correctly signed commits whose rev is older than the last.
	StaleRev float64
	// Garbage: WebSocket messages that are not CBOR at all.
	Garbage float64
	// Disconnects is the rate (per second, over the whole network) at
	// which the emitter abruptly closes a random host's subscriptions.
	Disconnects float64
}

// Any reports whether any fault is configured.
func (f FaultOptions) Any() bool {
	return f.BadSignature > 0 || f.WrongHost > 0 || f.StaleRev > 0 || f.Garbage > 0 || f.Disconnects > 0
}

func (f FaultOptions) validate() error {
	sum := 0.0
	for _, v := range []float64{f.BadSignature, f.WrongHost, f.StaleRev, f.Garbage} {
		if v < 0 || v > 1 {
			return ErrFaultOptions
		}
		sum += v
	}
	if sum > 1 || f.Disconnects < 0 {
		return ErrFaultOptions
	}
	return nil
}

// draw picks the kind of one event from a uniform u in [0, 1).
func (f FaultOptions) draw(u float64) FaultKind {
	for _, k := range []struct {
		p    float64
		kind FaultKind
	}{{f.BadSignature, FaultBadSignature}, {f.WrongHost, FaultWrongHost}, {f.StaleRev, FaultStaleRev}, {f.Garbage, FaultGarbage}} {
		if u < k.p {
			return k.kind
		}
		u -= k.p
	}
	return FaultNone
}
