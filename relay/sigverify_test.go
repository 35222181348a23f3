package relay

import (
	"crypto/rand"
	"encoding/asn1"
	"encoding/base64"
	"encoding/json"
	"math/big"
	mrand "math/rand/v2"
	"os"
	"testing"

	"github.com/bluesky-social/indigo/atproto/atcrypto"
)

// testdata/signature-fixtures.json is crypto/signature-fixtures.json of
// github.com/bluesky-social/atproto-interop-tests (commit 056e5741), the
// same file as indigo's atproto/atcrypto/testdata.
func TestCommitKeyInteropFixtures(t *testing.T) {
	raw, err := os.ReadFile("testdata/signature-fixtures.json")
	if err != nil {
		t.Fatal(err)
	}
	var rows []struct {
		Comment         string `json:"comment"`
		MessageBase64   string `json:"messageBase64"`
		PublicKeyDID    string `json:"publicKeyDid"`
		SignatureBase64 string `json:"signatureBase64"`
		ValidSignature  bool   `json:"validSignature"`
	}
	if err := json.Unmarshal(raw, &rows); err != nil {
		t.Fatal(err)
	}
	if len(rows) < 6 {
		t.Fatalf("%d fixtures", len(rows))
	}
	k256 := 0
	for _, row := range rows {
		pub, err := atcrypto.ParsePublicDIDKey(row.PublicKeyDID)
		if err != nil {
			t.Fatalf("%s: %v", row.Comment, err)
		}
		msg, err := base64.RawStdEncoding.DecodeString(row.MessageBase64)
		if err != nil {
			t.Fatal(err)
		}
		sig, err := base64.RawStdEncoding.DecodeString(row.SignatureBase64)
		if err != nil {
			t.Fatal(err)
		}
		key := newCommitKey(pub)
		if _, ok := pub.(*atcrypto.PublicKeyK256); ok {
			k256++
			checkFastK256(t, key)
		}
		got := key.HashAndVerify(msg, sig) == nil
		ref := pub.HashAndVerify(msg, sig) == nil
		if got != row.ValidSignature || ref != row.ValidSignature {
			t.Errorf("%s: commitKey %v, atcrypto %v, fixture says %v", row.Comment, got, ref, row.ValidSignature)
		}
	}
	if k256 == 0 {
		t.Fatal("no K-256 fixture")
	}
}

// checkFastK256 fails unless key is the libsecp256k1 verifier (cgo builds).
func checkFastK256(t *testing.T, key commitKey) {
	t.Helper()
	if !cgoEnabled {
		return
	}
	if _, ok := key.(*atcrypto.PublicKeyK256); ok {
		t.Fatal("K-256 key not on the libsecp256k1 verifier in a cgo build")
	}
}

var secp256k1N, _ = new(big.Int).SetString("FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141", 16)

func scalar32(x *big.Int) []byte {
	out := make([]byte, 32)
	x.FillBytes(out)
	return out
}

