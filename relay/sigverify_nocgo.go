//go:build !cgo

package relay

import "github.com/bluesky-social/indigo/atproto/atcrypto"

// Without cgo, K-256 keys are verified by atcrypto (pure Go, slower).
func newK256Key(*atcrypto.PublicKeyK256) commitKey { return nil }

const cgoEnabled = false
