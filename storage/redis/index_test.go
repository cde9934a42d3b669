package redis_test

import (
	"testing"

	"github.com/dicom-gateway/gateway/gateway"
	"github.com/dicom-gateway/gateway/storage/redis"
	"github.com/dicom-gateway/gateway/storage/storagetest"
)

func newTestIndex(t testing.TB) *redis.Index {
	return redis.NewIndex(openClient(t, storagetest.RedisURL(t)))
}

// openClient connects to the Redis at url (a server or a cluster) under a
// prefix of this test's, deleted when it ends.
func openClient(t testing.TB, url string) *redis.Client {
	c, err := redis.Open(url, storagetest.RedisPrefixIn(t, url))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestIndex runs the index suite on a single server (one shard under {idx},
// the layout of earlier versions) and on the 3-master cluster
// (ClusterShards shards spread over the masters, instance locators).
func TestIndex(t *testing.T) {
	for name, url := range storagetest.RedisServers(t) {
		t.Run(name, func(t *testing.T) {
			storagetest.TestIndex(t, func(t *testing.T) gateway.Index { return redis.NewIndex(openClient(t, url)) })
		})
	}
}

// TestIndexShardedOnOneServer runs the suite on the cluster layout with a
// few shards on the single server: the merged walks with shards that are
// often empty.
func TestIndexShardedOnOneServer(t *testing.T) {
	storagetest.TestIndex(t, func(t *testing.T) gateway.Index {
		return redis.NewShardedIndex(openClient(t, storagetest.RedisURL(t)), 3)
	})
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
