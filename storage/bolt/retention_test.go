package bolt_test

import (
	"path/filepath"
	"testing"

	"github.com/dicom-gateway/gateway/gateway"
	"github.com/dicom-gateway/gateway/storage/bolt"
	"github.com/dicom-gateway/gateway/storage/storagetest"
)

func TestRetentionUsageIndex(t *testing.T) {
	storagetest.TestUsageIndex(t, func(t *testing.T) storagetest.UsageIndexUnderTest { return newTestIndex(t) })
}

func TestHoldStore(t *testing.T) {
	storagetest.TestHoldStore(t, func(t *testing.T) gateway.HoldStore {
		db, err := bolt.Open(filepath.Join(t.TempDir(), "state.db"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { db.Close() })
		s, err := bolt.NewHolds(db)
		if err != nil {
			t.Fatal(err)
		}
		return s
	})
}

// TestRetentionUsageBackfill opens an index whose usage buckets are
// missing (an index written before them) and finds every study counted.
func TestRetentionUsageBackfill(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	db, err := bolt.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	x, err := bolt.NewIndex(db)
	if err != nil {
		t.Fatal(err)
	}
	for _, sop := range []string{"1.2.3.1.1", "1.2.3.1.2"} {
		if _, _, err := x.PutInstance(t.Context(), storagetest.Record("1.2.3", "1.2.3.1", sop, nil)); err != nil {
			t.Fatal(err)
		}
	}
	if err := bolt.DropUsageForTest(db); err != nil {
		t.Fatal(err)
	}
	x, err = bolt.NewIndex(db)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	tot, err := x.UsageTotals(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if want := (gateway.UsageTotals{Bytes: 2 * 1234, Studies: 1}); tot != want {
		t.Fatalf("UsageTotals after backfill = %+v, want %+v", tot, want)
	}
}
