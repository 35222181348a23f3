//go:build cgo

package relay

import (
	"crypto/sha256"

	"github.com/bluesky-social/indigo/atproto/atcrypto"
	"github.com/ethereum/go-ethereum/crypto/secp256k1"
)

// k256Key verifies K-256 signatures with bitcoin-core's libsecp256k1 (the
// cgo binding in go-ethereum). The key is held uncompressed, so a verify
// does not decompress it; libsecp256k1's verify rejects high-S signatures,
// as atcrypto's strict mode does.
type k256Key struct {
	pub [65]byte
}

func newK256Key(k *atcrypto.PublicKeyK256) commitKey {
	out := &k256Key{}
	if copy(out.pub[:], k.UncompressedBytes()) != len(out.pub) {
		return nil
	}
	return out
}

func (k *k256Key) HashAndVerify(content, sig []byte) error {
	if len(sig) != 64 {
		return atcrypto.ErrInvalidSignature
	}
	h := sha256.Sum256(content)
	if !secp256k1.VerifySignature(k.pub[:], h[:], sig) {
		return atcrypto.ErrInvalidSignature
	}
	return nil
}

const cgoEnabled = true
