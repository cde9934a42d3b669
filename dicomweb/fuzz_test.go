package dicomweb

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"

	"github.com/dicom-gateway/gateway/dicomcodec"
	"github.com/dicom-gateway/gateway/internal/synth"
)

// FuzzMultipart drives the whole STOW-RS request parser (media type,
// boundary, multipart framing, part headers, the DICOM header parser behind
// them) with arbitrary Content-Type headers and bodies. Whatever arrives, the
// answer is one of the statuses STOW-RS defines, never a 500 or a panic.
// Seeds: well-formed requests built from the synthetic samples in
// testdata/studies, and damaged variants.
func FuzzMultipart(f *testing.F) {
	var inst bytes.Buffer
	if _, err := (synth.Instance{StudyInstanceUID: "1.2.3", SeriesInstanceUID: "1.2.3.4", SOPInstanceUID: "1.2.3.4.5", Rows: 4, Columns: 4}).WriteTo(&inst); err != nil {
		f.Fatal(err)
	}
	samples, _ := filepath.Glob(filepath.Join("..", "testdata", "studies", "*", "*.dcm"))
	parts := [][]byte{inst.Bytes()}
	for _, p := range samples[:min(2, len(samples))] {
		if b, err := os.ReadFile(p); err == nil {
			parts = append(parts, b)
		}
	}
	for _, part := range parts {
		for _, ct := range []string{
			`multipart/related; type="application/dicom"; boundary=b`,
			`multipart/related; type=application/dicom; boundary="b"`,
			`multipart/related; boundary=b`,
			`application/dicom`,
		} {
			body := "--b\r\nContent-Type: application/dicom\r\n\r\n" + string(part) + "\r\n--b--\r\n"
			f.Add(ct, []byte(body))
			f.Add(ct, []byte(body[:len(body)/2]))
			f.Add(ct, []byte("--b\r\n\r\n"+string(part[:len(part)/3])+"\r\n--b--\r\n"))
		}
	}
	f.Add(`multipart/related; type="application/dicom"; boundary=`, []byte("--\r\n"))
	f.Add(`multipart/related; type="application/dicom"; boundary=b`, []byte("--b\r\nContent-Type: text/plain\r\n\r\nhello\r\n--b--"))

	s := embeddedServer(f, nil)
	s.deps.Auditor = s.deps.AuditLog
	s.cfg.Limits = Limits{MaxRequestBytes: 8 << 20}
	s.deps.Ingester.MaxInstanceBytes = 4 << 20
	// Small inflate bound: a generated deflate stream may legitimately
	// inflate to the default 4 GiB, which costs seconds of CPU per input
	// (TestSecurityHostileBodies covers that case with a flat heap).
	s.deps.Ingester.HeaderLimits = dicomcodec.HeaderLimits{MaxInflatedBytes: 16 << 20}
	ts := s.serve().Handler()
	allowed := map[int]bool{200: true, 202: true, 400: true, 409: true, 413: true, 415: true, 503: true}
	f.Fuzz(func(t *testing.T, contentType string, body []byte) {
		req := httptest.NewRequest(http.MethodPost, "/dicomweb/studies", bytes.NewReader(body))
		req.Host = "127.0.0.1" // without auth only loopback hosts are served
		req.Header.Set("Content-Type", contentType)
		rec := httptest.NewRecorder()
		ts.ServeHTTP(rec, req)
		if !allowed[rec.Code] {
			t.Fatalf("Content-Type %q, %d-byte body: status %d: %s", contentType, len(body), rec.Code, rec.Body.String())
		}
	})
}
