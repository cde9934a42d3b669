package gateway

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"strings"
	"time"
	"unicode/utf8"
)

// BlobInfo describes one stored object.
type BlobInfo struct {
	Key     string
	Size    int64
	ModTime time.Time
}

// BlobStore keeps the original bytes of every instance under keys built by
// InstanceKey. Implementations: storage/filesystem (embedded default) and
// storage/s3 (MinIO or any S3-compatible server).
//
// Put streams r to key without holding it whole in memory and is atomic: if
// r fails or ctx ends, nothing is left under key and a previous object under
// key is unchanged; when Put returns nil the object is durable. Get returns
// length bytes from offset (length < 0: to the end); it returns ErrNotFound
// for a missing key and ErrInvalid for an offset beyond the end. A length
// past the end returns the bytes up to the end. Stat and
// Delete return ErrNotFound for a missing key. Walk calls fn for every key
// that starts with prefix, in lexical key order; an error from fn stops it and
// is returned. Unreachable storage is reported as ErrUnavailable. All methods
// are safe for concurrent use.
//
// Keys are slash-separated relative paths, as InstanceKey builds them: a key
// that CheckBlobKey refuses is rejected with ErrInvalid by Put, Get, Stat and
// Delete (and Stage), so that no key can name a file outside a filesystem
// store or differ between backends. Backends leave that check to the
// decorator that every caller puts in front of them (storage/blobwrap's
// CheckKeys), so that the rule is written once.
type BlobStore interface {
	Put(ctx context.Context, key string, r io.Reader) (size int64, err error)
	Get(ctx context.Context, key string, offset, length int64) (io.ReadCloser, error)
	Stat(ctx context.Context, key string) (BlobInfo, error)
	Delete(ctx context.Context, key string) error
	Walk(ctx context.Context, prefix string, fn func(BlobInfo) error) error
}

// BlobSHA256 reads the object under key once, streaming, and returns its
// SHA-256 (lower-case hex) and size.
func BlobSHA256(ctx context.Context, blobs BlobStore, key string) (sum string, size int64, err error) {
	rc, err := blobs.Get(ctx, key, 0, -1)
	if err != nil {
		return "", 0, err
	}
	defer rc.Close()
	h := sha256.New()
	if size, err = io.Copy(h, rc); err != nil {
		return "", 0, err
	}
	return hex.EncodeToString(h.Sum(nil)), size, nil
}

// CheckBlobKey enforces the key rule of BlobStore: a key is 1 to 1024 bytes
// of UTF-8 without a backslash or a control character, made of non-empty
// slash-separated elements none of which starts with "." (so no ".", ".."
// or hidden name, no leading, trailing or doubled slash).
func CheckBlobKey(key string) error {
	if !validBlobKey(key) {
		return fmt.Errorf("key %q: %w", key, ErrInvalid)
	}
	return nil
}

func validBlobKey(key string) bool {
	if key == "" || len(key) > 1024 || !utf8.ValidString(key) {
		return false
	}
	for _, c := range key {
		if c < 0x20 || c == 0x7f || c == '\\' {
			return false
		}
	}
	for elem := range strings.SplitSeq(key, "/") {
		if elem == "" || elem[0] == '.' {
			return false
		}
	}
	return true
}

// Pinger is implemented by every backend that can be unreachable; /readyz
// calls Ping on each and names the ones that fail.
type Pinger interface {
	Ping(ctx context.Context) error
}

// NetworkStore is implemented by blob stores whose every Get pays a network
// round trip and whose server can serve several at once (S3). Readers of
// many objects in a row then read the next ones ahead, concurrently, into
// bounded memory; from a local store that would only add a copy.
type NetworkStore interface {
	OverNetwork() bool
}

// OverNetwork reports whether b says it is a NetworkStore.
func OverNetwork(b BlobStore) bool {
	n, ok := b.(NetworkStore)
	return ok && n.OverNetwork()
}

// Stager is implemented by blob stores whose Put splits into streaming the
// bytes and making them durable, so that a caller receiving many objects in
// one stream (a STOW-RS request, a DIMSE association) can read the next
// object while earlier ones are synced: one receiver then keeps several
// syncs in flight and the store can share them, instead of paying one full
// sync latency per object in series. Both stores implement it: the
// filesystem store syncs and names the file at Commit, the S3 store PUTs
// the object (or completes its multipart upload) at Commit.
//
// Stage streams r into a place no reader sees, with Put's guarantees on
// failure: nothing is left under key. The caller must end every StagedBlob
// with Commit or Abort.
type Stager interface {
	Stage(ctx context.Context, key string, r io.Reader) (StagedBlob, error)
}

// StagedBlob is an object written by Stage and not yet visible. Commit makes
// it durable under its key, replacing any object there, atomically (after a
// nil error it survives a crash; after an error nothing under key changed and
// the staged bytes are gone). sha256Hex, when not empty, is the SHA-256 of the
// staged bytes that the caller computed as they passed: a store that signs
// its uploads (S3) sends it instead of hashing the bytes a second time, and
// the upload fails if it does not match. Abort discards the object. Either
// may be called once, from any goroutine.
//
// CommitNew is Commit for an object that must not replace another: when an
// object is already under key it fails with ErrConflict, changes nothing,
// and leaves the blob staged, so that the caller can look at the object
// there and then Commit (replace it) or Abort. Ingest commits a new
// instance with it, so that no upload can overwrite the bytes of an
// instance already acknowledged, even one that ran without the instance's
// lock (lost to a Redis failover). Any other error ends the blob as
// Commit's does.
type StagedBlob interface {
	Size() int64
	Commit(ctx context.Context, sha256Hex string) error
	CommitNew(ctx context.Context, sha256Hex string) error
	Abort()
}

// ObjectLock is a write-once retention lock on an object: until Until
// nobody can delete or overwrite the version written. Mode is
// ObjectLockCompliance (not even the bucket's root account can shorten
// it) or ObjectLockGovernance (users with the bypass permission can). It
// is about one object's immutability, not the retention policy that
// deletes old studies (Retention).
type ObjectLock struct {
	Mode  string
	Until time.Time
}

// ObjectLock modes, as S3 Object Lock names them.
const (
	ObjectLockCompliance = "COMPLIANCE"
	ObjectLockGovernance = "GOVERNANCE"
)

// RetentionLocker is implemented by blob stores that can write an object
// under an ObjectLock (S3 Object Lock, on a bucket created with it enabled).
// CanRetain returns nil when PutRetained will lock, and an error wrapping
// errors.ErrUnsupported when this store or bucket cannot (no Object Lock on
// the bucket, or a filesystem store: the decorators of storage/blobwrap
// answer so for a store without the method). PutRetained is Put whose
// object is locked until ret.Until; it fails rather than write an unlocked
// object. A locked version stays readable and undeletable until then; on a
// versioned bucket a later Put of the key adds a version and leaves the
// locked one in place.
type RetentionLocker interface {
	CanRetain(ctx context.Context) error
	PutRetained(ctx context.Context, key string, r io.Reader, ret ObjectLock) (int64, error)
}
