package redis_test

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"

	goredis "github.com/redis/go-redis/v9"

	"github.com/dicom-gateway/gateway/gateway"
	"github.com/dicom-gateway/gateway/storage/redis"
	"github.com/dicom-gateway/gateway/storage/s3"
	"github.com/dicom-gateway/gateway/storage/storagetest"
)

// BenchmarkCapacity loads storagetest.CapacityInstances() generated CT
// records (GATEWAY_BENCH_INSTANCES, default 10,000) into a fresh index and
// reports Redis memory per instance (INFO memory used_memory before and
// after; run it on a Redis no one else writes to, as scripts/testenv.sh
// starts) and QIDO p50/p99 at that size:
//
//	GATEWAY_BENCH_INSTANCES=1000000 scripts/testenv.sh go test -run '^$' -bench Capacity -benchtime 1x ./storage/redis/
func BenchmarkCapacity(b *testing.B) {
	c, err := redis.Open(storagetest.RedisURL(b), storagetest.RedisPrefix(b))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	storagetest.BenchCapacity(b, redis.NewIndex(c), func(ctx context.Context) (int64, error) {
		return usedMemory(ctx, c)
	})
}

// BenchmarkCapacityCluster is BenchmarkCapacity on the 3-master Redis
// Cluster scripts/testenv.sh starts (GATEWAY_TEST_REDIS_CLUSTER_URL); memory
// is used_memory summed over the masters, so the figure includes each
// instance's locator key and the shards' own search sets:
//
//	GATEWAY_BENCH_INSTANCES=1000000 scripts/testenv.sh go test -run '^$' -bench CapacityCluster -benchtime 1x ./storage/redis/
func BenchmarkCapacityCluster(b *testing.B) {
	c, err := redis.Open(storagetest.RedisClusterURL(b), storagetest.RedisPrefix(b))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	storagetest.BenchCapacity(b, redis.NewIndex(c), func(ctx context.Context) (int64, error) {
		return usedMemory(ctx, c)
	})
}

// BenchmarkReindex times gateway reindex from MinIO into Redis
// (GATEWAY_BENCH_REINDEX instances, default 200).
func BenchmarkReindex(b *testing.B) {
	storagetest.BenchReindex(b, newTestBlobStore(b), newTestIndex(b))
}

// usedMemory is INFO memory's used_memory on the server c talks to, or
// the sum over the masters of a cluster.
func usedMemory(ctx context.Context, c *redis.Client) (int64, error) {
	cc, ok := c.Redis().(*goredis.ClusterClient)
	if !ok {
		return nodeUsedMemory(ctx, c.Redis())
	}
	var mu sync.Mutex
	var total int64
	err := cc.ForEachMaster(ctx, func(ctx context.Context, node *goredis.Client) error {
		n, err := nodeUsedMemory(ctx, node)
		mu.Lock()
		total += n
		mu.Unlock()
		return err
	})
	return total, err
}

func nodeUsedMemory(ctx context.Context, node goredis.Cmdable) (int64, error) {
	info, err := node.Info(ctx, "memory").Result()
	if err != nil {
		return 0, err
	}
	for line := range strings.SplitSeq(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "used_memory:"); ok {
			return strconv.ParseInt(v, 10, 64)
		}
	}
	return 0, fmt.Errorf("INFO memory has no used_memory")
}

// newTestBlobStore is a fresh bucket on the test MinIO.
func newTestBlobStore(tb testing.TB) gateway.BlobStore {
	srv := storagetest.MinIO(tb)
	s, err := s3.New(s3.Config{Endpoint: srv.Endpoint, Bucket: srv.Bucket(tb), AccessKey: srv.AccessKey,
		SecretKey: gateway.Secret(srv.SecretKey), Region: "us-east-1"})
	if err != nil {
		tb.Fatal(err)
	}
	return s
}
