package relay

import (
	"github.com/bluesky-social/indigo/atproto/atcrypto"
)

// commitKey verifies the signatures made by an account's signing key: the
// SHA-256 of the content, a 64-byte compact [R|S] signature with low S
// (atcrypto's strict HashAndVerify rules). An atcrypto.PublicKey is one.
type commitKey interface {
	HashAndVerify(content, sig []byte) error
}

// newCommitKey returns the verifier the validation path uses for key:
// K-256 keys get libsecp256k1's verify (k256Key, about 2.4x faster than
// atcrypto's here) where the binary is built with cgo; any other key, and
// K-256 without cgo, is atcrypto's own. TestCommitKeyMatchesAtcrypto checks
// that both give the same verdicts.
func newCommitKey(key atcrypto.PublicKey) commitKey {
	if k, ok := key.(*atcrypto.PublicKeyK256); ok {
		if f := newK256Key(k); f != nil {
			return f
		}
	}
	return key
}
