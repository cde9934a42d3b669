package bolt_test

import (
	"path/filepath"
	"testing"

	"github.com/dicom-gateway/gateway/gateway"
	"github.com/dicom-gateway/gateway/storage/bolt"
	"github.com/dicom-gateway/gateway/storage/storagetest"
)

func newTestIndex(t testing.TB) *bolt.Index {
	db, err := bolt.Open(filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	x, err := bolt.NewIndex(db)
	if err != nil {
		t.Fatal(err)
	}
	return x
}

func TestIndex(t *testing.T) {
	storagetest.TestIndex(t, func(t *testing.T) gateway.Index { return newTestIndex(t) })
}

// BenchmarkQIDO loads storagetest.BenchStudies() studies (env
// GATEWAY_BENCH_STUDIES, default 100,000) and reports p50/p99 of the common
// searches.
func BenchmarkQIDO(b *testing.B) {
	if path := storagetest.BenchKeepPrefix(); path != "" {
		db, err := bolt.Open(path)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { db.Close() })
		x, err := bolt.NewIndex(db)
		if err != nil {
			b.Fatal(err)
		}
		storagetest.BenchIndexQueries(b, x)
		return
	}
	storagetest.BenchIndexQueries(b, newTestIndex(b))
}
