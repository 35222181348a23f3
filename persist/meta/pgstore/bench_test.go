package pgstore

import (
	"testing"

	"github.com/relay/relay/persist/meta"
	"github.com/relay/relay/persist/meta/metatest"
)

// BenchmarkStore runs the shared store benchmarks on a fresh schema of the
// TEST_DATABASE_URL database; it skips when that is unset.
func BenchmarkStore(b *testing.B) {
	url := testDB(b)
	metatest.Bench(b, func(b *testing.B) meta.Store {
		return openSchema(b, url, newSchema(b, url))
	})
}
