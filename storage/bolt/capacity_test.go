package bolt_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/dicom-gateway/gateway/storage/bolt"
	"github.com/dicom-gateway/gateway/storage/filesystem"
	"github.com/dicom-gateway/gateway/storage/storagetest"
)

// BenchmarkCapacity loads storagetest.CapacityInstances() generated CT
// records (GATEWAY_BENCH_INSTANCES, default 10,000) into a fresh embedded
// index and reports its file's growth per instance and QIDO p50/p99:
//
//	GATEWAY_BENCH_INSTANCES=1000000 go test -run '^$' -bench Capacity -benchtime 1x ./storage/bolt/
func BenchmarkCapacity(b *testing.B) {
	path := filepath.Join(b.TempDir(), "state.db")
	db, err := bolt.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { db.Close() })
	x, err := bolt.NewIndex(db)
	if err != nil {
		b.Fatal(err)
	}
	storagetest.BenchCapacity(b, x, func(context.Context) (int64, error) {
		fi, err := os.Stat(path)
		if err != nil {
			return 0, err
		}
		return fi.Size(), nil
	})
}

// BenchmarkReindex times gateway reindex from a filesystem blob store into
// the embedded index (GATEWAY_BENCH_REINDEX instances, default 200).
func BenchmarkReindex(b *testing.B) {
	blobs, err := filesystem.New(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	storagetest.BenchReindex(b, blobs, newTestIndex(b))
}
