package redis_test

import (
	"testing"

	"github.com/dicom-gateway/gateway/gateway"
	"github.com/dicom-gateway/gateway/storage/redis"
	"github.com/dicom-gateway/gateway/storage/storagetest"
)

func TestRetentionUsageIndex(t *testing.T) {
	storagetest.TestUsageIndex(t, func(t *testing.T) storagetest.UsageIndexUnderTest { return newTestIndex(t) })
}

func TestHoldStore(t *testing.T) {
	storagetest.TestHoldStore(t, func(t *testing.T) gateway.HoldStore {
		c, err := redis.Open(storagetest.RedisURL(t), storagetest.RedisPrefix(t))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return redis.NewHolds(c)
	})
}
