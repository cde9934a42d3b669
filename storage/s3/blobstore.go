package s3

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/minio/minio-go/v7/pkg/s3utils"
	"golang.org/x/sync/semaphore"

	"github.com/dicom-gateway/gateway/gateway"
)

// Part sizes. S3 requires parts of at least 5 MiB (except the last) and at
// most 5 GiB, and at most 10,000 parts per object.
const (
	// DefaultPartSize is the part size when Config.PartSize is 0: objects up
	// to it go up in one PUT, larger ones in parts of this size, so one Put
	// holds at most this much memory (objects up to 156 GiB). minio-go's own
	// default for streams of unknown size is ~528 MiB per upload.
	DefaultPartSize = 16 << 20
	minPartSize     = 5 << 20
	maxPartSize     = 5 << 30
	maxParts        = 10000
)

// While S3 is unreachable: connect for at most dialTimeout, and try a
// request at most maxRetries times (with minio-go's jittered backoff of
// 200 ms doubling, about 1 s in all for a refused connection).
const (
	dialTimeout = 3 * time.Second
	maxRetries  = 3
)

// abortTimeout bounds the clean-up of a failed multipart upload, which runs
// even when the request's context has ended.
const abortTimeout = time.Minute

// Config locates the bucket. It maps to the serve flags --s3-endpoint,
// --s3-bucket, --s3-access-key, --s3-secret-key, --s3-region and --s3-tls.
type Config struct {
	Endpoint  string // host:port, without scheme
	Bucket    string
	AccessKey string
	SecretKey gateway.Secret
	// Region is the bucket's region; empty asks the server once (MinIO
	// answers us-east-1).
	Region string
	// TLS selects https.
	TLS bool
	// PartSize is the multipart part size and the memory bound of one Put;
	// 0 means DefaultPartSize. Between 5 MiB and 5 GiB.
	PartSize uint64
	// StageMemory bounds the bytes of small objects (up to PartSize) held
	// in memory between Stage and Commit, across the store; 0 means
	// DefaultStageMemory. A Stage beyond it waits for earlier commits.
	StageMemory int64
	// Logger is told, once, when the server turns out not to implement
	// conditional writes (CommitNew); nil discards.
	Logger *slog.Logger
}

// DefaultStageMemory is the default Config.StageMemory: 16 MiB, some
// sixteen CT slices (each counted at the 1 MiB buffer it is kept in:
// stageProbe) waiting for their PUT while the next ones are read. At
// 32 MiB STOW on Redis + MinIO was no faster (2026-12-05, in process,
// 107–114 against 110–112 MB/s) and a gateway's peak RSS 30–50 MiB higher,
// the buffers staying in the pool between bursts.
const DefaultStageMemory = 16 << 20

// BlobStore is a gateway.BlobStore on one S3 bucket; each key is an object
// of the same name. S3 makes an object visible only when its PUT or its
// multipart upload completes, so Put writes the final key directly and a
// failed Put aborts its multipart upload. Safe for concurrent use, also by
// several gateway replicas sharing the bucket.
type BlobStore struct {
	client   *minio.Client
	core     minio.Core
	bucket   string
	region   string
	partSize int
	bufs     sync.Pool // *[]byte of partSize
	// staging bounds the bytes of small objects held in memory between
	// Stage and Commit, across every request using the store.
	staging *semaphore.Weighted
	logger  *slog.Logger
	// unconditional is set once the server answered a conditional write
	// (If-None-Match: *) "not implemented": CommitNew then writes as Commit
	// does, rather than fail every new object.
	unconditional atomic.Bool
}

var (
	_ gateway.BlobStore       = (*BlobStore)(nil)
	_ gateway.Pinger          = (*BlobStore)(nil)
	_ gateway.Stager          = (*BlobStore)(nil)
	_ gateway.NetworkStore    = (*BlobStore)(nil)
	_ gateway.RetentionLocker = (*BlobStore)(nil)
)

