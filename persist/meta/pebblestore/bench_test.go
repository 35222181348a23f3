package pebblestore

import (
	"testing"

	"github.com/relay/relay/persist/meta"
	"github.com/relay/relay/persist/meta/metatest"
)

// BenchmarkStore runs the shared store benchmarks on a Pebble directory
// under the test's temp dir (the real file system: fsyncs are real).
func BenchmarkStore(b *testing.B) {
	metatest.Bench(b, func(b *testing.B) meta.Store {
		s, err := Open(b.TempDir())
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { s.Close() })
		return s
	})
}
