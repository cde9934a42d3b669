package redis_test

import (
	"testing"

	"github.com/dicom-gateway/gateway/gateway"
	"github.com/dicom-gateway/gateway/storage/redis"
	"github.com/dicom-gateway/gateway/storage/storagetest"
)

// TestQueue runs the queue suite on a single server and on the cluster,
// where the queue lives in the one slot of its hash tag {xfer}.
func TestQueue(t *testing.T) {
	for name, url := range storagetest.RedisServers(t) {
		t.Run(name, func(t *testing.T) {
			storagetest.TestQueue(t, func(t *testing.T, opts gateway.QueueOptions) gateway.Queue {
				q, err := redis.NewQueue(t.Context(), openClient(t, url), opts)
				if err != nil {
					t.Fatal(err)
				}
				return q
			})
		})
	}
}