// New checks cfg and returns a store for its bucket. It does not contact the
// server, so that a gateway starts while S3 is down and /readyz (Ping)
// reports it; call EnsureBucket to create the bucket.
func New(cfg Config) (*BlobStore, error) {
	if cfg.Endpoint == "" {
		return nil, fmt.Errorf("s3: endpoint is empty: %w", gateway.ErrInvalid)
	}
	if strings.Contains(cfg.Endpoint, "://") {
		return nil, fmt.Errorf("s3: endpoint %q: give host:port without scheme (https: set TLS): %w", cfg.Endpoint, gateway.ErrInvalid)
	}
	if err := s3utils.CheckValidBucketNameStrict(cfg.Bucket); err != nil {
		return nil, fmt.Errorf("s3: bucket %q: %w: %w", cfg.Bucket, gateway.ErrInvalid, err)
	}
	partSize := cfg.PartSize
	if partSize == 0 {
		partSize = DefaultPartSize
	}
	if partSize < minPartSize || partSize > maxPartSize {
		return nil, fmt.Errorf("s3: part size %d outside %d..%d: %w", partSize, minPartSize, maxPartSize, gateway.ErrInvalid)
	}
	tr, err := minio.DefaultTransport(cfg.TLS)
	if err != nil {
		return nil, fmt.Errorf("s3: %w", err)
	}
	tr.MaxIdleConnsPerHost = 64 // minio's 16 makes concurrent STOW requests reconnect
	// Bound how long a call takes while S3 is down, so that requests fail
	// fast with ErrUnavailable (503) instead of hanging: a dial gives up
	// after dialTimeout, and a failed request is tried maxRetries times in
	// all (minio-go's default of 10 retries a refused connection for ~5 s).
	tr.DialContext = (&net.Dialer{Timeout: dialTimeout, KeepAlive: 30 * time.Second}).DialContext
	client, err := minio.New(cfg.Endpoint, &minio.Options{
		Creds:      credentials.NewStaticV4(cfg.AccessKey, cfg.SecretKey.Reveal(), ""),
		Secure:     cfg.TLS,
		Region:     cfg.Region,
		Transport:  tr,
		MaxRetries: maxRetries,
	})
	if err != nil {
		return nil, fmt.Errorf("s3: endpoint %q: %w: %w", cfg.Endpoint, gateway.ErrInvalid, err)
	}
	s := &BlobStore{
		client:   client,
		core:     minio.Core{Client: client},
		bucket:   cfg.Bucket,
		region:   cfg.Region,
		partSize: int(partSize),
		logger:   cfg.Logger,
	}
	if s.logger == nil {
		s.logger = slog.New(slog.DiscardHandler)
	}
	stageMemory := cfg.StageMemory
	if stageMemory <= 0 {
		stageMemory = DefaultStageMemory
	}
	s.staging = semaphore.NewWeighted(max(stageMemory, int64(partSize)))
	s.bufs.New = func() any { b := make([]byte, s.partSize); return &b }
	return s, nil
}

// EnsureBucket creates the bucket if it does not exist. A bucket that exists
// already, or is created concurrently by another replica, is fine.
func (s *BlobStore) EnsureBucket(ctx context.Context) error {
	return s.ensureBucket(ctx, minio.MakeBucketOptions{Region: s.region})
}

// ensureBucket creates the bucket with opts unless it exists or another
// replica creates it first.
func (s *BlobStore) ensureBucket(ctx context.Context, opts minio.MakeBucketOptions) error {
	ok, err := s.client.BucketExists(ctx, s.bucket)
	if err != nil {
		return fmt.Errorf("s3: bucket %s: %w", s.bucket, translate(err))
	}
	if ok {
		return nil
	}
	err = s.client.MakeBucket(ctx, s.bucket, opts)
	var er minio.ErrorResponse
	if errors.As(err, &er) && er.Code == minio.BucketAlreadyOwnedByYou {
		return nil
	}
	if err != nil {
		return fmt.Errorf("s3: make bucket %s: %w", s.bucket, translate(err))
	}
	return nil
}

// probeKeyPrefix is where ProbeConditionalWrites writes; no instance key
// starts with it (they start with studies/).
const probeKeyPrefix = ".gateway/probe/"

