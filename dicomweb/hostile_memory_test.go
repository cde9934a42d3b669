package dicomweb

import (
	"bytes"
	"compress/flate"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"io"
	"mime/multipart"
	"net/http"
	"net/textproto"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/dicom-gateway/gateway/dicomcodec"
	"github.com/dicom-gateway/gateway/gateway"
)

// deflatedUpload streams a Deflated Explicit VR Little Endian instance
// with pixelBytes of pixel data, stored deflate blocks (the compressed
// size grows with the pixel data, as a noisy image's does), and reports
// the SHA-256 and size of what it sent through sum once the stream ends.
func deflatedUpload(sop string, pixelBytes int64) (io.Reader, <-chan sentInstance) {
	const deflatedLE = "1.2.840.10008.1.2.1.99"
	meta, d := part10(deflatedLE, sop)
	pr, pw := io.Pipe()
	sum := make(chan sentInstance, 1)
	go func() {
		h := sha256.New()
		n := &countingWriter{}
		w := io.MultiWriter(pw, h, n)
		_, _ = w.Write(meta)
		fw, _ := flate.NewWriter(w, flate.NoCompression)
		_, _ = fw.Write(d)
		_, _ = fw.Write(elem(nil, 0x0028, 0x0010, "US", binary.LittleEndian.AppendUint16(nil, 1)))
		_, _ = fw.Write(elem(nil, 0x0028, 0x0011, "US", binary.LittleEndian.AppendUint16(nil, 1)))
		hdr := elem(nil, 0x7FE0, 0x0010, "OB", nil)
		binary.LittleEndian.PutUint32(hdr[8:], uint32(pixelBytes))
		_, _ = fw.Write(hdr)
		_, err := io.Copy(fw, &endless{n: pixelBytes, b: 0x5A})
		if err == nil {
			err = fw.Close()
		}
		sum <- sentInstance{sha256: hex.EncodeToString(h.Sum(nil)), size: n.n}
		pw.CloseWithError(err)
	}()
	return pr, sum
}

// sentInstance is what a generated upload sent.
type sentInstance struct {
	sha256 string
	size   int64
}

type countingWriter struct{ n int64 }

func (c *countingWriter) Write(p []byte) (int, error) { c.n += int64(len(p)); return len(p), nil }

// TestSecurityDeflatedUploadStreams (issue 16, finding 1): a deflated
// instance is stored with a flat heap, not held whole while its header is
// parsed, and the stored object is the bytes sent, unchanged.
func TestSecurityDeflatedUploadStreams(t *testing.T) {
	const sop = "1.2.826.0.1.3680043.10.1466.8.61"
	s := embeddedServer(t, nil)
	ts := newAuthTestServer(t, s)
	upload, sum := deflatedUpload(sop, 96<<20)
	body, ctype := stowBody(nil, upload)
	stop := peakHeap()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, ts.URL+"/dicomweb/studies", body)
	req.Header.Set("Content-Type", ctype)
	resp, err := ts.Client().Do(req)
	peak := stop()
	if err != nil {
		t.Fatal(err)
	}
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status = %d %s, want 200", resp.StatusCode, msg)
	}
	t.Logf("96 MiB of pixel data, deflated: peak heap growth %.1f MiB", float64(peak)/(1<<20))
	if peak > 32<<20 {
		t.Errorf("peak heap growth %d MiB while a 96 MiB deflated instance was stored, want at most 32 MiB", peak>>20)
	}
	sent := <-sum
	rec, err := s.deps.Index.GetInstance(t.Context(), sop)
	if err != nil {
		t.Fatal(err)
	}
	if rec.SHA256 != sent.sha256 || rec.Size != sent.size {
		t.Errorf("stored SHA-256 %s size %d differ from the bytes sent", rec.SHA256, rec.Size)
	}
	rc, err := s.deps.Blobs.Get(t.Context(), rec.Key(), 0, -1)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	h := sha256.New()
	if _, err := io.Copy(h, rc); err != nil {
		t.Fatal(err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != sent.sha256 {
		t.Errorf("blob SHA-256 %s, sent %s", got, sent.sha256)
	}
}

// multipartBody returns a multipart/related body with one application/dicom
// part per element of parts.
func multipartBody(parts ...[]byte) (*bytes.Buffer, string) {
	var b bytes.Buffer
	mw := multipart.NewWriter(&b)
	for _, p := range parts {
		w, _ := mw.CreatePart(textproto.MIMEHeader{"Content-Type": {"application/dicom"}})
		_, _ = w.Write(p)
	}
	_ = mw.Close()
	return &b, `multipart/related; type="application/dicom"; boundary=` + mw.Boundary()
}

func postStow(t *testing.T, ts *authTestServer, body io.Reader, ctype string) (int, []byte) {
	t.Helper()
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, ts.URL+"/dicomweb/studies", body)
	req.Header.Set("Content-Type", ctype)
	resp, err := ts.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	msg, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, msg
}

