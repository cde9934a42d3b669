package main

// The raw rates of what forwarding depends on, measured in the same run as
// the forwarding cases and on the same byte counts and object sizes: the
// link (one plain HTTP upload, on loopback and through the WAN proxy), the
// receiver's disk (write + fsync per file, in the work directory where the
// gateways keep their data) and MinIO (PUT and GET with minio-go against the
// MinIO the redis+minio gateways use).

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/dicom-gateway/gateway/internal/wanproxy"
)

// partRate is one row of the parts table.
type partRate struct {
	name, detail string
	wan          bool
	conc         int
	bytes        int64
	ops          int
	d            time.Duration
	err          error
}

func (p partRate) mbps() float64 { return float64(p.bytes) / mb / p.d.Seconds() }

func runOutput(bin string, args ...string) (string, error) {
	b, err := exec.Command(bin, args...).Output()
	return string(b), err
}

// pattern is 1 MiB of pseudo-random bytes that patternReader repeats: data
// nothing along the way can compress, made once.
var pattern = func() []byte {
	r := rand.New(rand.NewPCG(15, 15))
	b := make([]byte, 1<<20)
	for i := 0; i < len(b); i += 8 {
		v := r.Uint64()
		for j := range 8 {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	return b
}()

// patternReader yields n bytes of pattern, starting at offset off.
type patternReader struct {
	n   int64
	off int
}

func (r *patternReader) Read(p []byte) (int, error) {
	if r.n <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > r.n {
		p = p[:r.n]
	}
	n := copy(p, pattern[r.off:])
	r.off = (r.off + n) % len(pattern)
	r.n -= int64(n)
	return n, nil
}

func (tb *transferBench) sizes() []int64 {
	out := make([]int64, len(tb.data))
	for i, in := range tb.data {
		out[i] = in.Size()
	}
	return out
}

func (tb *transferBench) measureParts(ctx context.Context) []partRate {
	var parts []partRate
	logf("transfer: raw rates of the link, the disk and MinIO")
	parts = append(parts, tb.linkRates(ctx)...)
	for _, c := range tb.cfg.partConc {
		parts = append(parts, tb.diskRate(ctx, c))
	}
	parts = append(parts, tb.minioRates(ctx)...)
	return parts
}

// sink is an HTTP server in this process that reads and discards request
// bodies, reachable directly and through a WAN proxy configured like the
// cases' proxies: the plain HTTP upload that measures each link.
type sink struct {
	srv   *http.Server
	ln    net.Listener
	proxy *wanproxy.Proxy
	wg    sync.WaitGroup
}

func startSink(link wanproxy.Config) (*sink, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s := &sink{ln: ln, srv: &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, err := io.Copy(io.Discard, r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		fmt.Fprint(w, n)
	})}}
	s.wg.Add(1)
	go func() { defer s.wg.Done(); _ = s.srv.Serve(ln) }()
	if s.proxy, err = wanproxy.Listen("127.0.0.1:0", ln.Addr().String(), link); err != nil {
		s.close()
		return nil, err
	}
	return s, nil
}

func (s *sink) close() {
	if s.proxy != nil {
		_ = s.proxy.Close()
	}
	_ = s.srv.Close()
	s.wg.Wait()
}

// upload sends n bytes in one POST to the sink, through the WAN proxy or
// directly, and returns MB/s.
func (s *sink) upload(ctx context.Context, wan bool, n int64) (time.Duration, error) {
	addr := s.ln.Addr().String()
	if wan {
		addr = s.proxy.Addr()
	}
	return upload(ctx, "http://"+addr+"/", n)
}

// linkRates uploads the data set's byte count in one HTTP request to the
// sink, directly and through its WAN proxy.
func (tb *transferBench) linkRates(ctx context.Context) []partRate {
	var rows []partRate
	for _, wan := range []bool{false, true} {
		r := partRate{name: "link: plain HTTP upload", detail: "one POST of the whole data set's size, Go client → Go server discarding the body", conc: 1, wan: wan}
		if tb.sink == nil {
			r.err = errors.New("no sink server")
		} else {
			r.bytes, r.ops = tb.bytes, 1
			r.d, r.err = tb.sink.upload(ctx, wan, tb.bytes)
		}
		rows = append(rows, r)
	}
	return rows
}

