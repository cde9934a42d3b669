package redis

import (
	"testing"

	"github.com/dicom-gateway/gateway/gateway"
	"github.com/dicom-gateway/gateway/storage/blobwrap"
	"github.com/dicom-gateway/gateway/storage/s3"
	"github.com/dicom-gateway/gateway/storage/storagetest"
)

// newClusterAuditLog is newTestAuditLog on the 3-master cluster.
func newClusterAuditLog(t *testing.T) storagetest.AuditStore {
	url := storagetest.RedisClusterURL(t)
	prefix := storagetest.RedisPrefixIn(t, url)
	return &tamperableAuditLog{
		AuditLog: NewAuditLog(openTestClient(t, url, prefix), storagetest.AuditGatewayName),
		url:      url, prefix: prefix,
	}
}

// TestAuditLogCluster runs the audit suite on the 3-master cluster, where
// the log stays in the one slot of its hash tag {audit}: a hash chain is
// totally ordered, every append compares and moves the one head, so it
// cannot be spread without giving up the chain.
func TestAuditLogCluster(t *testing.T) {
	storagetest.TestAuditLog(t, newClusterAuditLog)
}

// TestAuditArchiveCluster runs the archive suite over the log on the
// cluster: the trim script's keys (head, records, term indexes) are all in
// the {audit} slot.
func TestAuditArchiveCluster(t *testing.T) {
	storagetest.TestAuditArchive(t, newClusterAuditLog,
		func(t *testing.T) gateway.BlobStore {
			m := storagetest.MinIO(t)
			store, err := s3.New(s3.Config{Endpoint: m.Endpoint, Bucket: m.Bucket(t), AccessKey: m.AccessKey, SecretKey: gateway.Secret(m.SecretKey)})
			if err != nil {
				t.Fatal(err)
			}
			return blobwrap.CheckKeys(store)
		})
}
