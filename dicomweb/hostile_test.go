package dicomweb

import (
	"bufio"
	"bytes"
	"compress/flate"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"log"
	"mime/multipart"
	"net"
	"net/http"
	"net/textproto"
	"runtime"
	"runtime/metrics"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dicom-gateway/gateway/gateway"
	"github.com/dicom-gateway/gateway/internal/backendtest"
)

// spyBlobs records every key that reaches the blob store.
type spyBlobs struct {
	gateway.BlobStore
	mu   sync.Mutex
	keys []string
}

func (s *spyBlobs) saw(key string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.keys = append(s.keys, key)
}

func (s *spyBlobs) seen() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.keys...)
}

func (s *spyBlobs) Put(ctx context.Context, key string, r io.Reader) (int64, error) {
	s.saw(key)
	return s.BlobStore.Put(ctx, key, r)
}

func (s *spyBlobs) Get(ctx context.Context, key string, off, n int64) (io.ReadCloser, error) {
	s.saw(key)
	return s.BlobStore.Get(ctx, key, off, n)
}

func (s *spyBlobs) Stat(ctx context.Context, key string) (gateway.BlobInfo, error) {
	s.saw(key)
	return s.BlobStore.Stat(ctx, key)
}

func (s *spyBlobs) Delete(ctx context.Context, key string) error {
	s.saw(key)
	return s.BlobStore.Delete(ctx, key)
}

func (s *spyBlobs) Walk(ctx context.Context, prefix string, fn func(gateway.BlobInfo) error) error {
	s.saw(prefix)
	return s.BlobStore.Walk(ctx, prefix, fn)
}

// uidParams are the route parameters that hold UIDs.
var uidParams = map[string]bool{":study": true, ":series": true, ":instance": true, ":sop": true}

// TestSecurityHostileUIDs puts bad UIDs in every UID position of every route
// and checks that the answer is 400 (404 when the value splits the path so
// that no route matches), never a success or 500, and that no such value
// reaches a blob key.
func TestSecurityHostileUIDs(t *testing.T) {
	for _, backend := range hostileBackends {
		t.Run(backend.name, func(t *testing.T) { testHostileUIDs(t, backend.open(t)) })
	}
}

func testHostileUIDs(t *testing.T, w wiring) {
	spy := &spyBlobs{BlobStore: w.deps.Blobs}
	w.deps.Blobs = spy
	w.deps.Ingester = &gateway.Ingester{Blobs: spy, Index: w.deps.Index}
	ts := newAuthTestServer(t, w)
	bad := []struct {
		name, raw  string // raw: as written in the URL
		splitsPath bool
	}{
		{"dotdot", "..", false},
		{"dotdot inside", "1.2..3", false},
		{"traversal", "1.2/../3", true},
		{"slash", "1.2/3", true},
		{"escaped slash", "1.2%2F3", true},
		{"escaped dotdot slash", "..%2F..%2Fetc", true},
		{"NUL", "1.2%003", false},
		{"65 characters", "1." + strings.Repeat("1", 63), false},
		{"letters", "1.2.abc", false},
		{"backslash", `1.2%5C3`, false},
	}
	n := 0
	for _, rt := range ts.s.routes() {
		segs := strings.Split(rt.path, "/")
		for i, seg := range segs {
			if !uidParams[seg] {
				continue
			}
			for _, b := range bad {
				path := make([]string, len(segs))
				for j, s := range segs {
					switch {
					case j == i:
						path[j] = b.raw
					case strings.HasPrefix(s, ":"):
						path[j] = "1.2.3"
					case strings.HasPrefix(s, "*"):
						path[j] = "x"
					default:
						path[j] = s
					}
				}
				url := strings.Join(path, "/")
				n++
				code, _, body := ts.do(t, rt.method, url, "")
				ok := code == http.StatusBadRequest || (b.splitsPath && (code == http.StatusNotFound || code == http.StatusMethodNotAllowed))
				if !ok {
					t.Errorf("%s %s (%s in %s): got %d %s, want 400", rt.method, url, b.name, seg, code, strings.TrimSpace(body))
				}
			}
		}
	}
	if n == 0 {
		t.Fatal("no route has a UID parameter")
	}
	for _, key := range spy.seen() {
		if strings.Contains(key, "..") || strings.ContainsAny(key, "\x00\\%") || strings.Contains(key, strings.Repeat("1", 63)) || strings.Contains(key, "abc") {
			t.Errorf("a hostile UID reached the blob store: key %q", key)
		}
	}
	t.Logf("%d hostile requests; %d blob keys touched", n, len(spy.seen()))
}

