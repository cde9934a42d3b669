// Package filesystem is the embedded default gateway.BlobStore: one file per
// key under a data directory, opened through os.Root so that no key, valid or
// not, can name a file outside it. It imports package gateway and the
// standard library only.
package filesystem
