package storagetest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"runtime"
	"runtime/metrics"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"testing/iotest"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dicom-gateway/gateway/gateway"
	"github.com/dicom-gateway/gateway/storage/blobwrap"
)

// Sizes used by the suite. bigSize is streamed, never held in memory;
// pastPart is larger than the default S3 part size (16 MiB), so that a failing
// or cancelled Put of that size exercises the multipart path of object
// stores, where the parts already uploaded must be discarded.
const (
	mib      = 1 << 20
	bigSize  = 64 * mib
	pastPart = 20 * mib
)

// errBoom is what the failing readers of the suite return.
var errBoom = errors.New("boom: reader failed")

// Random returns a deterministic stream of pseudo-random bytes for seed
// (ChaCha8): tests and benchmarks generate any size with
// io.LimitReader(Random(seed), n) instead of allocating it, and the same seed
// always gives the same bytes, so an expected SHA-256 can be computed from a
// second stream.
func Random(seed uint64) io.Reader {
	var s [32]byte
	binary.LittleEndian.PutUint64(s[:], seed)
	return rand.NewChaCha8(s)
}

// TrackPeakHeap samples the heap (live and not yet swept objects, from
// runtime/metrics) every 2 ms from now on, after a GC that clears what came
// before. The returned function stops sampling and returns the peak in bytes;
// it may be called more than once and is also called by tb.Cleanup, so that
// the sampling goroutine never outlives the test. Benchmarks report it to show
// that streaming keeps memory flat whatever the object size.
func TrackPeakHeap(tb testing.TB) func() uint64 {
	tb.Helper()
	runtime.GC()
	samples := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	var peak atomic.Uint64
	read := func() {
		metrics.Read(samples)
		if samples[0].Value.Kind() != metrics.KindUint64 {
			return
		}
		if v := samples[0].Value.Uint64(); v > peak.Load() {
			peak.Store(v)
		}
	}
	read()
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		tick := time.NewTicker(2 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-done:
				read()
				return
			case <-tick.C:
				read()
			}
		}
	})
	var once sync.Once
	stop := func() uint64 {
		once.Do(func() {
			close(done)
			wg.Wait()
		})
		return peak.Load()
	}
	tb.Cleanup(func() { stop() })
	return stop
}

// TestBlobStore checks that a gateway.BlobStore keeps every sentence of the
// interface's doc comment. newStore must return an empty store for each
// subtest (a fresh directory or bucket) and clean it up in t.Cleanup.
func TestBlobStore(t *testing.T, newStore func(t *testing.T) gateway.BlobStore) {
	t.Run("RoundTrip", func(t *testing.T) { testRoundTrip(t, newStore) })
	t.Run("Overwrite", func(t *testing.T) { testOverwrite(t, newStore) })
	t.Run("AtomicFailingReader", func(t *testing.T) { testAtomicFailingReader(t, newStore) })
	t.Run("AtomicCancelledContext", func(t *testing.T) { testAtomicCancelled(t, newStore) })
	t.Run("Range", func(t *testing.T) { testRange(t, newStore) })
	t.Run("NotFound", func(t *testing.T) { testNotFound(t, newStore) })
	t.Run("Stat", func(t *testing.T) { testStat(t, newStore) })
	t.Run("Walk", func(t *testing.T) { testWalk(t, newStore) })
	t.Run("ConcurrentPutSameKey", func(t *testing.T) { testConcurrentSameKey(t, newStore) })
	t.Run("ConcurrentUse", func(t *testing.T) { testConcurrentUse(t, newStore) })
	t.Run("InvalidKey", func(t *testing.T) { testInvalidKey(t, newStore) })
	t.Run("Stage", func(t *testing.T) { testStage(t, newStore) })
	t.Run("StageCommitNew", func(t *testing.T) { testStageCommitNew(t, newStore) })
}

// instanceKey is a key as gateway.InstanceKey builds it, for instance n of
// series s of study 1.2.826.0.1.3680043.
func instanceKey(s, n int) string {
	study := "1.2.826.0.1.3680043"
	series := fmt.Sprintf("%s.%d", study, s)
	return gateway.InstanceKey(study, series, fmt.Sprintf("%s.%d", series, n))
}

// sumOf returns the SHA-256 of size bytes of Random(seed), streamed.
func sumOf(t testing.TB, seed uint64, size int64) [32]byte {
	t.Helper()
	h := sha256.New()
	if _, err := io.Copy(h, io.LimitReader(Random(seed), size)); err != nil {
		t.Fatal(err)
	}
	return [32]byte(h.Sum(nil))
}

// put stores size bytes of Random(seed) under key and checks the reported size.
func put(t testing.TB, s gateway.BlobStore, key string, seed uint64, size int64) {
	t.Helper()
	got, err := s.Put(t.Context(), key, io.LimitReader(Random(seed), size))
	if err != nil {
		t.Fatalf("Put(%s, %d bytes): %v", key, size, err)
	}
	if got != size {
		t.Fatalf("Put(%s) size = %d, want %d", key, got, size)
	}
}

