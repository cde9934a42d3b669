// Package gateway is the domain of the DICOM transfer gateway: instances and
// their UIDs, the storage keys derived from them, transfers, audit events,
// roles and errors, and the interfaces the gateway consumes (BlobStore, Index,
// Queue, AuditLog). It imports the standard library and, in dicomheader.go
// only, github.com/suyashkumar/dicom; never gin, minio-go, go-redis or another
// package of this module, so that every backend and the HTTP layer depend on it
// and not the other way round.
package gateway
