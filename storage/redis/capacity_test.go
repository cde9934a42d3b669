package redis_test

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"

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

// BenchmarkReindex times gateway reindex from MinIO into Redis
// (GATEWAY_BENCH_REINDEX instances, default 200).
func BenchmarkReindex(b *testing.B) {
	storagetest.BenchReindex(b, newTestBlobStore(b), newTestIndex(b))
}

// usedMemory is INFO memory's used_memory on the server c talks to.
func usedMemory(ctx context.Context, c *redis.Client) (int64, error) {
	info, err := c.Redis().Info(ctx, "memory").Result()
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