// getSum reads the whole object under key and returns its SHA-256 and size.
func getSum(t testing.TB, s gateway.BlobStore, key string) ([32]byte, int64) {
	t.Helper()
	rc, err := s.Get(t.Context(), key, 0, -1)
	if err != nil {
		t.Fatalf("Get(%s): %v", key, err)
	}
	defer rc.Close()
	h := sha256.New()
	n, err := io.Copy(h, rc)
	if err != nil {
		t.Fatalf("read %s: %v", key, err)
	}
	if err := rc.Close(); err != nil {
		t.Fatalf("close %s: %v", key, err)
	}
	return [32]byte(h.Sum(nil)), n
}

// getBytes reads length bytes from offset of key.
func getBytes(t testing.TB, s gateway.BlobStore, key string, offset, length int64) ([]byte, error) {
	t.Helper()
	rc, err := s.Get(t.Context(), key, offset, length)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatalf("read %s [%d,+%d): %v", key, offset, length, err)
	}
	return b, nil
}

// keys lists every key of s under prefix, in Walk order.
func keys(t testing.TB, s gateway.BlobStore, prefix string) []string {
	t.Helper()
	var got []string
	if err := s.Walk(t.Context(), prefix, func(bi gateway.BlobInfo) error {
		got = append(got, bi.Key)
		return nil
	}); err != nil {
		t.Fatalf("Walk(%q): %v", prefix, err)
	}
	return got
}

// wantNotFound asserts that key holds nothing: Get and Stat say ErrNotFound
// and Walk does not list it.
func wantNotFound(t testing.TB, s gateway.BlobStore, key string) {
	t.Helper()
	if rc, err := s.Get(t.Context(), key, 0, -1); !errors.Is(err, gateway.ErrNotFound) {
		if err == nil {
			rc.Close()
		}
		t.Errorf("Get(%s) err = %v, want ErrNotFound", key, err)
	}
	if _, err := s.Stat(t.Context(), key); !errors.Is(err, gateway.ErrNotFound) {
		t.Errorf("Stat(%s) err = %v, want ErrNotFound", key, err)
	}
	if got := keys(t, s, key); len(got) != 0 {
		t.Errorf("Walk(%s) = %q, want nothing", key, got)
	}
}

func testRoundTrip(t *testing.T, newStore func(t *testing.T) gateway.BlobStore) {
	for _, size := range []int64{0, 1, mib, bigSize} {
		t.Run(fmt.Sprintf("%dB", size), func(t *testing.T) {
			s := newStore(t)
			key := instanceKey(1, 1)
			put(t, s, key, uint64(size), size)
			gotSum, gotSize := getSum(t, s, key)
			if gotSize != size {
				t.Errorf("Get size = %d, want %d", gotSize, size)
			}
			if want := sumOf(t, uint64(size), size); gotSum != want {
				t.Errorf("Get SHA-256 = %x, want %x", gotSum, want)
			}
		})
	}
}

func testOverwrite(t *testing.T, newStore func(t *testing.T) gateway.BlobStore) {
	s := newStore(t)
	key := instanceKey(1, 1)
	put(t, s, key, 1, 3*mib)
	put(t, s, key, 2, 1000)
	gotSum, gotSize := getSum(t, s, key)
	if gotSize != 1000 {
		t.Errorf("size after overwrite = %d, want 1000", gotSize)
	}
	if want := sumOf(t, 2, 1000); gotSum != want {
		t.Errorf("SHA-256 after overwrite = %x, want %x (the second object)", gotSum, want)
	}
	if got, want := keys(t, s, ""), []string{key}; !slices.Equal(got, want) {
		t.Errorf("Walk = %q, want %q", got, want)
	}
}

// testAtomicFailingReader: a reader that fails after 0 bytes, 1 KiB or more
// than one S3 part leaves no object, and leaves a previous object unchanged.
func testAtomicFailingReader(t *testing.T, newStore func(t *testing.T) gateway.BlobStore) {
	for _, before := range []int64{0, 1024, pastPart} {
		t.Run(fmt.Sprintf("after%dB", before), func(t *testing.T) {
			s := newStore(t)
			fresh, existing := instanceKey(1, 1), instanceKey(1, 2)
			put(t, s, existing, 7, 4096)
			for _, key := range []string{fresh, existing} {
				r := io.MultiReader(io.LimitReader(Random(9), before), iotest.ErrReader(errBoom))
				if _, err := s.Put(t.Context(), key, r); !errors.Is(err, errBoom) {
					t.Fatalf("Put(%s) with a failing reader: err = %v, want %v", key, err, errBoom)
				}
			}
			wantNotFound(t, s, fresh)
			gotSum, gotSize := getSum(t, s, existing)
			if gotSize != 4096 || gotSum != sumOf(t, 7, 4096) {
				t.Errorf("previous object changed by a failed Put: size %d, SHA-256 %x", gotSize, gotSum)
			}
			if got, want := keys(t, s, ""), []string{existing}; !slices.Equal(got, want) {
				t.Errorf("Walk = %q, want %q", got, want)
			}
		})
	}
}

