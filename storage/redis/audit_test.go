package redis

import (
	"strconv"
	"testing"

	"github.com/dicom-gateway/gateway/gateway"
	"github.com/dicom-gateway/gateway/storage/blobwrap"
	"github.com/dicom-gateway/gateway/storage/s3"
	"github.com/dicom-gateway/gateway/storage/storagetest"
)

// tamperableAuditLog gives the shared suite raw access to the records hash,
// as an attacker with a Redis connection would have.
type tamperableAuditLog struct {
	*AuditLog
	url, prefix string
}

func openTestClient(tb testing.TB, url, prefix string) *Client {
	c, err := Open(url, prefix)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	return c
}

// Replica opens its own connection pool, as another gateway process would.
func (l *tamperableAuditLog) Replica(tb testing.TB) gateway.AuditLog {
	return NewAuditLog(openTestClient(tb, l.url, l.prefix), storagetest.AuditGatewayName)
}

func (l *tamperableAuditLog) RawRecord(t *testing.T, seq int64) []byte {
	raw, err := l.c.rdb.HGet(t.Context(), l.c.Key(auditRecKey), strconv.FormatInt(seq, 10)).Bytes()
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

func (l *tamperableAuditLog) SetRawRecord(t *testing.T, seq int64, raw []byte) {
	if err := l.c.rdb.HSet(t.Context(), l.c.Key(auditRecKey), strconv.FormatInt(seq, 10), raw).Err(); err != nil {
		t.Fatal(err)
	}
}

func (l *tamperableAuditLog) DeleteRawRecord(t *testing.T, seq int64) {
	if err := l.c.rdb.HDel(t.Context(), l.c.Key(auditRecKey), strconv.FormatInt(seq, 10)).Err(); err != nil {
		t.Fatal(err)
	}
}

func (l *tamperableAuditLog) Break(t *testing.T) {
	if err := l.c.Close(); err != nil {
		t.Fatal(err)
	}
}

func newTestAuditLog(tb testing.TB) storagetest.AuditStore {
	url, prefix := storagetest.RedisURL(tb), storagetest.RedisPrefix(tb)
	return &tamperableAuditLog{
		AuditLog: NewAuditLog(openTestClient(tb, url, prefix), storagetest.AuditGatewayName),
		url:      url, prefix: prefix,
	}
}

func TestAuditLog(t *testing.T) {
	storagetest.TestAuditLog(t, func(t *testing.T) storagetest.AuditStore { return newTestAuditLog(t) })
}

// BenchmarkAuditRecord measures appends to the shared Redis log: one append
// script per group commit, replicas racing on the chain head.
func BenchmarkAuditRecord(b *testing.B) {
	storagetest.BenchAuditLog(b, func(b *testing.B) storagetest.AuditStore { return newTestAuditLog(b) })
}

// TestAuditArchive runs the archive suite over the Redis log with its
// segments in a MinIO bucket.
func TestAuditArchive(t *testing.T) {
	storagetest.TestAuditArchive(t,
		func(t *testing.T) storagetest.AuditStore { return newTestAuditLog(t) },
		func(t *testing.T) gateway.BlobStore {
			m := storagetest.MinIO(t)
			store, err := s3.New(s3.Config{Endpoint: m.Endpoint, Bucket: m.Bucket(t), AccessKey: m.AccessKey, SecretKey: gateway.Secret(m.SecretKey)})
			if err != nil {
				t.Fatal(err)
			}
			return blobwrap.CheckKeys(store)
		})
}
