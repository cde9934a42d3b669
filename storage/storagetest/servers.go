// Package storagetest holds the conformance suites that every backend runs
// (one per interface of package gateway) and the helpers that hand tests the
// real Redis and MinIO servers started by make test.
package storagetest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	goredis "github.com/redis/go-redis/v9"
)

// skipAllowed reports whether a missing server may skip rather than fail: only
// outside CI and only when GATEWAY_TEST_SKIP names it.
func skipAllowed(name string) bool {
	return os.Getenv("CI") != "true" && slices.Contains(strings.Split(os.Getenv("GATEWAY_TEST_SKIP"), ","), name)
}

// RedisURL returns the URL of the Redis server started by make test
// (GATEWAY_TEST_REDIS_URL). A missing server fails the test; it skips only
// when GATEWAY_TEST_SKIP contains "redis" and CI is not "true".
func RedisURL(t testing.TB) string {
	t.Helper()
	if u := os.Getenv("GATEWAY_TEST_REDIS_URL"); u != "" {
		return u
	}
	if skipAllowed("redis") {
		t.Skip("redis skipped by GATEWAY_TEST_SKIP")
	}
	t.Fatal("GATEWAY_TEST_REDIS_URL is unset: run make test, which starts redis-server")
	return ""
}

// RedisClusterURL returns the seed URL of the 3-master Redis Cluster started
// by make test (GATEWAY_TEST_REDIS_CLUSTER_URL, several addresses as
// redis://h1:p1?addr=h2:p2&addr=h3:p3). A missing cluster fails the test;
// it skips only when GATEWAY_TEST_SKIP contains "redis-cluster" and CI is
// not "true".
func RedisClusterURL(t testing.TB) string {
	t.Helper()
	if u := os.Getenv("GATEWAY_TEST_REDIS_CLUSTER_URL"); u != "" {
		return u
	}
	if skipAllowed("redis-cluster") {
		t.Skip("redis cluster skipped by GATEWAY_TEST_SKIP")
	}
	t.Fatal("GATEWAY_TEST_REDIS_CLUSTER_URL is unset: run make test, which starts a Redis Cluster")
	return ""
}

// RedisServers returns the Redis deployments every Redis suite runs
// against, by name: the single server and the cluster.
func RedisServers(t testing.TB) map[string]string {
	t.Helper()
	return map[string]string{"single": RedisURL(t), "cluster": RedisClusterURL(t)}
}

// RedisPrefix returns a key prefix unique to this test, and deletes every key
// under it in the single Redis when the test ends.
func RedisPrefix(t testing.TB) string {
	t.Helper()
	return RedisPrefixIn(t, RedisURL(t))
}

// RedisPrefixIn is RedisPrefix for the Redis at url, a single server or a
// cluster (a URL with addr parameters), whose every master is scanned.
func RedisPrefixIn(t testing.TB, url string) string {
	t.Helper()
	prefix := "test:" + RandomName() + ":"
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		deleteKeys := func(ctx context.Context, rdb *goredis.Client) error {
			iter := rdb.Scan(ctx, 0, prefix+"*", 1000).Iterator()
			for iter.Next(ctx) {
				rdb.Del(ctx, iter.Val())
			}
			return nil
		}
		if strings.Contains(url, "addr=") {
			opts, err := goredis.ParseClusterURL(url)
			if err != nil {
				return
			}
			rdb := goredis.NewClusterClient(opts)
			defer rdb.Close()
			_ = rdb.ForEachMaster(ctx, deleteKeys)
			return
		}
		opts, err := goredis.ParseURL(url)
		if err != nil {
			return
		}
		rdb := goredis.NewClient(opts)
		defer rdb.Close()
		_ = deleteKeys(ctx, rdb)
	})
	return prefix
}

// MinIOServer is the S3 endpoint started by make test.
type MinIOServer struct {
	Endpoint  string // host:port
	AccessKey string
	SecretKey string
}

// MinIO returns the MinIO server started by make test (GATEWAY_TEST_S3_*).
// A missing server fails the test; it skips only when GATEWAY_TEST_SKIP
// contains "minio" and CI is not "true".
func MinIO(t testing.TB) MinIOServer {
	t.Helper()
	s := MinIOServer{
		Endpoint:  os.Getenv("GATEWAY_TEST_S3_ENDPOINT"),
		AccessKey: os.Getenv("GATEWAY_TEST_S3_ACCESS_KEY"),
		SecretKey: os.Getenv("GATEWAY_TEST_S3_SECRET_KEY"),
	}
	if s.Endpoint != "" {
		return s
	}
	if skipAllowed("minio") {
		t.Skip("minio skipped by GATEWAY_TEST_SKIP")
	}
	t.Fatal("GATEWAY_TEST_S3_ENDPOINT is unset: run make test, which starts MinIO")
	return s
}

// Bucket creates a fresh bucket on s for this test and removes it, with its
// objects, when the test ends.
func (s MinIOServer) Bucket(t testing.TB) string {
	t.Helper()
	client, err := minio.New(s.Endpoint, &minio.Options{Creds: credentials.NewStaticV4(s.AccessKey, s.SecretKey, "")})
	if err != nil {
		t.Fatal(err)
	}
	name := "test-" + RandomName()
	if err := client.MakeBucket(t.(interface{ Context() context.Context }).Context(), name, minio.MakeBucketOptions{}); err != nil {
		t.Fatalf("make bucket: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		for obj := range client.ListObjects(ctx, name, minio.ListObjectsOptions{Recursive: true}) {
			if obj.Err == nil {
				client.RemoveObject(ctx, name, obj.Key, minio.RemoveObjectOptions{})
			}
		}
		client.RemoveBucket(ctx, name)
	})
	return name
}

// RandomName returns 12 random lower-case hex characters.
func RandomName() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// LockedBucket creates a fresh bucket with S3 Object Lock (and so
// versioning) enabled for this test. When the test ends it removes every
// version, bypassing GOVERNANCE retention: tests lock in that mode, since
// a COMPLIANCE lock cannot be lifted before its date.
func (s MinIOServer) LockedBucket(t testing.TB) string {
	t.Helper()
	client, err := minio.New(s.Endpoint, &minio.Options{Creds: credentials.NewStaticV4(s.AccessKey, s.SecretKey, "")})
	if err != nil {
		t.Fatal(err)
	}
	name := "test-lock-" + RandomName()
	if err := client.MakeBucket(t.(interface{ Context() context.Context }).Context(), name, minio.MakeBucketOptions{ObjectLocking: true}); err != nil {
		t.Fatalf("make bucket with object lock: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		for obj := range client.ListObjects(ctx, name, minio.ListObjectsOptions{Recursive: true, WithVersions: true}) {
			if obj.Err == nil {
				client.RemoveObject(ctx, name, obj.Key, minio.RemoveObjectOptions{VersionID: obj.VersionID, GovernanceBypass: true})
			}
		}
		client.RemoveBucket(ctx, name)
	})
	return name
}