// cancelAfter yields bytes from r and cancels a context once n bytes have
// been read, then keeps yielding: the store, not the reader, must notice.
type cancelAfter struct {
	r      io.Reader
	n      int64
	cancel context.CancelFunc
}

func (c *cancelAfter) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n -= int64(n)
	if c.n <= 0 {
		c.cancel()
	}
	return n, err
}

func testAtomicCancelled(t *testing.T, newStore func(t *testing.T) gateway.BlobStore) {
	for _, tt := range []struct {
		name           string
		size, cancelAt int64 // cancelAt < 0: cancelled before Put
	}{
		{"before", mib, -1},
		{"midStream", 4 * mib, mib},
		{"afterFirstPart", pastPart, 17 * mib},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := newStore(t)
			fresh, existing := instanceKey(1, 1), instanceKey(1, 2)
			put(t, s, existing, 7, 4096)
			for _, key := range []string{fresh, existing} {
				ctx, cancel := context.WithCancel(t.Context())
				var r io.Reader = io.LimitReader(Random(3), tt.size)
				if tt.cancelAt < 0 {
					cancel()
				} else {
					r = &cancelAfter{r: r, n: tt.cancelAt, cancel: cancel}
				}
				_, err := s.Put(ctx, key, r)
				cancel()
				if !errors.Is(err, context.Canceled) {
					t.Fatalf("Put(%s) with a cancelled context: err = %v, want context.Canceled", key, err)
				}
			}
			wantNotFound(t, s, fresh)
			gotSum, gotSize := getSum(t, s, existing)
			if gotSize != 4096 || gotSum != sumOf(t, 7, 4096) {
				t.Errorf("previous object changed by a cancelled Put: size %d, SHA-256 %x", gotSize, gotSum)
			}
		})
	}
}

func testRange(t *testing.T, newStore func(t *testing.T) gateway.BlobStore) {
	s := newStore(t)
	key, empty := instanceKey(1, 1), instanceKey(1, 2)
	put(t, s, key, 5, 1000)
	put(t, s, empty, 5, 0)
	data, err := io.ReadAll(io.LimitReader(Random(5), 1000))
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		key            string
		offset, length int64
		want           []byte // nil with invalid
		invalid        bool
	}{
		{key: key, offset: 0, length: -1, want: data},
		{key: key, offset: 0, length: 1, want: data[:1]},
		{key: key, offset: 0, length: 10, want: data[:10]},
		{key: key, offset: 10, length: 20, want: data[10:30]},
		{key: key, offset: 990, length: -1, want: data[990:]},      // to the end
		{key: key, offset: 995, length: 10, want: data[995:]},      // length past the end
		{key: key, offset: 999, length: 1, want: data[999:]},       // last byte
		{key: key, offset: 500, length: 0, want: []byte{}},         // zero length
		{key: key, offset: 1000, length: -1, want: []byte{}},       // offset at the end
		{key: key, offset: 1000, length: 5, want: []byte{}},        // offset at the end, length past it
		{key: key, offset: 1001, length: -1, invalid: true},        // offset beyond the end
		{key: key, offset: 5000, length: 10, invalid: true},        // offset far beyond the end
		{key: key, offset: 1001, length: 0, invalid: true},         // beyond the end, zero length
		{key: key, offset: -1, length: 10, invalid: true},          // negative offset
		{key: empty, offset: 0, length: -1, want: []byte{}},        // empty object
		{key: empty, offset: 0, length: 10, want: []byte{}},        // empty object, length past the end
		{key: empty, offset: 1, length: -1, invalid: true},         // empty object, beyond the end
		{key: empty, offset: 1, length: 1, invalid: true},          // empty object, beyond the end
		{key: key, offset: 0, length: 1 << 40, want: data},         // huge length
		{key: key, offset: 999, length: 1 << 62, want: data[999:]}, // offset+length near overflow
	} {
		got, err := getBytes(t, s, tt.key, tt.offset, tt.length)
		switch {
		case tt.invalid:
			if !errors.Is(err, gateway.ErrInvalid) {
				t.Errorf("Get(%s, %d, %d) err = %v, want ErrInvalid", tt.key, tt.offset, tt.length, err)
			}
		case err != nil:
			t.Errorf("Get(%s, %d, %d): %v", tt.key, tt.offset, tt.length, err)
		case !bytes.Equal(got, tt.want):
			t.Errorf("Get(%s, %d, %d) = %d bytes, want %d bytes (%d equal)", tt.key, tt.offset, tt.length, len(got), len(tt.want), commonPrefix(got, tt.want))
		}
	}
}