// peakHeap samples the live heap every millisecond (runtime/metrics, no
// stop-the-world) until stop is called, which returns the peak growth over
// the heap at the start, in bytes.
func peakHeap() (stop func() uint64) {
	runtime.GC()
	sample := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	read := func() uint64 { metrics.Read(sample); return sample[0].Value.Uint64() }
	base := read()
	var peak atomic.Uint64
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		for {
			if v := read(); v > peak.Load() {
				peak.Store(v)
			}
			select {
			case <-done:
				return
			case <-tick.C:
			}
		}
	})
	return func() uint64 {
		close(done)
		wg.Wait()
		if p := peak.Load(); p > base {
			return p - base
		}
		return 0
	}
}

// endless is an io.Reader of n bytes (n < 0: without end) of a repeated byte.
type endless struct {
	n int64
	b byte
}

func (e *endless) Read(p []byte) (int, error) {
	if e.n == 0 {
		return 0, io.EOF
	}
	if e.n > 0 && int64(len(p)) > e.n {
		p = p[:e.n]
	}
	for i := range p {
		p[i] = e.b
	}
	if e.n > 0 {
		e.n -= int64(len(p))
	}
	return len(p), nil
}

// stowBody returns a multipart/related body whose one part is head followed
// by rest, streamed.
func stowBody(head []byte, rest io.Reader) (io.Reader, string) {
	const boundary = "hostile-boundary-7d3f"
	var pre bytes.Buffer
	mw := multipart.NewWriter(&pre)
	_ = mw.SetBoundary(boundary)
	_, _ = mw.CreatePart(textproto.MIMEHeader{"Content-Type": {"application/dicom"}})
	pre.Write(head)
	tail := "\r\n--" + boundary + "--\r\n"
	return io.MultiReader(&pre, rest, strings.NewReader(tail)), `multipart/related; type="application/dicom"; boundary=` + boundary
}

// elem appends one Explicit VR Little Endian element.
func elem(b []byte, group, element uint16, vr string, value []byte) []byte {
	b = binary.LittleEndian.AppendUint16(b, group)
	b = binary.LittleEndian.AppendUint16(b, element)
	b = append(b, vr...)
	switch vr {
	case "OB", "OW", "SQ", "UN", "UT":
		b = append(b, 0, 0)
		b = binary.LittleEndian.AppendUint32(b, uint32(len(value)))
	default:
		b = binary.LittleEndian.AppendUint16(b, uint16(len(value)))
	}
	return append(b, value...)
}

func uidValue(s string) []byte {
	if len(s)%2 == 1 {
		s += "\x00"
	}
	return []byte(s)
}

// part10 returns preamble, meta information with transfer syntax ts, and
// the identifying elements of a small instance.
func part10(ts, sop string) (meta, dataset []byte) {
	const class = "1.2.840.10008.5.1.4.1.1.7"
	var m []byte
	m = elem(m, 2, 1, "OB", []byte{0, 1})
	m = elem(m, 2, 2, "UI", uidValue(class))
	m = elem(m, 2, 3, "UI", uidValue(sop))
	m = elem(m, 2, 0x10, "UI", uidValue(ts))
	meta = make([]byte, 128, 512)
	meta = append(meta, "DICM"...)
	meta = elem(meta, 2, 0, "UL", binary.LittleEndian.AppendUint32(nil, uint32(len(m))))
	meta = append(meta, m...)
	var d []byte
	d = elem(d, 8, 0x16, "UI", uidValue(class))
	d = elem(d, 8, 0x18, "UI", uidValue(sop))
	d = elem(d, 0x10, 0x20, "LO", []byte("HOSTILE1"))
	d = elem(d, 0x20, 0x0D, "UI", uidValue("1.2.826.0.1.3680043.10.1466.8.1"))
	d = elem(d, 0x20, 0x0E, "UI", uidValue("1.2.826.0.1.3680043.10.1466.8.2"))
	return meta, d
}

