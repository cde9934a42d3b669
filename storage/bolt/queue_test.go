package bolt_test

import (
	"path/filepath"
	"testing"

	"github.com/dicom-gateway/gateway/gateway"
	"github.com/dicom-gateway/gateway/storage/bolt"
	"github.com/dicom-gateway/gateway/storage/storagetest"
)

func TestQueue(t *testing.T) {
	storagetest.TestQueue(t, func(t *testing.T, opts gateway.QueueOptions) gateway.Queue {
		db, err := bolt.Open(filepath.Join(t.TempDir(), "state.db"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { db.Close() })
		q, err := bolt.NewQueue(db, opts)
		if err != nil {
			t.Fatal(err)
		}
		return q
	})
}