// TestSecurityStowPartFlood (issue 16, finding 2): a body of many empty
// parts (300,000 of them took RSS to 618 MB, wrote 300,000 log lines and a
// 26 MB answer) is cut at the part limit with a 413 that says so, one log
// line, and a small answer.
func TestSecurityStowPartFlood(t *testing.T) {
	s := embeddedServer(t, nil)
	ts := newAuthTestServer(t, s)
	const parts = 60_000 // 540 KB of body
	body, ctype := multipartBody(slices.Repeat([][]byte{nil}, parts)...)
	status, msg := postStow(t, ts, body, ctype)
	if status != http.StatusRequestEntityTooLarge || !strings.Contains(string(msg), "--max-stow-parts") {
		t.Errorf("status = %d %.300s, want 413 naming --max-stow-parts", status, msg)
	}
	if len(msg) > 4096 {
		t.Errorf("answer of %d bytes to a flood of empty parts", len(msg))
	}
	if n := strings.Count(ts.logs.String(), "\n"); n > 10 {
		t.Errorf("%d log lines for one request", n)
	}
	if n := strings.Count(ts.logs.String(), `"stow parts refused"`); n != 1 {
		t.Errorf("%d summary lines of refused parts, want 1:\n%.2000s", n, ts.logs.String())
	}
}

// TestStowPartLimit: up to Limits.MaxParts instances are stored; one more
// part gets 413, and what came before it stays stored. Empty parts are
// refused one by one (FailedSOPSequence, 0xC000) and summarised in one log
// line.
func TestStowPartLimit(t *testing.T) {
	s := embeddedServer(t, nil)
	s.cfg.Limits.MaxParts = 3
	ts := newAuthTestServer(t, s)
	instance := func(sop string) []byte {
		meta, d := part10("1.2.840.10008.1.2.1", sop)
		return append(meta, d...)
	}
	sops := []string{"1.2.826.0.1.3680043.10.1466.8.71", "1.2.826.0.1.3680043.10.1466.8.72", "1.2.826.0.1.3680043.10.1466.8.73", "1.2.826.0.1.3680043.10.1466.8.74"}

	body, ctype := multipartBody(instance(sops[0]), nil, []byte("not DICOM"))
	status, msg := postStow(t, ts, body, ctype)
	if status != http.StatusAccepted {
		t.Fatalf("1 instance + 2 bad parts: status = %d %s, want 202", status, msg)
	}
	var resp map[string]struct{ Value json.RawMessage }
	var failed []map[string]struct{ Value []any }
	if err := json.Unmarshal(msg, &resp); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(resp[tagFailedSOPSequence].Value, &failed); err != nil {
		t.Fatal(err)
	}
	if len(failed) != 2 {
		t.Fatalf("FailedSOPSequence has %d items, want 2: %s", len(failed), msg)
	}
	for _, item := range failed {
		if r := item[tagFailureReason].Value; len(r) != 1 || r[0] != float64(gateway.ReasonCannotUnderstand) {
			t.Errorf("failure reason %v, want 0xC000", r)
		}
	}
	logs := ts.logs.String()
	if strings.Count(logs, `"stow parts refused"`) != 1 || !strings.Contains(logs, `"refused":2`) {
		t.Errorf("want one summary line with refused 2:\n%s", logs)
	}

	body, ctype = multipartBody(instance(sops[1]), instance(sops[2]), instance(sops[3]))
	if status, msg := postStow(t, ts, body, ctype); status != http.StatusOK {
		t.Fatalf("3 instances, limit 3: status = %d %s", status, msg)
	}
	body, ctype = multipartBody(instance(sops[0]+"1"), instance(sops[1]+"1"), instance(sops[2]+"1"), instance(sops[3]+"1"))
	if status, msg := postStow(t, ts, body, ctype); status != http.StatusRequestEntityTooLarge {
		t.Fatalf("4 instances, limit 3: status = %d %s, want 413", status, msg)
	}
	for i, sop := range sops {
		_, err := s.deps.Index.GetInstance(t.Context(), sop+"1")
		if stored := err == nil; stored != (i < 3) {
			t.Errorf("instance %d of the refused request stored = %v (err %v)", i+1, stored, err)
		}
	}
}