// ProbeConditionalWrites finds out whether the server honours the
// If-None-Match: * of CommitNew, which keeps an acknowledged instance's
// object from being replaced: it PUTs a probe object, PUTs it again
// conditionally, and deletes it (removeProbe). A server that answers 501
// is handled as CommitNew handles it (unconditional writes, one warning).
// One that accepts the second PUT ignores the header, which nothing else
// can see: the operator is warned loudly, and ignores is true. Only a
// single PUT is probed, not a multipart completion (instances over the
// part size). An error means the probe could not run (the server is down,
// or the key is not writable); it says nothing either way.
func (s *BlobStore) ProbeConditionalWrites(ctx context.Context) (ignores bool, err error) {
	key := probeKeyPrefix + rand.Text()
	var versions []string
	defer func() { s.removeProbe(ctx, key, versions) }()
	put := func(onlyNew bool) error {
		var opts minio.PutObjectOptions
		if onlyNew {
			opts.SetMatchETagExcept("*")
		}
		info, err := s.client.PutObject(ctx, s.bucket, key, strings.NewReader("probe"), 5, opts)
		if err == nil && info.VersionID != "" {
			versions = append(versions, info.VersionID)
		}
		return err
	}
	if err := put(false); err != nil {
		return false, fmt.Errorf("s3: conditional write probe: %w", translate(err))
	}
	err = put(true)
	switch {
	case preconditionFailed(err):
		return false, nil
	case s.notImplemented(err):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("s3: conditional write probe: %w", translate(err))
	}
	s.logger.Warn("S3 SERVER IGNORES CONDITIONAL WRITES: it accepted a PUT with If-None-Match: * over an existing object; an upload of the same SOP Instance UID that got past a lost instance lock could overwrite an acknowledged one. Use a server that honours If-None-Match (MinIO, AWS S3) for the instance bucket",
		"bucket", s.bucket)
	return true, nil
}

// probeCleanupTimeout bounds the deletion of a probe object, so that a
// hanging server holds neither start-up nor shutdown for long.
const probeCleanupTimeout = 5 * time.Second

// removeProbe deletes the probe object: each version a versioned bucket
// keeps (a bucket with Object Lock is versioned; a plain delete would only
// add a marker), or the object itself when the server named no version,
// as after a PUT whose answer was lost. A version under a retention
// period cannot be deleted: that is logged with the key.
func (s *BlobStore) removeProbe(ctx context.Context, key string, versions []string) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), probeCleanupTimeout)
	defer cancel()
	if len(versions) == 0 {
		versions = []string{""}
	}
	for _, v := range versions {
		if err := s.client.RemoveObject(ctx, s.bucket, key, minio.RemoveObjectOptions{VersionID: v}); err != nil {
			s.logger.Warn("s3 conditional write probe: probe object not deleted", "bucket", s.bucket, "key", key, "version", v, gateway.LogKeyError, err.Error())
		}
	}
}

// Ping reports whether the bucket can be reached; any failure, including a
// missing bucket, is gateway.ErrUnavailable. minio-go retries a refused
// connection with back-off, so bound ctx.
func (s *BlobStore) Ping(ctx context.Context) error {
	ok, err := s.client.BucketExists(ctx, s.bucket)
	if err != nil {
		return fmt.Errorf("s3: bucket %s: %w: %w", s.bucket, gateway.ErrUnavailable, err)
	}
	if !ok {
		return fmt.Errorf("s3: bucket %s does not exist: %w", s.bucket, gateway.ErrUnavailable)
	}
	return nil
}

// translate maps minio-go and transport errors to the gateway's sentinels,
// keeping the original in the chain. A context that ended stays a context
// error: the caller gave up, storage is not at fault.
func translate(err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	var er minio.ErrorResponse
	if !errors.As(err, &er) {
		// No S3 answer at all: refused connection, reset, DNS, timeout.
		return fmt.Errorf("%w: %w", gateway.ErrUnavailable, err)
	}
	switch er.Code {
	case minio.NoSuchKey:
		return fmt.Errorf("%w: %w", gateway.ErrNotFound, err)
	case minio.InvalidRange, minio.InvalidArgument, minio.XMinioInvalidObjectName:
		return fmt.Errorf("%w: %w", gateway.ErrInvalid, err)
	case minio.NoSuchBucket, minio.AccessDenied, minio.InvalidAccessKeyID, minio.SignatureDoesNotMatch:
		// The bucket or credentials are misconfigured: nothing a client can
		// fix by changing its request.
		return fmt.Errorf("%w: %w", gateway.ErrUnavailable, err)
	}
	switch {
	case er.StatusCode >= 500, er.StatusCode == http.StatusTooManyRequests, er.StatusCode == http.StatusRequestTimeout:
		return fmt.Errorf("%w: %w", gateway.ErrUnavailable, err)
	case er.StatusCode == http.StatusNotFound && er.Code == "":
		return fmt.Errorf("%w: %w", gateway.ErrNotFound, err)
	}
	return err
}