func commonPrefix(a, b []byte) int {
	n := 0
	for n < len(a) && n < len(b) && a[n] == b[n] {
		n++
	}
	return n
}

func testNotFound(t *testing.T, newStore func(t *testing.T) gateway.BlobStore) {
	s := newStore(t)
	missing, other := instanceKey(1, 1), instanceKey(1, 2)
	put(t, s, other, 1, 10)
	for _, r := range [][2]int64{{0, -1}, {5, 10}, {1 << 30, -1}, {0, 0}} {
		if rc, err := s.Get(t.Context(), missing, r[0], r[1]); !errors.Is(err, gateway.ErrNotFound) {
			if err == nil {
				rc.Close()
			}
			t.Errorf("Get(missing, %d, %d) err = %v, want ErrNotFound", r[0], r[1], err)
		}
	}
	if _, err := s.Stat(t.Context(), missing); !errors.Is(err, gateway.ErrNotFound) {
		t.Errorf("Stat(missing) err = %v, want ErrNotFound", err)
	}
	if err := s.Delete(t.Context(), missing); !errors.Is(err, gateway.ErrNotFound) {
		t.Errorf("Delete(missing) err = %v, want ErrNotFound", err)
	}
	// A prefix of an existing key is not an object either.
	prefix := other[:len(other)-len("2.dcm")]
	if _, err := s.Stat(t.Context(), prefix[:len(prefix)-1]); !errors.Is(err, gateway.ErrNotFound) {
		t.Errorf("Stat(%s) err = %v, want ErrNotFound", prefix[:len(prefix)-1], err)
	}

	if err := s.Delete(t.Context(), other); err != nil {
		t.Fatalf("Delete(%s): %v", other, err)
	}
	wantNotFound(t, s, other)
	if err := s.Delete(t.Context(), other); !errors.Is(err, gateway.ErrNotFound) {
		t.Errorf("second Delete err = %v, want ErrNotFound", err)
	}
	// The key can be used again after Delete.
	put(t, s, other, 2, 20)
	if gotSum, gotSize := getSum(t, s, other); gotSize != 20 || gotSum != sumOf(t, 2, 20) {
		t.Errorf("Put after Delete: size %d, SHA-256 %x", gotSize, gotSum)
	}
}

func testStat(t *testing.T, newStore func(t *testing.T) gateway.BlobStore) {
	s := newStore(t)
	key := instanceKey(1, 1)
	before := time.Now()
	put(t, s, key, 1, 12345)
	after := time.Now()
	bi, err := s.Stat(t.Context(), key)
	if err != nil {
		t.Fatalf("Stat: %v", err)
	}
	if got, want := bi.Key, key; got != want {
		t.Errorf("Key = %q, want %q", got, want)
	}
	if got, want := bi.Size, int64(12345); got != want {
		t.Errorf("Size = %d, want %d", got, want)
	}
	// Object stores keep whole seconds; allow for that and a little skew.
	if bi.ModTime.Before(before.Add(-time.Minute)) || bi.ModTime.After(after.Add(time.Minute)) {
		t.Errorf("ModTime = %v, want between %v and %v", bi.ModTime, before, after)
	}
}

func testWalk(t *testing.T, newStore func(t *testing.T) gateway.BlobStore) {
	s := newStore(t)
	// Lexical order is not directory-tree order: "1.2.5/" sorts before
	// "1.2/" because '.' < '/', and "10.dcm" before "2.dcm".
	all := []string{
		"studies/1.2.5/series/1/instances/1.dcm",
		"studies/1.2/series/3.1/instances/1.dcm",
		"studies/1.2/series/3/instances/10.dcm",
		"studies/1.2/series/3/instances/2.dcm",
		"studies/1.2/series/3/instances/2.dcm1",
		"studies/1.20/series/1/instances/1.dcm",
		"studies/1/series/1/instances/1.dcm",
		"z",
		"z0",
	}
	sizes := map[string]int64{}
	for i, k := range []int{5, 2, 8, 0, 7, 3, 1, 6, 4} { // not in order
		key := all[k]
		sizes[key] = int64(10 + i)
		put(t, s, key, uint64(i), sizes[key])
	}
	var infos []gateway.BlobInfo
	if err := s.Walk(t.Context(), "", func(bi gateway.BlobInfo) error {
		infos = append(infos, bi)
		return nil
	}); err != nil {
		t.Fatalf("Walk: %v", err)
	}
	var got []string
	for _, bi := range infos {
		got = append(got, bi.Key)
		if bi.Size != sizes[bi.Key] {
			t.Errorf("Walk %s Size = %d, want %d", bi.Key, bi.Size, sizes[bi.Key])
		}
		if bi.ModTime.IsZero() {
			t.Errorf("Walk %s ModTime is zero", bi.Key)
		}
	}
	if !slices.Equal(got, all) {
		t.Errorf("Walk order =\n%q\nwant\n%q", got, all)
	}

	for _, tt := range []struct {
		prefix string
		want   []string
	}{
		{"studies/1.2/", all[1:5]},
		{"studies/1.2", all[0:6]}, // a string prefix, not a directory
		{"studies/1.2/series/3/instances/2.dcm", all[3:5]},
		{"studies/1.2/series/3/instances/2.dcm1", all[4:5]},
		{"studies/1.2/series/3/instances/2.dcm2", nil},
		{"studies/1.2/series/3/", all[2:5]},
		{"studies/1.2/series/3", all[1:5]},
		{"z", all[7:9]},
		{"z/", nil}, // under an object, as if it were a directory
		{"studies/9", nil},
		{"nothing/here/", nil},
		{"../", nil},
		{"/", nil},
	} {
		if got := keys(t, s, tt.prefix); !slices.Equal(got, tt.want) {
			t.Errorf("Walk(%q) =\n%q\nwant\n%q", tt.prefix, got, tt.want)
		}
	}

	errStop := errors.New("stop here")
	var visited []string
	err := s.Walk(t.Context(), "", func(bi gateway.BlobInfo) error {
		visited = append(visited, bi.Key)
		if len(visited) == 3 {
			return errStop
		}
		return nil
	})
	if !errors.Is(err, errStop) {
		t.Errorf("Walk err = %v, want the error fn returned", err)
	}
	if !slices.Equal(visited, all[:3]) {
		t.Errorf("Walk visited %q after fn failed, want %q", visited, all[:3])
	}
}