// TestSecurityHeaderMemoryShared (issue 16, finding 7): the headers of
// concurrent uploads share one memory budget. While one upload holds it
// all, another instance is refused as unavailable (503, Retry-After,
// 0xA700) instead of adding its header on top (here without waiting; see
// TestHeaderMemoryWaits); once the first is done the second goes through,
// and every byte of the budget is given back.
func TestSecurityHeaderMemoryShared(t *testing.T) {
	const explicitLE = "1.2.840.10008.1.2.1"
	s := embeddedServer(t, nil)
	budget := dicomcodec.NewHeaderMemory(3 << 20)
	budget.Wait = 0 // refuse at once: the upload holding it is held open by the test
	s.deps.Ingester.HeaderMemory = budget
	ts := newAuthTestServer(t, s)

	// Upload A: a header with a 2.5 MiB private value, sent up to its end
	// and then held open, so its raw header bytes are kept.
	meta, d := part10(explicitLE, "1.2.826.0.1.3680043.10.1466.8.81")
	head := append(append(meta, d...), elem(nil, 0x0009, 0x0010, "LO", []byte("PROBE "))...)
	head = append(head, elem(nil, 0x0009, 0x1010, "OB", make([]byte, 5<<19))...)
	pr, pw := io.Pipe()
	release := make(chan struct{})
	go func() {
		_, _ = pw.Write(head)
		<-release
		_ = pw.Close()
	}()
	bodyA, ctypeA := stowBody(nil, pr)
	statusA := make(chan int, 1)
	go func() {
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, ts.URL+"/dicomweb/studies", bodyA)
		req.Header.Set("Content-Type", ctypeA)
		resp, err := ts.Client().Do(req)
		if err != nil {
			statusA <- 0
			return
		}
		resp.Body.Close()
		statusA <- resp.StatusCode
	}()
	for budget.Free() > 0 {
		select {
		case <-t.Context().Done():
			t.Fatal("upload A never took the budget")
		case <-time.After(10 * time.Millisecond):
		}
	}

	metaB, dB := part10(explicitLE, "1.2.826.0.1.3680043.10.1466.8.82")
	bodyB, ctypeB := multipartBody(append(metaB, dB...))
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, ts.URL+"/dicomweb/studies", bytes.NewReader(bodyB.Bytes()))
	req.Header.Set("Content-Type", ctypeB)
	resp, err := ts.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	msg, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" || !strings.Contains(string(msg), `"Value":[42752]`) {
		t.Errorf("upload B while A holds the budget: %d Retry-After %q %s, want 503 with Retry-After and 0xA700", resp.StatusCode, resp.Header.Get("Retry-After"), msg)
	}

	close(release)
	if st := <-statusA; st != http.StatusOK {
		t.Errorf("upload A: status %d, want 200", st)
	}
	if status, msg := postStow(t, ts, bytes.NewReader(bodyB.Bytes()), ctypeB); status != http.StatusOK {
		t.Errorf("upload B again after A: %d %s", status, msg)
	}
	if free := budget.Free(); free != 3<<20 {
		t.Errorf("budget free after both uploads = %d, want all %d", free, 3<<20)
	}
}