// TestCommitKeyMatchesAtcrypto compares the commit verifier's verdicts with
// atcrypto's strict HashAndVerify on random keys and messages: valid
// signatures, their high-S twins (valid ECDSA, refused by atproto), DER
// encodings, corrupted and truncated signatures, out-of-range scalars,
// altered messages and other keys.
func TestCommitKeyMatchesAtcrypto(t *testing.T) {
	keys, perKey := 100, 20
	if testing.Short() {
		keys, perKey = 20, 10
	}
	rng := mrand.New(mrand.NewPCG(1, 2))
	var prevPub atcrypto.PublicKey
	for i := 0; i < keys; i++ {
		priv, err := atcrypto.GeneratePrivateKeyK256()
		if err != nil {
			t.Fatal(err)
		}
		pubI, err := priv.PublicKey()
		if err != nil {
			t.Fatal(err)
		}
		// The key as a DID document carries it: compressed bytes.
		pub, err := atcrypto.ParsePublicBytesK256(pubI.Bytes())
		if err != nil {
			t.Fatal(err)
		}
		// atproto keys are compressed; the uncompressed form is refused
		// before any verifier sees it.
		if _, err := atcrypto.ParsePublicBytesK256(pub.UncompressedBytes()); err == nil {
			t.Fatal("atcrypto parsed an uncompressed K-256 key")
		}
		key := newCommitKey(pub)
		checkFastK256(t, key)
		var other commitKey
		if prevPub != nil {
			other = newCommitKey(prevPub)
		}
		for j := 0; j < perKey; j++ {
			msg := make([]byte, rng.IntN(600))
			_, _ = rand.Read(msg)
			sig, err := priv.HashAndSign(msg)
			if err != nil {
				t.Fatal(err)
			}
			same := func(what string, m, s []byte, want bool) {
				t.Helper()
				got := key.HashAndVerify(m, s) == nil
				ref := pub.HashAndVerify(m, s) == nil
				if got != ref || got != want {
					t.Fatalf("key %d msg %d %s: commitKey %v, atcrypto %v, want %v", i, j, what, got, ref, want)
				}
			}
			same("valid", msg, sig, true)

			r := new(big.Int).SetBytes(sig[:32])
			s := new(big.Int).SetBytes(sig[32:])
			high := append(scalar32(r), scalar32(new(big.Int).Sub(secp256k1N, s))...)
			if pub.HashAndVerifyLenient(msg, high) != nil {
				t.Fatal("high-S twin is not a valid ECDSA signature")
			}
			same("high-S", msg, high, false)

			der, err := asn1.Marshal(struct{ R, S *big.Int }{r, s})
			if err != nil {
				t.Fatal(err)
			}
			same("DER", msg, der, false)

			bad := append([]byte(nil), sig...)
			bad[rng.IntN(len(bad))] ^= 1 << rng.IntN(8)
			same("bit flip", msg, bad, false)
			same("truncated", msg, sig[:63], false)
			same("extended", msg, append(append([]byte(nil), sig...), 0), false)
			same("empty", msg, nil, false)
			same("r=0", msg, append(make([]byte, 32), sig[32:]...), false)
			same("s=0", msg, append(append([]byte(nil), sig[:32]...), make([]byte, 32)...), false)
			same("r=n", msg, append(scalar32(secp256k1N), sig[32:]...), false)
			if rn := new(big.Int).Add(r, secp256k1N); rn.BitLen() <= 256 {
				same("r+n", msg, append(scalar32(rn), sig[32:]...), false) // overflows, reduces to r
			}
			same("s=n", msg, append(append([]byte(nil), sig[:32]...), scalar32(secp256k1N)...), false)
			ff := make([]byte, 64)
			for k := range ff {
				ff[k] = 0xff
			}
			same("all ones", msg, ff, false)

			alt := append([]byte(nil), msg...)
			if len(alt) == 0 {
				alt = []byte{0}
			} else {
				alt[rng.IntN(len(alt))] ^= 1 << rng.IntN(8)
			}
			same("altered message", alt, sig, false)
			if other != nil {
				got := other.HashAndVerify(msg, sig) == nil
				ref := prevPub.HashAndVerify(msg, sig) == nil
				if got || ref {
					t.Fatalf("key %d msg %d: another key verified (commitKey %v, atcrypto %v)", i, j, got, ref)
				}
			}
		}
		prevPub = pub
	}
}

// TestCommitKeyP256 checks that P-256 keys stay on atcrypto.
func TestCommitKeyP256(t *testing.T) {
	priv, err := atcrypto.GeneratePrivateKeyP256()
	if err != nil {
		t.Fatal(err)
	}
	pub, err := priv.PublicKey()
	if err != nil {
		t.Fatal(err)
	}
	if k := newCommitKey(pub); k != commitKey(pub) {
		t.Fatalf("P-256 key became %T", k)
	}
	sig, err := priv.HashAndSign([]byte("m"))
	if err != nil {
		t.Fatal(err)
	}
	if err := newCommitKey(pub).HashAndVerify([]byte("m"), sig); err != nil {
		t.Fatal(err)
	}
}