// TestSecurityHostileBodies sends STOW-RS bodies built to exhaust memory or
// time and checks that each is refused quickly, with a bounded heap, and
// that nothing is stored.
func TestSecurityHostileBodies(t *testing.T) {
	const explicitLE, deflatedLE = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.1.99"
	var cases []struct {
		name string
		body func() io.Reader // after the part header
		want []int
	}
	add := func(name string, want []int, body func() io.Reader) {
		cases = append(cases, struct {
			name string
			body func() io.Reader
			want []int
		}{name, body, want})
	}
	refused := []int{http.StatusBadRequest, http.StatusConflict, http.StatusRequestEntityTooLarge}

	add("endless part of zeros", []int{http.StatusRequestEntityTooLarge}, func() io.Reader {
		return &endless{n: -1}
	})
	add("valid header, endless pixel data", []int{http.StatusRequestEntityTooLarge}, func() io.Reader {
		meta, d := part10(explicitLE, "1.2.826.0.1.3680043.10.1466.8.3")
		head := append(meta, d...)
		head = binary.LittleEndian.AppendUint16(head, 0x7FE0)
		head = binary.LittleEndian.AppendUint16(head, 0x0010)
		head = append(head, "OW\x00\x00\xF0\xFF\xFF\xFF"...)
		return io.MultiReader(bytes.NewReader(head), &endless{n: -1, b: 7})
	})
	add("element claiming 4 GiB", refused, func() io.Reader {
		meta, d := part10(explicitLE, "1.2.826.0.1.3680043.10.1466.8.4")
		d = binary.LittleEndian.AppendUint16(d, 0x0029)
		d = binary.LittleEndian.AppendUint16(d, 0x1010)
		d = append(d, "UN\x00\x00\xFE\xFF\xFF\xFF"...)
		return io.MultiReader(bytes.NewReader(meta), bytes.NewReader(d), &endless{n: 1 << 20, b: 1})
	})
	add("5,000 nested sequences", refused, func() io.Reader {
		meta, d := part10(explicitLE, "1.2.826.0.1.3680043.10.1466.8.5")
		open := []byte{0x40, 0x00, 0x30, 0xA7, 'S', 'Q', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0xFE, 0xFF, 0x00, 0xE0, 0xFF, 0xFF, 0xFF, 0xFF}
		closeSeq := []byte{0xFE, 0xFF, 0x0D, 0xE0, 0, 0, 0, 0, 0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0}
		return io.MultiReader(bytes.NewReader(meta), bytes.NewReader(d),
			bytes.NewReader(bytes.Repeat(open, 5000)), bytes.NewReader(bytes.Repeat(closeSeq, 5000)))
	})
	add("deflate bomb, one huge element", refused, func() io.Reader {
		meta, d := part10(deflatedLE, "1.2.826.0.1.3680043.10.1466.8.6")
		var z bytes.Buffer
		fw, _ := flate.NewWriter(&z, flate.BestSpeed)
		_, _ = fw.Write(d)
		hdr := elem(nil, 0x0029, 0x1010, "OB", nil)
		binary.LittleEndian.PutUint32(hdr[8:], 0xFFFFFFF0) // nearly 4 GiB
		_, _ = fw.Write(hdr)
		_, _ = io.Copy(fw, &endless{n: 16 << 20})
		_ = fw.Close()
		return io.MultiReader(bytes.NewReader(meta), &z)
	})
	// 256 MiB of valid elements inflate within HeaderLimits.MaxInflatedBytes
	// (4 GiB): storing the (small) deflated instance is legitimate; what is
	// under test is that inflating it streams with a flat heap.
	add("deflate bomb, many elements", append(refused, http.StatusOK), func() io.Reader {
		meta, d := part10(deflatedLE, "1.2.826.0.1.3680043.10.1466.8.7")
		var z bytes.Buffer
		fw, _ := flate.NewWriter(&z, flate.BestSpeed)
		_, _ = fw.Write(d)
		el := elem(nil, 0x0029, 0x1010, "OB", make([]byte, 60<<10))
		for range (256 << 20) / len(el) { // 256 MiB inflated from well under 1 MiB
			_, _ = fw.Write(el)
		}
		_ = fw.Close()
		return io.MultiReader(bytes.NewReader(meta), &z)
	})

	for _, backend := range hostileBackends {
		t.Run(backend.name, func(t *testing.T) { testHostileBodies(t, backend.open(t), cases) })
	}
}