// Put is Stage then Commit: a stream that ends within a part goes up in one
// PUT with a known size (which minio-go may retry, the buffer being
// seekable); a longer one in a multipart upload of part-sized chunks, which
// is aborted, even after ctx ended, if anything fails. A Put cancelled after the
// server committed the object but before the answer arrived reports the
// cancellation although the object exists: the same holds for any remote
// store.
func (s *BlobStore) Put(ctx context.Context, key string, r io.Reader) (int64, error) {
	b, err := s.Stage(ctx, key, r)
	if err != nil {
		return 0, err
	}
	if err := b.Commit(ctx, ""); err != nil {
		return 0, err
	}
	return b.Size(), nil
}

// CanRetain implements gateway.RetentionLocker: the bucket must have been
// created with Object Lock enabled (S3 cannot turn it on later).
func (s *BlobStore) CanRetain(ctx context.Context) error {
	enabled, _, _, _, err := s.client.GetObjectLockConfig(ctx, s.bucket)
	var er minio.ErrorResponse
	if errors.As(err, &er) && (er.Code == "ObjectLockConfigurationNotFoundError" || er.StatusCode == http.StatusNotFound && er.Code != minio.NoSuchBucket) {
		return fmt.Errorf("s3: bucket %s was created without Object Lock: %w", s.bucket, errors.ErrUnsupported)
	}
	if err != nil {
		return fmt.Errorf("s3: object lock of bucket %s: %w", s.bucket, translate(err))
	}
	if enabled != "Enabled" {
		return fmt.Errorf("s3: bucket %s was created without Object Lock: %w", s.bucket, errors.ErrUnsupported)
	}
	return nil
}

// PutRetained implements gateway.RetentionLocker: one streamed upload (in
// parts of PartSize, so memory stays bounded) with the Object Lock mode and
// retain-until date; minio-go sends the content checksum that S3 requires
// of such uploads.
func (s *BlobStore) PutRetained(ctx context.Context, key string, r io.Reader, ret gateway.ObjectLock) (int64, error) {
	mode := minio.RetentionMode(ret.Mode)
	if !mode.IsValid() || ret.Until.IsZero() {
		return 0, fmt.Errorf("put %s: retention %q until %v: %w", key, ret.Mode, ret.Until, gateway.ErrInvalid)
	}
	info, err := s.client.PutObject(ctx, s.bucket, key, r, -1, minio.PutObjectOptions{
		Mode: mode, RetainUntilDate: ret.Until.UTC(), PartSize: uint64(s.partSize),
	})
	if err != nil {
		return 0, fmt.Errorf("put %s: %w", key, translate(err))
	}
	return info.Size, nil
}

// EnsureLockedBucket creates the bucket with Object Lock enabled if it does
// not exist (a bucket that exists keeps the setting it was created with).
func (s *BlobStore) EnsureLockedBucket(ctx context.Context) error {
	return s.ensureBucket(ctx, minio.MakeBucketOptions{Region: s.region, ObjectLocking: true})
}

// OverNetwork implements gateway.NetworkStore: every Get is a request to
// the S3 server.
func (s *BlobStore) OverNetwork() bool { return true }