func upload(ctx context.Context, url string, n int64) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, &patternReader{n: n})
	if err != nil {
		return 0, err
	}
	req.ContentLength = n
	c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	start := time.Now()
	resp, err := c.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 100))
	d := time.Since(start)
	if resp.StatusCode != http.StatusOK || strings.TrimSpace(string(b)) != fmt.Sprint(n) {
		return 0, fmt.Errorf("upload: %s %s", resp.Status, b)
	}
	return d, nil
}

// forEach runs f(i) for i in [0, n) on conc workers; the first error stops it.
func forEach(ctx context.Context, n, conc int, f func(ctx context.Context, i int) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		next atomic.Int64
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	for range min(conc, n) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n || ctx.Err() != nil {
					return
				}
				if err := f(ctx, i); err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
					cancel()
					return
				}
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// diskRate writes one file per instance size (write, fsync, close), conc at
// a time, in the work directory: the file system of the gateways' data.
func (tb *transferBench) diskRate(ctx context.Context, conc int) partRate {
	r := partRate{name: "disk: write + fsync per file", detail: "one file per instance size, in the gateways' file system", conc: conc}
	dir := filepath.Join(tb.work, fmt.Sprintf("disk-probe-%d", conc))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		r.err = err
		return r
	}
	defer os.RemoveAll(dir)
	sizes := tb.sizes()
	start := time.Now()
	r.err = forEach(ctx, len(sizes), conc, func(_ context.Context, i int) error {
		f, err := os.Create(filepath.Join(dir, fmt.Sprint(i)))
		if err != nil {
			return err
		}
		_, err = io.CopyBuffer(f, &patternReader{n: sizes[i], off: i * 4096 % len(pattern)}, make([]byte, 256<<10))
		if err == nil {
			err = f.Sync()
		}
		return errors.Join(err, f.Close())
	})
	r.d = time.Since(start)
	for _, s := range sizes {
		r.bytes += s
	}
	r.ops = len(sizes)
	return r
}

// minioRates PUTs one object per instance size into a fresh bucket of the
// MinIO of GATEWAY_TEST_S3_*, then GETs them all, at each -part-conc.
func (tb *transferBench) minioRates(ctx context.Context) []partRate {
	var rows []partRate
	mc, err := testMinIO()
	if err != nil {
		for _, c := range tb.cfg.partConc {
			rows = append(rows, partRate{name: minioPut, conc: c, err: err}, partRate{name: minioGet, conc: c, err: err}, partRate{name: minioCopy, conc: c, err: err})
		}
		return rows
	}
	sizes := tb.sizes()
	var total int64
	for _, s := range sizes {
		total += s
	}
	for _, conc := range tb.cfg.partConc {
		bucket := fmt.Sprintf("bt-%s-probe-%d", tb.runID, conc)
		put := partRate{name: minioPut, detail: "one object per instance size, size known, 16 MiB parts", conc: conc, bytes: total, ops: len(sizes)}
		get := partRate{name: minioGet, detail: "the same objects, read to the end", conc: conc, bytes: total, ops: len(sizes)}
		cp := partRate{name: minioCopy, detail: "each object GET and its body streamed into a PUT to a second bucket: the MinIO work of forwarding between two gateways that share one MinIO",
			conc: conc, bytes: total, ops: len(sizes)}
		copyBucket := bucket + "-copy"
		if err := errors.Join(mc.MakeBucket(ctx, bucket, minio.MakeBucketOptions{}), mc.MakeBucket(ctx, copyBucket, minio.MakeBucketOptions{})); err != nil {
			put.err, get.err, cp.err = err, err, err
			rows = append(rows, put, get, cp)
			removeBuckets(ctx, mc, bucket, copyBucket)
			continue
		}
		key := func(i int) string { return fmt.Sprintf("probe/%06d", i) }
		start := time.Now()
		put.err = forEach(ctx, len(sizes), conc, func(ctx context.Context, i int) error {
			_, err := mc.PutObject(ctx, bucket, key(i), &patternReader{n: sizes[i], off: i * 4096 % len(pattern)}, sizes[i],
				minio.PutObjectOptions{ContentType: "application/dicom", PartSize: 16 << 20})
			return err
		})
		put.d = time.Since(start)
		if put.err != nil {
			get.err = errors.New("PUT failed")
		} else {
			start = time.Now()
			get.err = forEach(ctx, len(sizes), conc, func(ctx context.Context, i int) error {
				o, err := mc.GetObject(ctx, bucket, key(i), minio.GetObjectOptions{})
				if err != nil {
					return err
				}
				defer o.Close()
				n, err := io.Copy(io.Discard, o)
				if err == nil && n != sizes[i] {
					err = fmt.Errorf("GET %s: %d bytes, want %d", key(i), n, sizes[i])
				}
				return err
			})
			get.d = time.Since(start)
		}
		if get.err != nil {
			cp.err = errors.New("GET failed")
		} else {
			start = time.Now()
			cp.err = forEach(ctx, len(sizes), conc, func(ctx context.Context, i int) error {
				o, err := mc.GetObject(ctx, bucket, key(i), minio.GetObjectOptions{})
				if err != nil {
					return err
				}
				defer o.Close()
				_, err = mc.PutObject(ctx, copyBucket, key(i), o, sizes[i], minio.PutObjectOptions{ContentType: "application/dicom", PartSize: 16 << 20})
				return err
			})
			cp.d = time.Since(start)
		}
		rows = append(rows, put, get, cp)
		removeBuckets(ctx, mc, bucket, copyBucket)
	}
	return rows
}