func testHostileBodies(t *testing.T, w wiring, cases []struct {
	name string
	body func() io.Reader
	want []int
}) {
	w.cfg.Limits = Limits{MaxRequestBytes: 32 << 20}
	w.deps.Ingester.MaxInstanceBytes = 8 << 20
	ts := newAuthTestServer(t, w)
	for _, tt := range cases {
		t.Run(tt.name, func(t *testing.T) {
			body, ctype := stowBody(nil, tt.body())
			stop := peakHeap()
			start := time.Now()
			// A deadline, not a speed check: a refusal that never comes fails.
			ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, http.MethodPost, ts.URL+"/dicomweb/studies", body)
			req.Header.Set("Content-Type", ctype)
			resp, err := ts.Client().Do(req)
			elapsed := time.Since(start)
			peak := stop()
			if err != nil {
				t.Fatalf("request failed instead of an answer: %v", err)
			}
			msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
			resp.Body.Close()
			if !containsInt(tt.want, resp.StatusCode) {
				t.Errorf("status = %d %s, want one of %v", resp.StatusCode, msg, tt.want)
			}
			if peak > 96<<20 {
				t.Errorf("peak heap growth %d MiB, want at most 96 MiB", peak>>20)
			}
			t.Logf("%d in %s, peak heap growth %.1f MiB", resp.StatusCode, elapsed.Round(time.Millisecond), float64(peak)/(1<<20))
		})
	}
	var stored int
	_ = w.deps.Blobs.Walk(t.Context(), "", func(bi gateway.BlobInfo) error {
		if !strings.Contains(bi.Key, "1.2.826.0.1.3680043.10.1466.8.7") {
			stored++
		}
		return nil
	})
	if stored != 0 {
		t.Errorf("%d blobs stored from hostile bodies, want 0", stored)
	}
}

// hostileBackends are the two backend families the hostile-input tests
// run on: the embedded default, and S3 (MinIO) + Redis.
var hostileBackends = []struct {
	name string
	open func(t *testing.T) wiring
}{
	{"embedded", func(t *testing.T) wiring { return embeddedServer(t, nil) }},
	{"minio+redis", productionServer},
}

// productionServer is a server on a fresh MinIO bucket and Redis prefix.
func productionServer(t *testing.T) wiring {
	b := backendtest.Open(t, backendtest.Production, backendtest.Options{})
	return wiring{deps: gateway.ServiceDeps{
		Blobs: b.Blobs, Index: b.Index, AuditLog: b.AuditLog,
		Ingester: &gateway.Ingester{Blobs: b.Blobs, Index: b.Index},
	}}
}

// TestSecurityEndlessPartWithoutRequestLimit: with no request limit, a part
// that never ends after passing the instance limit is not read for ever:
// the request ends with 413 once oversizeDrain more bytes have been thrown
// away, and nothing is stored.
func TestSecurityEndlessPartWithoutRequestLimit(t *testing.T) {
	w := embeddedServer(t, nil)
	w.cfg.Limits = Limits{MaxRequestBytes: 0}
	w.deps.Ingester.MaxInstanceBytes = 1 << 20
	ts := newAuthTestServer(t, w)
	meta, d := part10("1.2.840.10008.1.2.1", "1.2.826.0.1.3680043.10.1466.8.9")
	head := append(meta, d...)
	head = binary.LittleEndian.AppendUint16(head, 0x7FE0)
	head = binary.LittleEndian.AppendUint16(head, 0x0010)
	head = append(head, "OW\x00\x00\xF0\xFF\xFF\xFF"...)
	body, ctype := stowBody(nil, io.MultiReader(bytes.NewReader(head), &endless{n: -1, b: 7}))
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, ts.URL+"/dicomweb/studies", body)
	req.Header.Set("Content-Type", ctype)
	resp, err := ts.Client().Do(req)
	if err != nil {
		t.Fatalf("request failed instead of an answer: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Errorf("status = %d, want 413", resp.StatusCode)
	}
	n := 0
	_ = w.deps.Blobs.Walk(t.Context(), "", func(gateway.BlobInfo) error { n++; return nil })
	if n != 0 {
		t.Errorf("%d blobs stored, want 0", n)
	}
}

func containsInt(xs []int, x int) bool {
	for _, v := range xs {
		if v == x {
			return true
		}
	}
	return false
}

// TestSecuritySlowClient checks that a client that never finishes its
// request headers is cut by ReadHeaderTimeout.
func TestSecuritySlowClient(t *testing.T) {
	s := New(Config{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 300 * time.Millisecond, ErrorLog: log.New(io.Discard, "", 0)}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })

	conn, err := (&net.Dialer{}).DialContext(t.Context(), "tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	start := time.Now()
	// One header byte at a time, slower than the whole header may take.
	for _, b := range []byte("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ") {
		if _, err := conn.Write([]byte{b}); err != nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	got, err := io.ReadAll(bufio.NewReader(conn))
	elapsed := time.Since(start)
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatalf("connection still open after %s: ReadHeaderTimeout did not cut it", elapsed)
	}
	if bytes.Contains(got, []byte("200 OK")) {
		t.Errorf("slow request was served: %q", got)
	}
	if elapsed > 3*time.Second {
		t.Errorf("cut after %s, want about the 300ms header timeout", elapsed)
	}
	t.Logf("slow client cut after %s (answer %q)", elapsed.Round(time.Millisecond), fmt.Sprintf("%.40s", got))
}