// Stage implements gateway.Stager. An object of up to PartSize bytes is
// read into memory (within StageMemory, shared by the store) and PUT by
// Commit, so the caller reads its next object while this one is uploaded;
// a larger object is uploaded in parts now and its multipart upload
// completed by Commit. Either way nothing is visible under key before
// Commit, and Abort leaves a previous object untouched.
func (s *BlobStore) Stage(ctx context.Context, key string, r io.Reader) (gateway.StagedBlob, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("put %s: %w", key, err)
	}
	// Most instances are well under a MiB: read them into a small probe
	// buffer, and take a part-size buffer only for what goes past it, so a
	// receiver reading CT slices on several connections holds a MiB per
	// connection, not PartSize.
	pp := probeBufs.Get().(*[]byte)
	n, rerr := io.ReadFull(r, *pp)
	if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
		return s.stageProbe(ctx, key, pp, n)
	}
	if rerr != nil {
		probeBufs.Put(pp)
		return nil, fmt.Errorf("put %s: read: %w", key, rerr)
	}
	bp := s.bufs.Get().(*[]byte)
	defer s.bufs.Put(bp)
	buf := *bp
	copy(buf, (*pp)[:n])
	probeBufs.Put(pp)
	m, rerr := io.ReadFull(r, buf[n:])
	switch {
	case rerr == io.EOF || rerr == io.ErrUnexpectedEOF:
		return s.stageSmall(ctx, key, buf[:n+m])
	case rerr != nil:
		return nil, fmt.Errorf("put %s: read: %w", key, rerr)
	}
	up, err := s.uploadParts(ctx, key, r, buf)
	if err != nil {
		return nil, fmt.Errorf("put %s: %w", key, err)
	}
	return up, nil
}

// probeBufs hold the first MiB of each staged object (Stage).
var probeBufs = sync.Pool{New: func() any { b := make([]byte, 1<<20); return &b }}

// stageSmall keeps a copy of data, within the store's StageMemory, for
// Commit to PUT.
func (s *BlobStore) stageSmall(ctx context.Context, key string, data []byte) (gateway.StagedBlob, error) {
	if err := s.staging.Acquire(ctx, int64(len(data))); err != nil {
		return nil, fmt.Errorf("put %s: %w", key, err)
	}
	return &stagedObject{s: s, key: key, data: bytes.Clone(data), size: int64(len(data)), held: int64(len(data))}, nil
}

// stageProbe stages the object read whole into the probe buffer pp (its
// first n bytes). An object that fills at least half of it keeps the
// buffer itself until it ends, counted at the buffer's full size: copying
// each CT slice into a fresh allocation was a tenth of a receiving
// gateway's CPU on Redis + MinIO (the copy, the allocation and the garbage
// collector's share). A smaller one is copied, so that StageMemory, not
// the buffers' size, bounds what many tiny instances hold.
func (s *BlobStore) stageProbe(ctx context.Context, key string, pp *[]byte, n int) (gateway.StagedBlob, error) {
	if n < len(*pp)/2 {
		defer probeBufs.Put(pp)
		return s.stageSmall(ctx, key, (*pp)[:n])
	}
	held := int64(cap(*pp))
	if err := s.staging.Acquire(ctx, held); err != nil {
		probeBufs.Put(pp)
		return nil, fmt.Errorf("put %s: %w", key, err)
	}
	return &stagedObject{s: s, key: key, data: (*pp)[:n], size: int64(n), held: held, probe: pp}, nil
}

// stagedObject is a small object held in memory until Commit PUTs it.
type stagedObject struct {
	s    *BlobStore
	key  string
	data []byte // nil once the object ended
	size int64
	held int64 // bytes of StageMemory it holds
	// probe, when set, is the probe buffer data lies in, handed back to
	// probeBufs when the object ends (end).
	probe *[]byte
	ended atomic.Bool
	// refused is set by a CommitNew the server refused (412): that request
	// may still be reading data, so the buffer is never reused.
	refused bool
}

// end releases what the object holds. After a failed PUT its buffer is left
// to the garbage collector rather than reused: net/http may still be
// reading a request body when an early answer has already come back. A
// successful PUT was answered after the server read, and checked the
// SHA-256 of, every byte.
func (o *stagedObject) end(reusable bool) {
	o.s.staging.Release(o.held)
	if o.probe != nil && reusable {
		probeBufs.Put(o.probe)
	}
	o.probe, o.data = nil, nil
}

func (o *stagedObject) Size() int64 { return o.size }

// Commit PUTs the object. With the caller's SHA-256 the request is signed
// over it (X-Amz-Content-Sha256, checked by the server) instead of minio-go
// hashing the payload again in signed chunks, which over plain HTTP cost a
// third of the receiver's hashing.
func (o *stagedObject) Commit(ctx context.Context, sha256Hex string) error {
	return o.put(ctx, sha256Hex, false)
}

// CommitNew is Commit with If-None-Match: *, so the server refuses (412)
// to replace an object already under the key; the object then stays
// staged.
func (o *stagedObject) CommitNew(ctx context.Context, sha256Hex string) error {
	return o.put(ctx, sha256Hex, true)
}