// testConcurrentSameKey: two concurrent Puts of one key end with one of the
// two complete contents, never a mix or a truncation.
func testConcurrentSameKey(t *testing.T, newStore func(t *testing.T) gateway.BlobStore) {
	s := newStore(t)
	key := instanceKey(1, 1)
	sizes := [2]int64{mib, mib + 1}
	want := [2][32]byte{sumOf(t, 100, sizes[0]), sumOf(t, 101, sizes[1])}
	for round := range 4 {
		var wg sync.WaitGroup
		errs := make([]error, 2)
		for i := range 2 {
			wg.Go(func() {
				_, errs[i] = s.Put(t.Context(), key, io.LimitReader(Random(uint64(100+i)), sizes[i]))
			})
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			t.Fatalf("round %d: concurrent Put: %v", round, err)
		}
		gotSum, gotSize := getSum(t, s, key)
		switch {
		case gotSum == want[0] && gotSize == sizes[0]:
		case gotSum == want[1] && gotSize == sizes[1]:
		default:
			t.Fatalf("round %d: object is neither Put's content: size %d, SHA-256 %x", round, gotSize, gotSum)
		}
		bi, err := s.Stat(t.Context(), key)
		if err != nil || (bi.Size != sizes[0] && bi.Size != sizes[1]) {
			t.Fatalf("round %d: Stat = %+v, %v", round, bi, err)
		}
	}
}

