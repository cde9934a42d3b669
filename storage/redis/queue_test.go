package redis_test

import (
	"testing"

	"github.com/dicom-gateway/gateway/gateway"
	"github.com/dicom-gateway/gateway/storage/redis"
	"github.com/dicom-gateway/gateway/storage/storagetest"
)

func TestQueue(t *testing.T) {
	storagetest.TestQueue(t, func(t *testing.T, opts gateway.QueueOptions) gateway.Queue {
		c, err := redis.Open(storagetest.RedisURL(t), storagetest.RedisPrefix(t))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		q, err := redis.NewQueue(t.Context(), c, opts)
		if err != nil {
			t.Fatal(err)
		}
		return q
	})
}
