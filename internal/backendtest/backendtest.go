// Package backendtest opens, for a test, one complete set of backends of
// either family, so that every HTTP-level test can run on the embedded
// default (files + bbolt in a temporary directory) and on production (a
// fresh MinIO bucket + a fresh Redis key prefix) with one line. Servers come
// from storagetest, so a missing MinIO or Redis fails the test. The blob
// store runs behind blobwrap.Wrap, as in the gateway.
package backendtest

import (
	"path/filepath"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dicom-gateway/gateway/gateway"
	"github.com/dicom-gateway/gateway/storage/blobwrap"
	"github.com/dicom-gateway/gateway/storage/bolt"
	"github.com/dicom-gateway/gateway/storage/filesystem"
	"github.com/dicom-gateway/gateway/storage/redis"
	"github.com/dicom-gateway/gateway/storage/s3"
	"github.com/dicom-gateway/gateway/storage/storagetest"
)

// The two backend families.
const (
	Embedded   = "embedded"
	Production = "production"
)

// Kinds lists both families, for tests that loop over them.
var Kinds = []string{Embedded, Production}

// Options shape the opened backends.
type Options struct {
	GatewayName string               // written into audit records; default "test"
	Queue       gateway.QueueOptions // transfer queue options
}

// Backends is one set of implementations. DB is set for the embedded
// family and Redis for production, for tests that reach under the
// interfaces (e.g. to tamper with stored audit records).
type Backends struct {
	Blobs    gateway.BlobStore
	Index    gateway.Index
	AuditLog gateway.AuditLog
	Queue    gateway.Queue
	Holds    gateway.HoldStore
	DB       *bolt.DB
	Redis    *redis.Client
}

// Open opens a fresh set of the given family, closed when the test ends.
func Open(t testing.TB, kind string, opts Options) *Backends {
	t.Helper()
	if opts.GatewayName == "" {
		opts.GatewayName = "test"
	}
	b := &Backends{}
	switch kind {
	case Embedded:
		dir := t.TempDir()
		blobs, err := filesystem.New(filepath.Join(dir, "blobs"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { blobs.Close() })
		db, err := bolt.Open(filepath.Join(dir, "state.db"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { db.Close() })
		index, err := bolt.NewIndex(db)
		if err != nil {
			t.Fatal(err)
		}
		auditLog, err := bolt.NewAuditLog(db, opts.GatewayName)
		if err != nil {
			t.Fatal(err)
		}
		queue, err := bolt.NewQueue(db, opts.Queue)
		if err != nil {
			t.Fatal(err)
		}
		holds, err := bolt.NewHolds(db)
		if err != nil {
			t.Fatal(err)
		}
		b.Blobs, b.Index, b.AuditLog, b.Queue, b.Holds, b.DB = blobwrap.Wrap(blobs, prometheus.NewRegistry(), "filesystem"), index, auditLog, queue, holds, db
	case Production:
		m := storagetest.MinIO(t)
		blobs, err := s3.New(s3.Config{Endpoint: m.Endpoint, Bucket: m.Bucket(t), AccessKey: m.AccessKey, SecretKey: gateway.Secret(m.SecretKey), Region: "us-east-1"})
		if err != nil {
			t.Fatal(err)
		}
		c, err := redis.Open(storagetest.RedisURL(t), storagetest.RedisPrefix(t))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		queue, err := redis.NewQueue(t.Context(), c, opts.Queue)
		if err != nil {
			t.Fatal(err)
		}
		b.Blobs, b.Index, b.AuditLog, b.Queue, b.Redis = blobwrap.Wrap(blobs, prometheus.NewRegistry(), "s3"), redis.NewIndex(c), redis.NewAuditLog(c, opts.GatewayName), queue, c
		b.Holds = redis.NewHolds(c)
	default:
		t.Fatalf("backendtest: unknown backend family %q", kind)
	}
	return b
}
