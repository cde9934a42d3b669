package redis_test

import (
	"testing"

	"github.com/dicom-gateway/gateway/gateway"
	"github.com/dicom-gateway/gateway/storage/redis"
	"github.com/dicom-gateway/gateway/storage/storagetest"
)

func newTestIndex(t testing.TB) *redis.Index {
	c, err := redis.Open(storagetest.RedisURL(t), storagetest.RedisPrefix(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return redis.NewIndex(c)
}

func TestIndex(t *testing.T) {
	storagetest.TestIndex(t, func(t *testing.T) gateway.Index { return newTestIndex(t) })
}

// BenchmarkQIDO loads storagetest.BenchStudies() studies (env
// GATEWAY_BENCH_STUDIES, default 100,000) and reports p50/p99 of the common
// searches.
func BenchmarkQIDO(b *testing.B) {
	x := newTestIndex(b)
	if prefix := storagetest.BenchKeepPrefix(); prefix != "" {
		c, err := redis.Open(storagetest.RedisURL(b), prefix)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { c.Close() })
		x = redis.NewIndex(c)
	}
	storagetest.BenchIndexQueries(b, x)
}
