// Package storage groups the backends that implement the interfaces package
// gateway declares: filesystem and s3 (gateway.BlobStore), bolt (embedded) and
// redis (gateway.Index, gateway.Queue and gateway.AuditLog). blobwrap holds
// the decorators every blob store runs behind (the key rule, per-operation
// metrics); internal holds what only the backends share (the record and
// dataset codecs of the indexes, group commit, leases and the Claim wait
// loop); storagetest holds the one conformance
// suite per interface that every implementation runs, and the helpers that
// find the real Redis and MinIO servers started by make test.
package storage