func (o *stagedObject) put(ctx context.Context, sha256Hex string, onlyNew bool) error {
	if o.ended.Swap(true) {
		return fmt.Errorf("put %s: staged object already committed or aborted: %w", o.key, gateway.ErrInvalid)
	}
	if err := ctx.Err(); err != nil {
		o.end(true)
		return fmt.Errorf("put %s: %w", o.key, err)
	}
	onlyNew = onlyNew && !o.s.unconditional.Load()
	err := o.send(ctx, sha256Hex, onlyNew)
	if onlyNew && o.s.notImplemented(err) {
		o.refused = true // an early answer: the buffer may still be read
		onlyNew = false
		err = o.send(ctx, sha256Hex, false)
	}
	if onlyNew && preconditionFailed(err) {
		// The bytes stay staged for a Commit or an Abort. The server may
		// have answered before reading the whole body, which net/http may
		// still be sending: the buffer is read, never reused (refused).
		o.refused = true
		o.ended.Store(false)
		return fmt.Errorf("put %s: an object is already stored under the key: %w", o.key, gateway.ErrConflict)
	}
	o.end(err == nil && !o.refused)
	if err != nil {
		return fmt.Errorf("put %s: %w", o.key, translate(err))
	}
	return nil
}

// send PUTs the object's bytes, with If-None-Match: * when onlyNew.
func (o *stagedObject) send(ctx context.Context, sha256Hex string, onlyNew bool) error {
	var opts minio.PutObjectOptions
	if onlyNew {
		opts.SetMatchETagExcept("*")
	}
	var err error
	if sha256Hex != "" {
		opts.DisableContentSha256 = true
		_, err = o.s.core.PutObject(ctx, o.s.bucket, o.key, bytes.NewReader(o.data), int64(len(o.data)), "", sha256Hex, opts)
	} else {
		_, err = o.s.client.PutObject(ctx, o.s.bucket, o.key, bytes.NewReader(o.data), int64(len(o.data)), opts)
	}
	return err
}

// notImplemented reports, and remembers, a server that answered a
// conditional write 501 Not Implemented: its writes are unconditional from
// then on, and the operator is told once. A server that ignores the header
// altogether cannot be told from here.
func (s *BlobStore) notImplemented(err error) bool {
	var er minio.ErrorResponse
	if !errors.As(err, &er) || (er.StatusCode != http.StatusNotImplemented && er.Code != "NotImplemented") {
		return false
	}
	if !s.unconditional.Swap(true) {
		s.logger.Warn("S3 SERVER WITHOUT CONDITIONAL WRITES: it answered If-None-Match with Not Implemented; new instances are written unconditionally, so an upload of the same SOP Instance UID that got past a lost instance lock could overwrite an acknowledged one",
			"bucket", s.bucket)
	}
	return true
}

// preconditionFailed reports an S3 answer 412 to a conditional write.
func preconditionFailed(err error) bool {
	var er minio.ErrorResponse
	return errors.As(err, &er) && (er.StatusCode == http.StatusPreconditionFailed || er.Code == "PreconditionFailed")
}

func (o *stagedObject) Abort() {
	if !o.ended.Swap(true) {
		o.end(!o.refused)
	}
}

// multipartUpload is an object uploaded in parts whose upload is not yet
// completed: invisible until Commit completes it.
type multipartUpload struct {
	s        *BlobStore
	key      string
	uploadID string
	parts    []minio.CompletePart
	size     int64
	ended    atomic.Bool
}

func (u *multipartUpload) Size() int64 { return u.size }

// Commit completes the upload; on failure the upload is aborted.
func (u *multipartUpload) Commit(ctx context.Context, _ string) error {
	return u.complete(ctx, false)
}

// CommitNew completes the upload with If-None-Match: *; when the server
// refuses (412, an object is under the key) the upload stays open for a
// Commit or an Abort.
func (u *multipartUpload) CommitNew(ctx context.Context, _ string) error {
	return u.complete(ctx, true)
}

