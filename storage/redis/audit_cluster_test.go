package redis

import (
	"testing"

	"github.com/dicom-gateway/gateway/storage/storagetest"
)

// TestAuditLogCluster runs the audit suite on the 3-master cluster, where
// the log stays in the one slot of its hash tag {audit}: a hash chain is
// totally ordered, every append compares and moves the one head, so it
// cannot be spread without giving up the chain.
func TestAuditLogCluster(t *testing.T) {
	storagetest.TestAuditLog(t, func(t *testing.T) storagetest.AuditStore {
		url := storagetest.RedisClusterURL(t)
		prefix := storagetest.RedisPrefixIn(t, url)
		return &tamperableAuditLog{
			AuditLog: NewAuditLog(openTestClient(t, url, prefix), storagetest.AuditGatewayName),
			url:      url, prefix: prefix,
		}
	})
}
