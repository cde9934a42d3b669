// Package filesystem is the embedded default gateway.BlobStore: one file per
// key under a data directory, opened through os.Root so that no key, valid or
// not, can name a file outside it (the unnamed files of a Put are linked
// through directory handles opened the same way). The key rule itself is
// checked in front of it by blobwrap.CheckKeys. It imports package gateway,
// storage/internal, golang.org/x/sys/unix (O_TMPFILE, linkat, renameat on
// Linux) and the standard library only.
package filesystem