func (u *multipartUpload) complete(ctx context.Context, onlyNew bool) error {
	if u.ended.Swap(true) {
		return fmt.Errorf("put %s: staged object already committed or aborted: %w", u.key, gateway.ErrInvalid)
	}
	err := ctx.Err()
	if err == nil {
		onlyNew = onlyNew && !u.s.unconditional.Load()
		err = u.send(ctx, onlyNew)
		if onlyNew && u.s.notImplemented(err) {
			onlyNew = false
			err = u.send(ctx, false)
		}
		if onlyNew && preconditionFailed(err) {
			u.ended.Store(false)
			return fmt.Errorf("put %s: an object is already stored under the key: %w", u.key, gateway.ErrConflict)
		}
		if err != nil {
			err = fmt.Errorf("complete multipart upload: %w", translate(err))
		}
	}
	if err != nil {
		u.abort(ctx)
		return fmt.Errorf("put %s: %w", u.key, err)
	}
	return nil
}

// send completes the upload, with If-None-Match: * when onlyNew.
func (u *multipartUpload) send(ctx context.Context, onlyNew bool) error {
	var opts minio.PutObjectOptions
	if onlyNew {
		opts.SetMatchETagExcept("*")
	}
	_, err := u.s.core.CompleteMultipartUpload(ctx, u.s.bucket, u.key, u.uploadID, u.parts, opts)
	return err
}

func (u *multipartUpload) Abort() {
	if !u.ended.Swap(true) {
		u.abort(context.Background())
	}
}

func (u *multipartUpload) abort(ctx context.Context) {
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), abortTimeout)
	defer cancel()
	_ = u.s.core.AbortMultipartUpload(actx, u.s.bucket, u.key, u.uploadID) // best effort: the bucket's lifecycle rule removes what is left
}

