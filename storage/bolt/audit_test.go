package bolt

import (
	"path/filepath"
	"testing"

	bbolt "go.etcd.io/bbolt"

	"github.com/dicom-gateway/gateway/gateway"
	"github.com/dicom-gateway/gateway/storage/blobwrap"
	"github.com/dicom-gateway/gateway/storage/filesystem"
	"github.com/dicom-gateway/gateway/storage/storagetest"
)

// tamperableAuditLog gives the shared suite raw access to the bbolt bucket,
// as an attacker holding the data directory would have.
type tamperableAuditLog struct {
	*AuditLog
	db *DB
}

func (l *tamperableAuditLog) Replica(tb testing.TB) gateway.AuditLog {
	r, err := NewAuditLog(l.db, storagetest.AuditGatewayName)
	if err != nil {
		tb.Fatal(err)
	}
	return r
}

func (l *tamperableAuditLog) update(t *testing.T, fn func(recs *bbolt.Bucket) error) {
	t.Helper()
	if err := l.db.bolt.Update(func(tx *bbolt.Tx) error {
		return fn(tx.Bucket(auditBucket).Bucket(auditRecords))
	}); err != nil {
		t.Fatal(err)
	}
}

func (l *tamperableAuditLog) RawRecord(t *testing.T, seq int64) []byte {
	var raw []byte
	l.update(t, func(recs *bbolt.Bucket) error {
		raw = append([]byte(nil), recs.Get(auditSeqKey(seq))...)
		return nil
	})
	return raw
}

func (l *tamperableAuditLog) SetRawRecord(t *testing.T, seq int64, raw []byte) {
	l.update(t, func(recs *bbolt.Bucket) error { return recs.Put(auditSeqKey(seq), raw) })
}

func (l *tamperableAuditLog) DeleteRawRecord(t *testing.T, seq int64) {
	l.update(t, func(recs *bbolt.Bucket) error { return recs.Delete(auditSeqKey(seq)) })
}

func (l *tamperableAuditLog) Break(t *testing.T) {
	if err := l.db.Close(); err != nil {
		t.Fatal(err)
	}
}

func newTestAuditLog(tb testing.TB) storagetest.AuditStore {
	db, err := Open(filepath.Join(tb.TempDir(), "state.db"))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { db.Close() })
	l, err := NewAuditLog(db, storagetest.AuditGatewayName)
	if err != nil {
		tb.Fatal(err)
	}
	return &tamperableAuditLog{AuditLog: l, db: db}
}

func TestAuditLog(t *testing.T) {
	storagetest.TestAuditLog(t, func(t *testing.T) storagetest.AuditStore { return newTestAuditLog(t) })
}

// BenchmarkAuditRecord measures appends to the embedded log (each commit
// fsyncs; concurrent Records share a commit through DB.Batch).
func BenchmarkAuditRecord(b *testing.B) {
	storagetest.BenchAuditLog(b, func(b *testing.B) storagetest.AuditStore { return newTestAuditLog(b) })
}

func TestAuditArchive(t *testing.T) {
	storagetest.TestAuditArchive(t,
		func(t *testing.T) storagetest.AuditStore { return newTestAuditLog(t) },
		func(t *testing.T) gateway.BlobStore {
			fs, err := filesystem.New(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			return blobwrap.CheckKeys(fs)
		})
}