// testConcurrentUse runs Put, Get, Stat, Walk and Delete from several
// goroutines on keys that share directories (run it with -race).
func testConcurrentUse(t *testing.T, newStore func(t *testing.T) gateway.BlobStore) {
	s := newStore(t)
	const workers, perWorker = 4, 6
	var wg sync.WaitGroup
	errs := make(chan error, workers*perWorker*4)
	for w := range workers {
		wg.Go(func() {
			for n := range perWorker {
				key := instanceKey(w%2, w*100+n)
				size := int64(1000 + w*perWorker + n)
				if _, err := s.Put(t.Context(), key, io.LimitReader(Random(uint64(size)), size)); err != nil {
					errs <- err
					return
				}
				if bi, err := s.Stat(t.Context(), key); err != nil || bi.Size != size {
					errs <- fmt.Errorf("Stat(%s) = %+v, %v; want size %d", key, bi, err, size)
				}
				if err := s.Walk(t.Context(), "studies/", func(gateway.BlobInfo) error { return nil }); err != nil {
					errs <- err
				}
				if n%2 == 1 { // delete every other key, racing with Puts into the same directory
					if err := s.Delete(t.Context(), key); err != nil {
						errs <- err
					}
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	var want []string
	wantSum := map[string][32]byte{}
	for w := range workers {
		for n := 0; n < perWorker; n += 2 {
			key, size := instanceKey(w%2, w*100+n), int64(1000+w*perWorker+n)
			want = append(want, key)
			wantSum[key] = sumOf(t, uint64(size), size)
		}
	}
	slices.Sort(want)
	if got := keys(t, s, ""); !slices.Equal(got, want) {
		t.Errorf("Walk after concurrent use =\n%q\nwant\n%q", got, want)
	}
	for _, key := range want {
		if got, _ := getSum(t, s, key); got != wantSum[key] {
			t.Errorf("%s SHA-256 = %x, want %x", key, got, wantSum[key])
		}
	}
}

func testInvalidKey(t *testing.T, newStore func(t *testing.T) gateway.BlobStore) {
	s := newStore(t)
	for _, key := range []string{
		"", ".", "..", "/", "/abs", "a/../b", "../escape", "a//b", "a/", "a/./b",
		".tmp/x", "studies/.hidden", `a\b`, "a\x00b", "a\nb",
	} {
		if _, err := s.Put(t.Context(), key, bytes.NewReader([]byte("x"))); !errors.Is(err, gateway.ErrInvalid) {
			t.Errorf("Put(%q) err = %v, want ErrInvalid", key, err)
		}
		if rc, err := s.Get(t.Context(), key, 0, -1); !errors.Is(err, gateway.ErrInvalid) {
			if err == nil {
				rc.Close()
			}
			t.Errorf("Get(%q) err = %v, want ErrInvalid", key, err)
		}
		if _, err := s.Stat(t.Context(), key); !errors.Is(err, gateway.ErrInvalid) {
			t.Errorf("Stat(%q) err = %v, want ErrInvalid", key, err)
		}
		if err := s.Delete(t.Context(), key); !errors.Is(err, gateway.ErrInvalid) {
			t.Errorf("Delete(%q) err = %v, want ErrInvalid", key, err)
		}
		if st, ok := s.(gateway.Stager); ok {
			if b, err := st.Stage(t.Context(), key, bytes.NewReader([]byte("x"))); !errors.Is(err, gateway.ErrInvalid) {
				if err == nil {
					b.Abort()
				}
				t.Errorf("Stage(%q) err = %v, want ErrInvalid", key, err)
			}
		}
	}
	if got := keys(t, s, ""); len(got) != 0 {
		t.Errorf("Walk after invalid Puts = %q, want nothing", got)
	}
}

// BenchBlobStore measures Put and Get throughput (MB/s) of 1 MiB and 64 MiB
// objects and the peak heap of each, and streams a 1 GiB Put to show that
// memory stays flat (peak-heap-MiB). newStore returns an empty store for each
// sub-benchmark. Run the 1 GiB case with -benchtime=1x.
func BenchBlobStore(b *testing.B, newStore func(b *testing.B) gateway.BlobStore) {
	for _, size := range []int64{mib, bigSize} {
		name := fmt.Sprintf("%dMiB", size/mib)
		b.Run("Put/"+name, func(b *testing.B) { benchPut(b, newStore(b), size) })
		b.Run("Get/"+name, func(b *testing.B) { benchGet(b, newStore(b), size) })
	}
	b.Run("Put/1GiB", func(b *testing.B) { benchPut(b, newStore(b), 1<<30) })
}

func benchPut(b *testing.B, s gateway.BlobStore, size int64) {
	key := instanceKey(1, 1)
	peak := TrackPeakHeap(b)
	b.SetBytes(size)
	seed := uint64(0)
	for b.Loop() {
		seed++
		n, err := s.Put(b.Context(), key, io.LimitReader(Random(seed), size))
		if err != nil {
			b.Fatal(err)
		}
		if n != size {
			b.Fatalf("Put size = %d, want %d", n, size)
		}
	}
	b.ReportMetric(float64(peak())/mib, "peak-heap-MiB")
}

func benchGet(b *testing.B, s gateway.BlobStore, size int64) {
	key := instanceKey(1, 1)
	put(b, s, key, 1, size)
	peak := TrackPeakHeap(b)
	buf := make([]byte, 256<<10)
	b.SetBytes(size)
	for b.Loop() {
		rc, err := s.Get(b.Context(), key, 0, -1)
		if err != nil {
			b.Fatal(err)
		}
		n, err := io.CopyBuffer(io.Discard, struct{ io.Reader }{rc}, buf)
		rc.Close()
		if err != nil || n != size {
			b.Fatalf("Get read %d bytes, %v; want %d", n, err, size)
		}
	}
	b.ReportMetric(float64(peak())/mib, "peak-heap-MiB")
}

// newStager opens a store for a test of the optional gateway.Stager, and
// skips the test for a store without it.
func newStager(t *testing.T, newStore func(t *testing.T) gateway.BlobStore) (gateway.BlobStore, gateway.Stager) {
	t.Helper()
	s := newStore(t)
	st, ok := s.(gateway.Stager)
	if !ok {
		t.Skipf("%T does not implement gateway.Stager (optional): Put is used instead", s)
	}
	return s, st
}

// testStage checks the optional gateway.Stager: a staged object is invisible
// until Commit, Abort and a failing reader leave nothing (and a previous
// object unchanged), and concurrent commits into one directory all land.
func testStage(t *testing.T, newStore func(t *testing.T) gateway.BlobStore) {
	s, st := newStager(t, newStore)
	ctx := t.Context()
	fresh, existing := instanceKey(2, 1), instanceKey(2, 2)
	put(t, s, existing, 7, 4096)

	b, err := st.Stage(ctx, fresh, io.LimitReader(Random(11), 5000))
	if err != nil {
		t.Fatalf("Stage: %v", err)
	}
	if b.Size() != 5000 {
		t.Errorf("Size = %d, want 5000", b.Size())
	}
	wantNotFound(t, s, fresh) // not visible before Commit
	sum := sumOf(t, 11, 5000)
	if err := b.Commit(ctx, hex.EncodeToString(sum[:])); err != nil {
		t.Fatalf("Commit: %v", err)
	}
	if sum, n := getSum(t, s, fresh); n != 5000 || sum != sumOf(t, 11, 5000) {
		t.Errorf("committed object: %d bytes, SHA-256 %x", n, sum)
	}
	if err := b.Commit(ctx, ""); err == nil {
		t.Error("a second Commit of one staged object succeeded")
	}

	aborted, err := st.Stage(ctx, existing, io.LimitReader(Random(12), 300))
	if err != nil {
		t.Fatalf("Stage over an existing key: %v", err)
	}
	aborted.Abort()
	aborted.Abort() // idempotent
	if sum, n := getSum(t, s, existing); n != 4096 || sum != sumOf(t, 7, 4096) {
		t.Errorf("Abort changed the previous object: %d bytes, SHA-256 %x", n, sum)
	}
	if _, err := st.Stage(ctx, existing, io.MultiReader(io.LimitReader(Random(9), 1024), iotest.ErrReader(errBoom))); !errors.Is(err, errBoom) {
		t.Errorf("Stage with a failing reader: err = %v, want %v", err, errBoom)
	}
	if sum, n := getSum(t, s, existing); n != 4096 || sum != sumOf(t, 7, 4096) {
		t.Errorf("failed Stage changed the previous object: %d bytes, SHA-256 %x", n, sum)
	}

	// Past S3's first-MiB probe but within a part: one PUT at Commit.
	mid, err := st.Stage(ctx, instanceKey(4, 3), io.LimitReader(Random(15), 3*mib+7))
	if err != nil {
		t.Fatal(err)
	}
	wantNotFound(t, s, instanceKey(4, 3))
	if err := mid.Commit(ctx, ""); err != nil {
		t.Fatal(err)
	}
	if sum, n := getSum(t, s, instanceKey(4, 3)); n != 3*mib+7 || sum != sumOf(t, 15, 3*mib+7) {
		t.Errorf("committed 3 MiB object: %d bytes, SHA-256 %x", n, sum)
	}

	// An object larger than an S3 part (a multipart upload left open until
	// Commit): invisible until Commit, and Abort leaves nothing.
	big, err := st.Stage(ctx, instanceKey(4, 1), io.LimitReader(Random(13), pastPart))
	if err != nil {
		t.Fatalf("Stage %d bytes: %v", pastPart, err)
	}
	wantNotFound(t, s, instanceKey(4, 1))
	if err := big.Commit(ctx, ""); err != nil {
		t.Fatalf("Commit %d bytes: %v", pastPart, err)
	}
	if sum, n := getSum(t, s, instanceKey(4, 1)); n != pastPart || sum != sumOf(t, 13, pastPart) {
		t.Errorf("committed large object: %d bytes, SHA-256 %x", n, sum)
	}
	bigAborted, err := st.Stage(ctx, instanceKey(4, 2), io.LimitReader(Random(14), pastPart))
	if err != nil {
		t.Fatal(err)
	}
	bigAborted.Abort()
	wantNotFound(t, s, instanceKey(4, 2))

	// Staged one after another, committed together: all land, byte for byte.
	const n = 16
	staged := make([]gateway.StagedBlob, n)
	for i := range staged {
		if staged[i], err = st.Stage(ctx, instanceKey(3, i), io.LimitReader(Random(uint64(100+i)), int64(1000+i))); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i, b := range staged {
		wg.Go(func() { errs[i] = b.Commit(ctx, "") })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("concurrent Commit %d: %v", i, err)
		}
		if sum, size := getSum(t, s, instanceKey(3, i)); size != int64(1000+i) || sum != sumOf(t, uint64(100+i), int64(1000+i)) {
			t.Errorf("object %d after concurrent commits: %d bytes, SHA-256 %x", i, size, sum)
		}
	}
	if got := keys(t, s, ""); len(got) != n+4 {
		t.Errorf("Walk lists %d objects, want %d (staged files must not show): %q", len(got), n+4, got)
	}
}

// testStageCommitNew checks StagedBlob.CommitNew for each way a store may
// stage an object (in memory, past S3's probe buffer, a multipart upload):
// it creates a new key; over an existing object it fails with ErrConflict,
// leaves that object as it was and keeps the blob staged, so that a Commit
// then replaces the object and an Abort leaves it; of two CommitNew racing
// for one key, exactly one wins and the object is its bytes.
func testStageCommitNew(t *testing.T, newStore func(t *testing.T) gateway.BlobStore) {
	s, st := newStager(t, newStore)
	ctx := t.Context()
	stage := func(key string, seed uint64, size int64) gateway.StagedBlob {
		t.Helper()
		b, err := st.Stage(ctx, key, io.LimitReader(Random(seed), size))
		if err != nil {
			t.Fatalf("Stage %d bytes: %v", size, err)
		}
		return b
	}
	want := func(key string, seed uint64, size int64, what string) {
		t.Helper()
		if sum, n := getSum(t, s, key); n != size || sum != sumOf(t, seed, size) {
			t.Errorf("%s: %d bytes, SHA-256 %x; want %d bytes of seed %d", what, n, sum, size, seed)
		}
	}
	for i, size := range []int64{300, 3*mib + 7, pastPart} {
		key := instanceKey(5, i)
		seed := uint64(200 + 10*i)
		sum := sumOf(t, seed, size)
		if err := stage(key, seed, size).CommitNew(ctx, hex.EncodeToString(sum[:])); err != nil {
			t.Fatalf("CommitNew of %d bytes to a new key: %v", size, err)
		}
		want(key, seed, size, "object created by CommitNew")

		other := stage(key, seed+1, size)
		otherSum := sumOf(t, seed+1, size)
		if err := other.CommitNew(ctx, hex.EncodeToString(otherSum[:])); !errors.Is(err, gateway.ErrConflict) {
			t.Fatalf("CommitNew of %d bytes over an object: err = %v, want ErrConflict", size, err)
		}
		want(key, seed, size, "object under a refused CommitNew")
		if err := other.Commit(ctx, hex.EncodeToString(otherSum[:])); err != nil {
			t.Fatalf("Commit after a refused CommitNew (%d bytes): %v", size, err)
		}
		want(key, seed+1, size, "object replaced by Commit after a refused CommitNew")

		third := stage(key, seed+2, size)
		if err := third.CommitNew(ctx, ""); !errors.Is(err, gateway.ErrConflict) {
			t.Fatalf("CommitNew of %d bytes over a replaced object: err = %v, want ErrConflict", size, err)
		}
		third.Abort()
		want(key, seed+1, size, "object after an Abort of a refused CommitNew")
	}

	key := instanceKey(5, 9)
	racers := []gateway.StagedBlob{stage(key, 301, 4000), stage(key, 302, 4000)}
	var wg sync.WaitGroup
	errs := make([]error, len(racers))
	for i, b := range racers {
		wg.Go(func() { errs[i] = b.CommitNew(ctx, "") })
	}
	wg.Wait()
	winner := -1
	for i, err := range errs {
		switch {
		case err == nil && winner < 0:
			winner = i
		case err == nil:
			t.Fatal("two CommitNew to one key both succeeded")
		case errors.Is(err, gateway.ErrConflict):
			racers[i].Abort()
		default:
			t.Fatalf("racing CommitNew: %v", err)
		}
	}
	if winner < 0 {
		t.Fatal("of two racing CommitNew to a new key, none succeeded")
	}
	want(key, uint64(301+winner), 4000, "object after racing CommitNew")
	if got := keys(t, s, ""); len(got) != 4 {
		t.Errorf("Walk lists %d objects, want 4 (nothing staged may show): %q", len(got), got)
	}
}

// TestDecoratorsKeepInterfaces checks that bare, wrapped in the decorators
// every store runs behind (blobwrap.Wrap), still has each optional
// interface bare has, and Stage exactly when bare has it: a decorator that
// hid gateway.Stager would silently turn off staged ingest, one that hid
// gateway.NetworkStore the read-ahead of multi-instance WADO.
func TestDecoratorsKeepInterfaces(t *testing.T, bare gateway.BlobStore) {
	w := blobwrap.Wrap(bare, prometheus.NewRegistry(), "test")
	_, bareStager := bare.(gateway.Stager)
	if _, ok := w.(gateway.Stager); ok != bareStager {
		t.Errorf("wrapped %T: Stager = %v, bare store: %v", bare, ok, bareStager)
	}
	if _, ok := bare.(gateway.Pinger); ok {
		if _, ok := w.(gateway.Pinger); !ok {
			t.Errorf("wrapped %T is no gateway.Pinger", bare)
		}
	}
	if _, ok := bare.(io.Closer); ok {
		if _, ok := w.(io.Closer); !ok {
			t.Errorf("wrapped %T is no io.Closer", bare)
		}
	}
	if got, want := gateway.OverNetwork(w), gateway.OverNetwork(bare); got != want {
		t.Errorf("OverNetwork(wrapped %T) = %v, bare store: %v", bare, got, want)
	}
	if p, ok := w.(gateway.Pinger); ok {
		if err := p.Ping(t.Context()); err != nil {
			t.Errorf("Ping through the decorators: %v", err)
		}
	}
}