// uploadParts starts a multipart upload and uploads buf, which is full, and
// the rest of r in parts of len(buf), reusing buf for every part. The
// upload is left open for Commit; on error it is aborted.
func (s *BlobStore) uploadParts(ctx context.Context, key string, r io.Reader, buf []byte) (_ *multipartUpload, err error) {
	uploadID, err := s.core.NewMultipartUpload(ctx, s.bucket, key, minio.PutObjectOptions{})
	if err != nil {
		return nil, fmt.Errorf("start multipart upload: %w", translate(err))
	}
	up := &multipartUpload{s: s, key: key, uploadID: uploadID}
	defer func() {
		if err != nil {
			up.Abort()
		}
	}()
	n, last := len(buf), false
	for number := 1; ; number++ {
		if number > maxParts {
			return nil, fmt.Errorf("more than %d parts of %d bytes: %w", maxParts, len(buf), gateway.ErrTooLarge)
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		part, err := s.core.PutObjectPart(ctx, s.bucket, key, uploadID, number, bytes.NewReader(buf[:n]), int64(n), minio.PutObjectPartOptions{})
		if err != nil {
			return nil, fmt.Errorf("upload part %d: %w", number, translate(err))
		}
		up.parts = append(up.parts, minio.CompletePart{PartNumber: number, ETag: part.ETag})
		up.size += int64(n)
		if last {
			break
		}
		var rerr error
		n, rerr = io.ReadFull(r, buf)
		if rerr == io.EOF {
			break
		}
		if rerr == io.ErrUnexpectedEOF {
			last = true
		} else if rerr != nil {
			return nil, fmt.Errorf("read: %w", rerr)
		}
	}
	return up, nil
}

// Get issues one ranged GET. Its errors come with the response (minio's
// lazy *Object would report NoSuchKey only on the first Read). An offset at
// the end of the object is not a satisfiable S3 range, so on InvalidRange a
// Stat tells "empty" from "beyond the end".
func (s *BlobStore) Get(ctx context.Context, key string, offset, length int64) (io.ReadCloser, error) {
	if offset < 0 {
		return nil, fmt.Errorf("get %s: negative offset %d: %w", key, offset, gateway.ErrInvalid)
	}
	if length == 0 {
		return s.empty(ctx, key, offset)
	}
	if length > 0 && offset > (1<<63-1)-length {
		length = -1 // offset+length overflows: to the end
	}
	var opts minio.GetObjectOptions
	var err error
	switch {
	case length > 0:
		err = opts.SetRange(offset, offset+length-1)
	case offset > 0:
		err = opts.SetRange(offset, 0)
	}
	if err != nil {
		return nil, fmt.Errorf("get %s: %w: %w", key, gateway.ErrInvalid, err)
	}
	body, _, header, err := s.core.GetObject(ctx, s.bucket, key, opts)
	if err != nil {
		var er minio.ErrorResponse
		if errors.As(err, &er) && er.Code == minio.InvalidRange {
			return s.empty(ctx, key, offset)
		}
		return nil, fmt.Errorf("get %s: %w", key, translate(err))
	}
	var rd io.Reader = body
	if opts.Header().Get("Range") != "" && header.Get("Content-Range") == "" {
		// The server ignored the range and sent the whole object.
		if _, err := io.CopyN(io.Discard, body, offset); err != nil {
			body.Close()
			return nil, fmt.Errorf("get %s: skip to offset %d: %w", key, offset, translate(err))
		}
	}
	if length > 0 {
		rd = io.LimitReader(rd, length)
	}
	return &object{r: rd, body: body, key: key}, nil
}

// empty answers a Get that returns no bytes: an empty reader when offset is
// at most the object's size, ErrInvalid beyond it, ErrNotFound when missing.
func (s *BlobStore) empty(ctx context.Context, key string, offset int64) (io.ReadCloser, error) {
	info, err := s.Stat(ctx, key)
	if err != nil {
		return nil, fmt.Errorf("get: %w", err)
	}
	if offset > info.Size {
		return nil, fmt.Errorf("get %s: offset %d beyond size %d: %w", key, offset, info.Size, gateway.ErrInvalid)
	}
	return io.NopCloser(strings.NewReader("")), nil
}

// object is the body of a GET. A connection lost while reading is
// gateway.ErrUnavailable, like any other unreachable storage.
type object struct {
	r    io.Reader
	body io.Closer
	key  string
}

func (o *object) Read(p []byte) (int, error) {
	n, err := o.r.Read(p)
	if err != nil && err != io.EOF {
		err = fmt.Errorf("read %s: %w", o.key, translate(err))
	}
	return n, err
}

func (o *object) Close() error { return o.body.Close() }

// Stat issues a HEAD request.
func (s *BlobStore) Stat(ctx context.Context, key string) (gateway.BlobInfo, error) {
	info, err := s.client.StatObject(ctx, s.bucket, key, minio.StatObjectOptions{})
	if err != nil {
		return gateway.BlobInfo{}, fmt.Errorf("stat %s: %w", key, translate(err))
	}
	return gateway.BlobInfo{Key: key, Size: info.Size, ModTime: info.LastModified}, nil
}

// Delete removes key. S3's DELETE succeeds on a missing key, so a HEAD comes
// first to report ErrNotFound; a key deleted concurrently between the two may
// thus be reported deleted twice.
func (s *BlobStore) Delete(ctx context.Context, key string) error {
	if _, err := s.Stat(ctx, key); err != nil {
		return fmt.Errorf("delete: %w", err)
	}
	if err := s.client.RemoveObject(ctx, s.bucket, key, minio.RemoveObjectOptions{}); err != nil {
		return fmt.Errorf("delete %s: %w", key, translate(err))
	}
	return nil
}

// Walk lists the bucket from prefix with ListObjectsV2, which S3 defines to
// return keys in lexical (UTF-8 binary) order, 1,000 per request.
func (s *BlobStore) Walk(ctx context.Context, prefix string, fn func(gateway.BlobInfo) error) error {
	if i := strings.LastIndexByte(prefix, '/'); i >= 0 && gateway.CheckBlobKey(prefix[:i]) != nil {
		return nil // no valid key lies under an invalid directory; S3 would reject ".."
	}
	ctx, cancel := context.WithCancel(ctx) // stops minio's listing when fn fails
	defer cancel()
	for obj := range s.client.ListObjectsIter(ctx, s.bucket, minio.ListObjectsOptions{Prefix: prefix, Recursive: true}) {
		if obj.Err != nil {
			return fmt.Errorf("walk %q: %w", prefix, translate(obj.Err))
		}
		if strings.HasSuffix(obj.Key, "/") { // a "directory" marker made by another tool
			continue
		}
		if err := fn(gateway.BlobInfo{Key: obj.Key, Size: obj.Size, ModTime: obj.LastModified}); err != nil {
			return err
		}
	}
	return ctx.Err()
}