// testMinIO is a client of the MinIO of GATEWAY_TEST_S3_* (scripts/testenv.sh
// starts one), for measuring MinIO's own rates beside the gateway's.
func testMinIO() (*minio.Client, error) {
	ep := os.Getenv("GATEWAY_TEST_S3_ENDPOINT")
	if ep == "" {
		return nil, errors.New("GATEWAY_TEST_S3_ENDPOINT unset: run through scripts/testenv.sh")
	}
	return minio.New(ep, &minio.Options{Creds: credentials.NewStaticV4(os.Getenv("GATEWAY_TEST_S3_ACCESS_KEY"), os.Getenv("GATEWAY_TEST_S3_SECRET_KEY"), "")})
}

// The MinIO rates measured with minio-go (minioRates).
const (
	minioPut  = "MinIO: PUT (minio-go)"
	minioGet  = "MinIO: GET (minio-go)"
	minioCopy = "MinIO: GET → PUT (minio-go)"
)

// minioRate is the rate of the MinIO part name at concurrency conc in
// parts, 0 when it was not measured.
func minioRate(parts []partRate, name string, conc int) float64 {
	for _, p := range parts {
		if p.name == name && p.conc == conc && p.err == nil && p.d > 0 {
			return p.mbps()
		}
	}
	return 0
}

// removeBuckets empties and removes the probe buckets, so that MinIO
// is as before.
func removeBuckets(ctx context.Context, mc *minio.Client, buckets ...string) {
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
	defer cancel()
	for _, bucket := range buckets {
		if ok, err := mc.BucketExists(cctx, bucket); err != nil || !ok {
			continue
		}
		objs := mc.ListObjects(cctx, bucket, minio.ListObjectsOptions{Recursive: true})
		for e := range mc.RemoveObjects(cctx, bucket, objs, minio.RemoveObjectsOptions{}) {
			logf("transfer: removing the MinIO probe objects: %v", e.Err)
		}
		if err := mc.RemoveBucket(cctx, bucket); err != nil {
			logf("transfer: removing bucket %s: %v", bucket, err)
		}
	}
}

func partsTable(parts []partRate) string {
	var s strings.Builder
	s.WriteString("### Raw rates of the parts, same run, same byte counts and object sizes\n\n")
	s.WriteString("| part | link | concurrency | MB | seconds | MB/s | operations/s | how |\n|---|---|---:|---:|---:|---:|---:|---|\n")
	for _, p := range parts {
		link := "loopback"
		if p.wan {
			link = "WAN proxy"
		}
		if !strings.HasPrefix(p.name, "link") {
			link = "—"
		}
		if p.err != nil {
			fmt.Fprintf(&s, "| %s | %s | %d | not measurable: %s | | | | |\n", p.name, link, p.conc, cellEscape(p.err.Error()))
			continue
		}
		fmt.Fprintf(&s, "| %s | %s | %d | %.1f | %.2f | %.1f | %.1f | %s |\n", p.name, link, p.conc, float64(p.bytes)/mb, p.d.Seconds(),
			p.mbps(), float64(p.ops)/p.d.Seconds(), p.detail)
	}
	s.WriteString("\n")
	return s.String()
}
