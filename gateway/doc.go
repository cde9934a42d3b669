// Package gateway is the domain of the DICOM transfer gateway: instances and
// their UIDs, the storage keys derived from them, ingest, query, retrieve,
// transfers, routing, audit events, roles and errors, and the interfaces the
// gateway consumes (BlobStore, Index, Queue, AuditLog). Reading and writing
// DICOM is package dicomcodec's; errors.go maps its failures to the domain's
// errors and STOW failure reasons. It imports the standard library,
// golang.org/x/text (name folding for fuzzy matching) and dicomcodec; never
// gin, minio-go, go-redis or another package of this module, so that every
// backend and the HTTP layer depend on it and not the other way round.
package gateway
