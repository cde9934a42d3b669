// Package storage groups the backends that implement the interfaces package
// gateway declares: filesystem and s3 (gateway.BlobStore), bolt (embedded) and
// redis (gateway.Index, queue and audit log). storagetest holds the one
// conformance suite per interface that every implementation runs, and the
// helpers that find the real Redis and MinIO servers started by make test.
package storage
