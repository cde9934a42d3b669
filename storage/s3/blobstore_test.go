package s3_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"testing"
	"testing/iotest"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/dicom-gateway/gateway/gateway"
	"github.com/dicom-gateway/gateway/internal/syncbuf"
	"github.com/dicom-gateway/gateway/storage/blobwrap"
	"github.com/dicom-gateway/gateway/storage/s3"
	"github.com/dicom-gateway/gateway/storage/storagetest"
)

// config returns the configuration of a fresh bucket on the test MinIO.
func config(tb testing.TB) s3.Config {
	tb.Helper()
	srv := storagetest.MinIO(tb)
	return s3.Config{
		Endpoint:  srv.Endpoint,
		Bucket:    srv.Bucket(tb),
		AccessKey: srv.AccessKey,
		SecretKey: gateway.Secret(srv.SecretKey),
		Region:    "us-east-1",
	}
}

func newStore(tb testing.TB, cfg s3.Config) *s3.BlobStore {
	tb.Helper()
	s, err := s3.New(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	return s
}

// TestBlobStore runs the suite through the decorators every store runs
// behind: the store itself leaves the key rule to blobwrap.CheckKeys.
func TestBlobStore(t *testing.T) {
	storagetest.TestBlobStore(t, func(t *testing.T) gateway.BlobStore {
		return blobwrap.Wrap(newStore(t, config(t)), prometheus.NewRegistry(), "s3")
	})
}

// TestMetadataStore runs gateway.MetadataStore's prepared metadata objects
// on this store, behind the decorators.
func TestMetadataStore(t *testing.T) {
	storagetest.TestMetadataStore(t, func(t *testing.T) gateway.BlobStore {
		return blobwrap.Wrap(newStore(t, config(t)), prometheus.NewRegistry(), "s3")
	})
}

func TestDecoratorsKeepInterfaces(t *testing.T) {
	storagetest.TestDecoratorsKeepInterfaces(t, newStore(t, config(t)))
}

func BenchmarkBlobStore(b *testing.B) {
	storagetest.BenchBlobStore(b, func(b *testing.B) gateway.BlobStore { return newStore(b, config(b)) })
}

// rawClient talks to the test MinIO directly, to look at what the store
// left behind.
func rawClient(t *testing.T, cfg s3.Config) *minio.Client {
	t.Helper()
	c, err := minio.New(cfg.Endpoint, &minio.Options{Creds: credentials.NewStaticV4(cfg.AccessKey, cfg.SecretKey.Reveal(), ""), Region: cfg.Region})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestFailedPutLeavesNoUpload: a multipart Put whose reader fails, or whose
// context ends, after some parts were uploaded aborts the upload, so no
// incomplete upload keeps its parts on the server.
func TestFailedPutLeavesNoUpload(t *testing.T) {
	cfg := config(t)
	cfg.PartSize = 5 << 20
	s := newStore(t, cfg)
	key := gateway.InstanceKey("1.2.3", "1.2.3.4", "1.2.3.4.5")
	boom := errors.New("boom")
	r := io.MultiReader(io.LimitReader(storagetest.Random(1), 12<<20), iotest.ErrReader(boom))
	if _, err := s.Put(t.Context(), key, r); !errors.Is(err, boom) {
		t.Fatalf("Put err = %v, want %v", err, boom)
	}
	ctx, cancel := context.WithCancel(t.Context())
	r = io.MultiReader(io.LimitReader(storagetest.Random(1), 11<<20), readerFunc(func([]byte) (int, error) {
		cancel()
		return 0, io.EOF
	}))
	if _, err := s.Put(ctx, key, r); !errors.Is(err, context.Canceled) {
		t.Fatalf("Put err = %v, want context.Canceled", err)
	}
	for u := range rawClient(t, cfg).ListIncompleteUploads(t.Context(), cfg.Bucket, "", true) {
		if u.Err != nil {
			t.Fatal(u.Err)
		}
		t.Errorf("incomplete upload left: key %s, id %s", u.Key, u.UploadID)
	}
}

type readerFunc func([]byte) (int, error)

func (f readerFunc) Read(p []byte) (int, error) { return f(p) }

// TestPartSizeBoundary: objects of exactly one part, one part plus one byte
// and several parts round-trip with a small part size.
func TestPartSizeBoundary(t *testing.T) {
	cfg := config(t)
	cfg.PartSize = 5 << 20
	s := newStore(t, cfg)
	for i, size := range []int64{5<<20 - 1, 5 << 20, 5<<20 + 1, 3 * 5 << 20, 3*5<<20 + 7} {
		key := gateway.InstanceKey("1.2.3", "1.2.3.4", "1.2.3.4."+string(rune('1'+i)))
		n, err := s.Put(t.Context(), key, io.LimitReader(storagetest.Random(uint64(size)), size))
		if err != nil || n != size {
			t.Fatalf("Put(%d bytes) = %d, %v", size, n, err)
		}
		rc, err := s.Get(t.Context(), key, 0, -1)
		if err != nil {
			t.Fatal(err)
		}
		ok, err := sameBytes(rc, io.LimitReader(storagetest.Random(uint64(size)), size))
		rc.Close()
		if err != nil || !ok {
			t.Errorf("%d bytes: read back differs (err %v)", size, err)
		}
	}
}

func sameBytes(a, b io.Reader) (bool, error) {
	ba, bb := make([]byte, 64<<10), make([]byte, 64<<10)
	for {
		na, erra := io.ReadFull(a, ba)
		nb, errb := io.ReadFull(b, bb)
		if na != nb || string(ba[:na]) != string(bb[:nb]) {
			return false, nil
		}
		if erra == io.EOF || erra == io.ErrUnexpectedEOF {
			return errb == io.EOF || errb == io.ErrUnexpectedEOF, nil
		}
		if erra != nil {
			return false, erra
		}
	}
}

// TestNewDoesNotConnect: New succeeds with no server listening, and every
// call then reports gateway.ErrUnavailable.
func TestNewDoesNotConnect(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now
	s, err := s3.New(s3.Config{Endpoint: addr, Bucket: "gateway", AccessKey: "a", SecretKey: "b", Region: "us-east-1"})
	if err != nil {
		t.Fatalf("New with the server down: %v", err)
	}
	// minio-go retries a refused connection for a few seconds: run the calls
	// side by side.
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	calls := map[string]func() error{
		"Ping": func() error { return s.Ping(ctx) },
		"Stat": func() error { _, err := s.Stat(ctx, "studies/1/x.dcm"); return err },
		"Put":  func() error { _, err := s.Put(ctx, "studies/1/x.dcm", strings.NewReader("x")); return err },
		"Walk": func() error { return s.Walk(ctx, "", func(gateway.BlobInfo) error { return nil }) },
	}
	var wg sync.WaitGroup
	for name, call := range calls {
		wg.Go(func() {
			if err := call(); !errors.Is(err, gateway.ErrUnavailable) {
				t.Errorf("%s err = %v, want ErrUnavailable", name, err)
			}
		})
	}
	wg.Wait()
}

func TestEnsureBucketAndPing(t *testing.T) {
	cfg := config(t)
	cfg.Bucket = "test-" + storagetest.RandomName()
	s := newStore(t, cfg)
	if err := s.Ping(t.Context()); !errors.Is(err, gateway.ErrUnavailable) {
		t.Errorf("Ping before EnsureBucket: err = %v, want ErrUnavailable", err)
	}
	if err := s.EnsureBucket(t.Context()); err != nil {
		t.Fatalf("EnsureBucket: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		rawClient(t, cfg).RemoveBucket(ctx, cfg.Bucket)
	})
	if err := s.EnsureBucket(t.Context()); err != nil {
		t.Errorf("second EnsureBucket: %v", err)
	}
	if err := s.Ping(t.Context()); err != nil {
		t.Errorf("Ping: %v", err)
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	for _, cfg := range []s3.Config{
		{Endpoint: "", Bucket: "gateway"},
		{Endpoint: "http://127.0.0.1:9000", Bucket: "gateway"},
		{Endpoint: "127.0.0.1:9000", Bucket: "Bad_Bucket"},
		{Endpoint: "127.0.0.1:9000", Bucket: "gateway", PartSize: 1 << 20},
		{Endpoint: "127.0.0.1:9000", Bucket: "gateway", PartSize: 6 << 30},
	} {
		if _, err := s3.New(cfg); !errors.Is(err, gateway.ErrInvalid) {
			t.Errorf("New(%+v) err = %v, want ErrInvalid", cfg, err)
		}
	}
}

// TestStagedCommitSignsWithCallersHash: a small staged object committed with
// the caller's SHA-256 lands; with a SHA-256 of other bytes MinIO refuses the
// PUT and nothing is left under the key.
func TestStagedCommitSignsWithCallersHash(t *testing.T) {
	s := newStore(t, config(t))
	ctx := t.Context()
	data := bytes.Repeat([]byte("dicom"), 20_000)
	sum := sha256.Sum256(data)
	good, err := s.Stage(ctx, "1.2/3.4/5.6", bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	if err := good.Commit(ctx, hex.EncodeToString(sum[:])); err != nil {
		t.Fatalf("Commit with the right SHA-256: %v", err)
	}
	rc, err := s.Get(ctx, "1.2/3.4/5.6", 0, -1)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(rc)
	rc.Close()
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("stored %d bytes (err %v), want the %d staged", len(got), err, len(data))
	}

	other := sha256.Sum256([]byte("other bytes"))
	bad, err := s.Stage(ctx, "1.2/3.4/5.7", bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	if err := bad.Commit(ctx, hex.EncodeToString(other[:])); err == nil {
		t.Fatal("Commit with the SHA-256 of other bytes succeeded")
	}
	if _, err := s.Stat(ctx, "1.2/3.4/5.7"); !errors.Is(err, gateway.ErrNotFound) {
		t.Fatalf("after a refused Commit: Stat = %v, want ErrNotFound", err)
	}
}

// TestStagedSlicesKeepTheirBytes stages CT-slice-sized objects, which keep
// the probe buffer they were read into until they end, from several
// goroutines at once, commits or aborts them in an order unlike the
// staging order, and checks that every committed object holds its own
// bytes: a buffer handed back to the pool while its object still needed
// it would show as another object's bytes (or a SHA-256 the server
// refuses).
func TestStagedSlicesKeepTheirBytes(t *testing.T) {
	s := newStore(t, config(t))
	ctx := t.Context()
	const workers, perWorker = 4, 6
	content := func(w, i int) []byte {
		return bytes.Repeat([]byte{byte(w), byte(i), 0x0d, 0x0a}, 600<<10/4) // 600 KiB: over half the probe
	}
	key := func(w, i int) string { return fmt.Sprintf("1.2/3.%d/5.%d", w, i) }
	aborted := func(w, i int) bool { return (w+i)%5 == 0 }
	var wg sync.WaitGroup
	errs := make(chan error, workers*perWorker)
	for w := range workers {
		wg.Go(func() {
			var held []gateway.StagedBlob
			for i := range perWorker {
				staged, err := s.Stage(ctx, key(w, i), bytes.NewReader(content(w, i)))
				if err != nil {
					errs <- err
					return
				}
				if got := staged.Size(); got != int64(len(content(w, i))) {
					errs <- fmt.Errorf("%s: Size %d, want %d", key(w, i), got, len(content(w, i)))
				}
				held = append(held, staged)
				if len(held) < 2 {
					continue
				}
				// End the older of the two held: the newer was read into a
				// buffer while the older still held its own.
				j := i - 1
				if aborted(w, j) {
					held[0].Abort()
				} else {
					sum := sha256.Sum256(content(w, j))
					if err := held[0].Commit(ctx, hex.EncodeToString(sum[:])); err != nil {
						errs <- fmt.Errorf("commit %s: %w", key(w, j), err)
					}
				}
				held = held[1:]
			}
			sum := sha256.Sum256(content(w, perWorker-1))
			if err := held[0].Commit(ctx, hex.EncodeToString(sum[:])); err != nil {
				errs <- fmt.Errorf("commit %s: %w", key(w, perWorker-1), err)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for w := range workers {
		for i := range perWorker {
			if aborted(w, i) && i != perWorker-1 {
				if _, err := s.Stat(ctx, key(w, i)); !errors.Is(err, gateway.ErrNotFound) {
					t.Errorf("aborted %s: Stat = %v, want ErrNotFound", key(w, i), err)
				}
				continue
			}
			rc, err := s.Get(ctx, key(w, i), 0, -1)
			if err != nil {
				t.Errorf("get %s: %v", key(w, i), err)
				continue
			}
			got, err := io.ReadAll(rc)
			rc.Close()
			if err != nil || !bytes.Equal(got, content(w, i)) {
				t.Errorf("%s: stored %d bytes (err %v), not the %d staged", key(w, i), len(got), err, len(content(w, i)))
			}
		}
	}
}

// TestStagedSliceCountsItsBuffer checks that an object kept in its probe
// buffer counts the whole buffer against StageMemory: with room for five
// MiB, a sixth 600 KiB object waits until one of the five ends. Counted at
// its length, it would fit, and many such objects would hold far more
// memory than StageMemory says.
func TestStagedSliceCountsItsBuffer(t *testing.T) {
	cfg := config(t)
	cfg.PartSize, cfg.StageMemory = 5<<20, 5<<20
	s := newStore(t, cfg)
	ctx := t.Context()
	data := bytes.Repeat([]byte{1, 2, 3, 4}, 600<<10/4)
	var held []gateway.StagedBlob
	for i := range 5 {
		staged, err := s.Stage(ctx, fmt.Sprintf("1.2/3.4/5.%d", i), bytes.NewReader(data))
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, staged)
	}
	short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	if staged, err := s.Stage(short, "1.2/3.4/5.5", bytes.NewReader(data)); err == nil {
		staged.Abort()
		t.Fatal("a sixth 600 KiB object was staged while five held 5 MiB of StageMemory")
	}
	held[0].Abort()
	staged, err := s.Stage(ctx, "1.2/3.4/5.5", bytes.NewReader(data))
	if err != nil {
		t.Fatalf("after an Abort freed a buffer: %v", err)
	}
	staged.Abort()
	for _, h := range held[1:] {
		h.Abort()
	}
}

// TestCommitNewWithoutConditionalWrites: behind a proxy that answers every
// conditional write 501 Not Implemented (as some S3-compatible servers do;
// MinIO cannot be made to), CommitNew falls back to an unconditional write
// for a small object and for a multipart upload, instead of failing every
// new instance as unavailable, and the operator is warned once.
func TestCommitNewWithoutConditionalWrites(t *testing.T) {
	cfg := config(t)
	target := &url.URL{Scheme: "http", Host: cfg.Endpoint}
	proxy := httputil.NewSingleHostReverseProxy(target) // keeps the Host header the client signed
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("If-None-Match") != "" {
			w.Header().Set("Content-Type", "application/xml")
			w.WriteHeader(http.StatusNotImplemented)
			fmt.Fprint(w, `<?xml version="1.0" encoding="UTF-8"?><Error><Code>NotImplemented</Code><Message>A header you provided implies functionality that is not implemented</Message></Error>`)
			return
		}
		proxy.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	var logs syncbuf.Buffer
	cfg.Endpoint = strings.TrimPrefix(srv.URL, "http://")
	cfg.PartSize = 5 << 20
	cfg.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	s := newStore(t, cfg)
	if err := s.EnsureBucket(t.Context()); err != nil {
		t.Fatal(err)
	}
	for i, size := range []int64{3000, 6 << 20} {
		key := fmt.Sprintf("studies/1.2.3/series/1.2.3.4/instances/1.2.3.4.%d.dcm", i)
		b, err := s.Stage(t.Context(), key, io.LimitReader(storagetest.Random(uint64(i)), size))
		if err != nil {
			t.Fatal(err)
		}
		if err := b.CommitNew(t.Context(), ""); err != nil {
			t.Fatalf("CommitNew of %d bytes without conditional writes: %v", size, err)
		}
		info, err := s.Stat(t.Context(), key)
		if err != nil || info.Size != size {
			t.Errorf("object of %d bytes after CommitNew: %+v %v", size, info, err)
		}
	}
	if n := strings.Count(logs.String(), "WITHOUT CONDITIONAL WRITES"); n != 1 {
		t.Errorf("the missing conditional writes were logged %d times, want once:\n%s", n, logs.String())
	}
}

// TestProbeConditionalWrites: against MinIO, which honours If-None-Match,
// the probe finds nothing to warn about; behind a proxy that answers a
// conditional PUT as stored (as an S3-compatible server that ignores the
// header does, which MinIO cannot be made to), it reports the server as
// ignoring conditional writes
// and warns the operator loudly; against one that answers 501 it sets the
// store to unconditional writes, as CommitNew would. No probe object is
// left behind.
func TestProbeConditionalWrites(t *testing.T) {
	base := config(t)
	target := &url.URL{Scheme: "http", Host: base.Endpoint}
	for _, tt := range []struct {
		name    string
		front   func(w http.ResponseWriter, r *http.Request) bool // true: answered, not proxied
		ignores bool
		warning string
	}{
		{name: "honours", front: func(http.ResponseWriter, *http.Request) bool { return false }},
		{name: "ignores", front: func(w http.ResponseWriter, r *http.Request) bool {
			// Answer a conditional PUT as stored: what a server that
			// ignores the header says (the header is signed, so the proxy
			// cannot strip it and pass the request on).
			if r.Method != http.MethodPut || r.Header.Get("If-None-Match") == "" {
				return false
			}
			_, _ = io.Copy(io.Discard, r.Body)
			w.Header().Set("ETag", `"0123456789abcdef0123456789abcdef"`)
			return true
		}, ignores: true, warning: "IGNORES CONDITIONAL WRITES"},
		{name: "not implemented", front: func(w http.ResponseWriter, r *http.Request) bool {
			if r.Header.Get("If-None-Match") == "" {
				return false
			}
			w.Header().Set("Content-Type", "application/xml")
			w.WriteHeader(http.StatusNotImplemented)
			fmt.Fprint(w, `<?xml version="1.0" encoding="UTF-8"?><Error><Code>NotImplemented</Code><Message>not implemented</Message></Error>`)
			return true
		}, warning: "WITHOUT CONDITIONAL WRITES"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			proxy := httputil.NewSingleHostReverseProxy(target)
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if !tt.front(w, r) {
					proxy.ServeHTTP(w, r)
				}
			}))
			t.Cleanup(srv.Close)
			cfg := base
			var logs syncbuf.Buffer
			cfg.Endpoint = strings.TrimPrefix(srv.URL, "http://")
			cfg.Logger = slog.New(slog.NewTextHandler(&logs, nil))
			s := newStore(t, cfg)
			if err := s.EnsureBucket(t.Context()); err != nil {
				t.Fatal(err)
			}
			ignores, err := s.ProbeConditionalWrites(t.Context())
			if err != nil || ignores != tt.ignores {
				t.Fatalf("probe: ignores=%v err=%v, want ignores=%v", ignores, err, tt.ignores)
			}
			if got := logs.String(); (tt.warning == "") != !strings.Contains(got, "CONDITIONAL WRITES") || (tt.warning != "" && !strings.Contains(got, tt.warning)) {
				t.Errorf("log %q, want warning %q", got, tt.warning)
			}
			var left []string
			if err := s.Walk(t.Context(), ".gateway/", func(info gateway.BlobInfo) error { left = append(left, info.Key); return nil }); err != nil {
				t.Fatal(err)
			}
			if len(left) != 0 {
				t.Errorf("probe objects left behind: %v", left)
			}
		})
	}
}

// TestProbeLeavesNoVersions: on a versioned bucket (a bucket with Object
// Lock is one; the audit segments may share the instance bucket) the probe
// deletes each version it wrote, not only adds a delete marker: nothing is
// left under its prefix, in any version.
func TestProbeLeavesNoVersions(t *testing.T) {
	cfg := config(t)
	c, err := minio.New(cfg.Endpoint, &minio.Options{Creds: credentials.NewStaticV4(cfg.AccessKey, cfg.SecretKey.Reveal(), ""), Region: cfg.Region})
	if err != nil {
		t.Fatal(err)
	}
	cfg.Bucket = "test-" + storagetest.RandomName() + "-versioned"
	if err := c.MakeBucket(t.Context(), cfg.Bucket, minio.MakeBucketOptions{Region: cfg.Region}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.RemoveBucket(context.Background(), cfg.Bucket) }) // fails, and says so, only if something was left
	if err := c.EnableVersioning(t.Context(), cfg.Bucket); err != nil {
		t.Fatal(err)
	}
	if ignores, err := newStore(t, cfg).ProbeConditionalWrites(t.Context()); err != nil || ignores {
		t.Fatalf("probe on MinIO: ignores=%v err=%v", ignores, err)
	}
	for obj := range c.ListObjects(t.Context(), cfg.Bucket, minio.ListObjectsOptions{Prefix: ".gateway/", Recursive: true, WithVersions: true}) {
		if obj.Err != nil {
			t.Fatal(obj.Err)
		}
		t.Errorf("left behind: %s version %s (delete marker %v)", obj.Key, obj.VersionID, obj.IsDeleteMarker)
	}
}
