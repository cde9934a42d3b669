package dicomweb_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"net/textproto"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/dicom-gateway/gateway/dicomcodec"
	"github.com/dicom-gateway/gateway/gateway"
	"github.com/dicom-gateway/gateway/internal/backendtest"
	"github.com/dicom-gateway/gateway/internal/testcorpus"
)

// stowBackend builds the blob store and index of one backend family.
type stowBackend struct {
	name string
	open func(t testing.TB) (gateway.BlobStore, gateway.Index)
}

var stowBackends = []stowBackend{
	{"embedded", func(t testing.TB) (gateway.BlobStore, gateway.Index) {
		b := backendtest.Open(t, backendtest.Embedded, backendtest.Options{})
		return b.Blobs, b.Index
	}},
	{"minio+redis", func(t testing.TB) (gateway.BlobStore, gateway.Index) {
		b := backendtest.Open(t, backendtest.Production, backendtest.Options{})
		return b.Blobs, b.Index
	}},
}

// stowServer is a gateway with only what STOW-RS needs.
type stowServer struct {
	srv   *httptest.Server
	blobs gateway.BlobStore
	index gateway.Index
	audit *stowAudit
}

func newStowServer(t testing.TB, b stowBackend, configure func(*testWiring)) *stowServer {
	t.Helper()
	blobs, index := b.open(t)
	audit := &stowAudit{}
	w := testWiring{ServiceDeps: gateway.ServiceDeps{Name: "test", Blobs: blobs, Index: index, Auditor: audit, Ingester: &gateway.Ingester{Blobs: blobs, Index: index}}}
	if configure != nil {
		configure(&w)
	}
	srv := httptest.NewServer(w.server().Handler())
	t.Cleanup(srv.Close)
	return &stowServer{srv: srv, blobs: w.Blobs, index: index, audit: audit}
}

// stowAudit records events; fail makes Record fail as an unreachable log would.
type stowAudit struct {
	mu     sync.Mutex
	events []gateway.AuditEvent
	fail   bool
}

func (a *stowAudit) Record(_ context.Context, ev *gateway.AuditEvent) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.fail {
		return fmt.Errorf("audit log down: %w", gateway.ErrUnavailable)
	}
	a.events = append(a.events, *ev)
	return nil
}

// stowPart is one part of a request body.
type stowPart struct {
	contentType string // "" = no Content-Type header
	data        []byte
	header      textproto.MIMEHeader // more part headers
}

func multipartBody(t testing.TB, parts ...stowPart) (*bytes.Buffer, string) {
	t.Helper()
	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	for _, p := range parts {
		h := textproto.MIMEHeader{}
		for k, vs := range p.header {
			h[k] = vs
		}
		if p.contentType != "" {
			h.Set("Content-Type", p.contentType)
		}
		w, err := mw.CreatePart(h)
		if err != nil {
			t.Fatal(err)
		}
		w.Write(p.data)
	}
	mw.Close()
	return &body, mw.Boundary()
}

// stowResult is a decoded STOW-RS answer.
type stowResult struct {
	status int
	header http.Header
	body   []byte
	ds     dicomcodec.Dataset
}

func (r stowResult) failureReasons() []int64 {
	var out []int64
	if a, ok := r.ds["00081198"]; ok {
		for _, it := range a.Value {
			v := it.(dicomcodec.Dataset)["00081197"].Value
			if len(v) == 1 {
				out = append(out, v[0].(int64))
			}
		}
	}
	return out
}

func (r stowResult) referenced() int {
	return len(r.ds["00081199"].Value)
}

func (s *stowServer) post(t testing.TB, path, contentType string, body io.Reader, header ...string) stowResult {
	t.Helper()
	req, err := http.NewRequestWithContext(context.Background(), http.MethodPost, s.srv.URL+path, body)
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	res := stowResult{status: resp.StatusCode, header: resp.Header, body: b}
	if strings.HasPrefix(resp.Header.Get("Content-Type"), "application/dicom+json") {
		if err := json.Unmarshal(b, &res.ds); err != nil {
			t.Fatalf("response is not DICOM JSON: %v: %s", err, b)
		}
	}
	return res
}

func (s *stowServer) stow(t testing.TB, path string, parts ...stowPart) stowResult {
	t.Helper()
	body, boundary := multipartBody(t, parts...)
	return s.post(t, path, `multipart/related; type="application/dicom"; boundary=`+boundary, body)
}

func dicomPart(data []byte) stowPart { return stowPart{contentType: "application/dicom", data: data} }

// storedBytes reads back the blob of a stored instance.
func (s *stowServer) storedBytes(t testing.TB, sopUID string) ([]byte, *gateway.InstanceRecord) {
	t.Helper()
	rec, err := s.index.GetInstance(context.Background(), sopUID)
	if err != nil {
		t.Fatalf("GetInstance(%s): %v", sopUID, err)
	}
	rc, err := s.blobs.Get(context.Background(), rec.Key(), 0, -1)
	if err != nil {
		t.Fatalf("Get blob: %v", err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return b, rec
}

// TestStowCorpus stores every corpus file by STOW-RS on both backend
// families: each is stored byte for byte, or refused with a FailureReason;
// never a 500.
func TestStowCorpus(t *testing.T) {
	files := testcorpus.Files(t)
	for _, b := range stowBackends {
		t.Run(b.name, func(t *testing.T) {
			s := newStowServer(t, b, nil)
			stored := map[string]string{} // SOP Instance UID → file
			for _, f := range files {
				data, err := os.ReadFile(f.Path)
				if err != nil {
					t.Fatal(err)
				}
				res := s.stow(t, "/dicomweb/studies", dicomPart(data))
				h, perr := dicomcodec.ParseHeader(bytes.NewReader(data), dicomcodec.HeaderLimits{})
				switch res.status {
				case http.StatusOK:
					if res.referenced() != 1 {
						t.Errorf("%s: 200 with %d referenced instances", f.Name, res.referenced())
						continue
					}
					got, rec := s.storedBytes(t, h.SOPInstanceUID)
					if !bytes.Equal(got, data) {
						t.Errorf("%s: stored %d bytes differ from the file's %d", f.Name, len(got), len(data))
					}
					if sum := sha256.Sum256(data); rec.SHA256 != hex.EncodeToString(sum[:]) || rec.Size != int64(len(data)) {
						t.Errorf("%s: record sha256 %s size %d, want the file's", f.Name, rec.SHA256, rec.Size)
					}
					if prev, dup := stored[h.SOPInstanceUID]; dup {
						t.Errorf("%s: stored although %s holds its SOP Instance UID with other bytes", f.Name, prev)
					}
					stored[h.SOPInstanceUID] = f.Name
				case http.StatusConflict:
					reasons := res.failureReasons()
					if len(reasons) != 1 || reasons[0] == 0 {
						t.Errorf("%s: 409 without one FailureReason: %s", f.Name, res.body)
						continue
					}
					storable := perr == nil && h.StudyInstanceUID != "" && h.SeriesInstanceUID != "" && !f.Malformed && h.SOPClassUID != "1.2.840.10008.1.3.10"
					if storable && reasons[0] != int64(gateway.ReasonDuplicateRejected) {
						t.Errorf("%s: well-formed instance refused with 0x%04X", f.Name, reasons[0])
					}
					if reasons[0] == int64(gateway.ReasonDuplicateRejected) {
						if _, dup := stored[h.SOPInstanceUID]; !dup {
							t.Errorf("%s: refused as a duplicate of nothing", f.Name)
						}
					}
				default:
					t.Errorf("%s: status %d: %s", f.Name, res.status, res.body)
				}
			}
			if len(stored) < len(files)/2 {
				t.Errorf("only %d of %d corpus files stored", len(stored), len(files))
			}
			// Every refused instance left nothing behind: each blob is indexed.
			n := 0
			if err := s.blobs.Walk(context.Background(), "studies/", func(bi gateway.BlobInfo) error { n++; return nil }); err != nil {
				t.Fatal(err)
			}
			if n != len(stored) {
				t.Errorf("%d blobs for %d stored instances", n, len(stored))
			}
		})
	}
}

// dicomElement encodes one Explicit VR Little Endian element.
func dicomElement(group, elem uint16, vr string, value []byte) []byte {
	if len(value)%2 == 1 {
		pad := byte(' ')
		if vr == "UI" || vr == "OB" {
			pad = 0
		}
		value = append(value, pad)
	}
	var b []byte
	b = binary.LittleEndian.AppendUint16(b, group)
	b = binary.LittleEndian.AppendUint16(b, elem)
	b = append(b, vr...)
	switch vr {
	case "OB", "OW", "OF", "SQ", "UN", "UT":
		b = append(b, 0, 0)
		b = binary.LittleEndian.AppendUint32(b, uint32(len(value)))
	default:
		b = binary.LittleEndian.AppendUint16(b, uint16(len(value)))
	}
	return append(b, value...)
}

func us(v uint16) []byte { return binary.LittleEndian.AppendUint16(nil, v) }

// makeInstance writes a small Part 10 CT instance (Explicit VR Little
// Endian) with native 16-bit pixels of the given rows×columns, every pixel
// set to fill.
func makeInstance(study, series, sop string, rows, cols int, fill byte) []byte {
	var meta []byte
	meta = append(meta, dicomElement(0x0002, 0x0001, "OB", []byte{0, 1})...)
	meta = append(meta, dicomElement(0x0002, 0x0002, "UI", []byte("1.2.840.10008.5.1.4.1.1.2"))...)
	meta = append(meta, dicomElement(0x0002, 0x0003, "UI", []byte(sop))...)
	meta = append(meta, dicomElement(0x0002, 0x0010, "UI", []byte("1.2.840.10008.1.2.1"))...)
	out := make([]byte, 128, 128+4+12+len(meta)+rows*cols*2+512)
	out = append(out, "DICM"...)
	out = append(out, dicomElement(0x0002, 0x0000, "UL", binary.LittleEndian.AppendUint32(nil, uint32(len(meta))))...)
	out = append(out, meta...)
	out = append(out, dicomElement(0x0008, 0x0016, "UI", []byte("1.2.840.10008.5.1.4.1.1.2"))...)
	out = append(out, dicomElement(0x0008, 0x0018, "UI", []byte(sop))...)
	out = append(out, dicomElement(0x0008, 0x0060, "CS", []byte("CT"))...)
	out = append(out, dicomElement(0x0010, 0x0010, "PN", []byte("Testpatient^Secretname"))...)
	out = append(out, dicomElement(0x0010, 0x0020, "LO", []byte("PID-4242"))...)
	out = append(out, dicomElement(0x0020, 0x000D, "UI", []byte(study))...)
	out = append(out, dicomElement(0x0020, 0x000E, "UI", []byte(series))...)
	out = append(out, dicomElement(0x0028, 0x0002, "US", us(1))...)
	out = append(out, dicomElement(0x0028, 0x0010, "US", us(uint16(rows)))...)
	out = append(out, dicomElement(0x0028, 0x0011, "US", us(uint16(cols)))...)
	out = append(out, dicomElement(0x0028, 0x0100, "US", us(16))...)
	out = append(out, dicomElement(0x0028, 0x0101, "US", us(16))...)
	out = append(out, dicomElement(0x0028, 0x0102, "US", us(15))...)
	out = append(out, dicomElement(0x0028, 0x0103, "US", us(0))...)
	out = append(out, dicomElement(0x7FE0, 0x0010, "OW", bytes.Repeat([]byte{fill}, rows*cols*2))...)
	return out
}

const (
	testStudy  = "1.2.826.0.1.3680043.10.1.1"
	testSeries = "1.2.826.0.1.3680043.10.1.1.1"
)

func testSOP(i int) string { return fmt.Sprintf("1.2.826.0.1.3680043.10.1.1.1.%d", i+1) }

// TestStowMultipartVariants accepts what real clients send: type and
// boundary quoted or not, parts with or without Content-Type.
func TestStowMultipartVariants(t *testing.T) {
	s := newStowServer(t, stowBackends[0], nil)
	for i, ct := range []string{
		`multipart/related; type="application/dicom"; boundary="%s"`,
		`multipart/related; type=application/dicom; boundary=%s`,
		`multipart/related;boundary=%s;type="application/dicom"`,
		`Multipart/Related; boundary=%s`,
	} {
		for j, partType := range []string{"application/dicom", ""} {
			data := makeInstance(testStudy, testSeries, testSOP(10*i+j), 4, 4, 1)
			body, boundary := multipartBody(t, stowPart{contentType: partType, data: data})
			res := s.post(t, "/dicomweb/studies", fmt.Sprintf(ct, boundary), body)
			if res.status != http.StatusOK || res.referenced() != 1 {
				t.Errorf("Content-Type %q, part type %q: status %d, %s", ct, partType, res.status, res.body)
			}
		}
	}
}

// TestStowLongBoundary: RFC 2046 caps a boundary at 70 characters, but
// Orthanc's DICOMweb client sends 73; up to 200 are accepted, more are not.
func TestStowLongBoundary(t *testing.T) {
	s := newStowServer(t, stowBackends[0], nil)
	for i, tt := range []struct {
		boundary string
		status   int
	}{
		{"0b1ac0b6-1d3c-4b7e-9a43-6a1f0f0c2f4e-5c6d1f32-8e8b-4f55-b0a8-3d1a3c1e9b77", http.StatusOK}, // 73, as Orthanc
		{strings.Repeat("b", 200), http.StatusOK},
		{strings.Repeat("b", 201), http.StatusBadRequest},
	} {
		var body bytes.Buffer
		mw := multipart.NewWriter(&body)
		if err := mw.SetBoundary(tt.boundary[:min(len(tt.boundary), 70)]); err != nil {
			t.Fatal(err)
		}
		part, err := mw.CreatePart(textproto.MIMEHeader{"Content-Type": {"application/dicom"}})
		if err != nil {
			t.Fatal(err)
		}
		part.Write(makeInstance(testStudy, testSeries, testSOP(300+i), 4, 4, 1))
		mw.Close()
		// multipart.Writer refuses boundaries over 70 characters: write a
		// short one and lengthen it in the body.
		raw := strings.ReplaceAll(body.String(), "--"+mw.Boundary(), "--"+tt.boundary)
		res := s.post(t, "/dicomweb/studies", `multipart/related; type="application/dicom"; boundary=`+tt.boundary, strings.NewReader(raw))
		if res.status != tt.status {
			t.Errorf("boundary of %d characters: status %d, want %d: %s", len(tt.boundary), res.status, tt.status, res.body)
		}
		if tt.status == http.StatusOK && res.referenced() != 1 {
			t.Errorf("boundary of %d characters: %d instances referenced, want 1", len(tt.boundary), res.referenced())
		}
	}
}

// TestStowStatusCodes covers every status STOW-RS answers with.
func TestStowStatusCodes(t *testing.T) {
	good := func(i int) []byte { return makeInstance(testStudy, testSeries, testSOP(i), 4, 4, 2) }
	truncated := good(99)[:400]
	t.Run("200 all stored", func(t *testing.T) {
		s := newStowServer(t, stowBackends[0], nil)
		res := s.stow(t, "/dicomweb/studies", dicomPart(good(1)), dicomPart(good(2)))
		if res.status != http.StatusOK || res.referenced() != 2 {
			t.Fatalf("status %d, %d referenced: %s", res.status, res.referenced(), res.body)
		}
		if got, want := res.ds.String("00081190"), s.srv.URL+"/dicomweb/studies/"+testStudy; got != want {
			t.Errorf("RetrieveURL = %q, want %q", got, want)
		}
		item := res.ds["00081199"].Value[0].(dicomcodec.Dataset)
		if got, want := item.String("00081190"), s.srv.URL+"/dicomweb/studies/"+testStudy+"/series/"+testSeries+"/instances/"+testSOP(1); got != want {
			t.Errorf("instance RetrieveURL = %q, want %q", got, want)
		}
		if got := item.String("00081150"); got != "1.2.840.10008.5.1.4.1.1.2" {
			t.Errorf("ReferencedSOPClassUID = %q", got)
		}
		if len(s.audit.events) != 1 || s.audit.events[0].Action != gateway.ActionStore || s.audit.events[0].Outcome != gateway.OutcomeSuccess {
			t.Fatalf("audit events %+v, want one successful store", s.audit.events)
		}
		if ev := s.audit.events[0]; len(ev.StudyUIDs) != 1 || ev.StudyUIDs[0] != testStudy || len(ev.PatientIDs) != 1 || ev.PatientIDs[0] != "PID-4242" || ev.Detail["stored"] != 2 {
			t.Errorf("audit event %+v", ev)
		}
	})
	t.Run("202 some failed", func(t *testing.T) {
		s := newStowServer(t, stowBackends[0], nil)
		res := s.stow(t, "/dicomweb/studies", dicomPart(good(1)), dicomPart(truncated), dicomPart([]byte("not dicom")))
		if res.status != http.StatusAccepted || res.referenced() != 1 {
			t.Fatalf("status %d: %s", res.status, res.body)
		}
		if got := res.failureReasons(); len(got) != 2 || got[0] != int64(gateway.ReasonCannotUnderstand) || got[1] != int64(gateway.ReasonCannotUnderstand) {
			t.Errorf("failure reasons %v, want two 0xC000", got)
		}
		if _, err := s.index.GetInstance(t.Context(), testSOP(99)); !errors.Is(err, gateway.ErrNotFound) {
			t.Errorf("truncated instance indexed: %v", err)
		}
		if _, err := s.blobs.Stat(t.Context(), gateway.InstanceKey(testStudy, testSeries, testSOP(99))); !errors.Is(err, gateway.ErrNotFound) {
			t.Errorf("truncated instance left a blob: %v", err)
		}
	})
	t.Run("409 none stored", func(t *testing.T) {
		s := newStowServer(t, stowBackends[0], nil)
		res := s.stow(t, "/dicomweb/studies", dicomPart(truncated))
		if res.status != http.StatusConflict || res.referenced() != 0 {
			t.Fatalf("status %d: %s", res.status, res.body)
		}
	})
	t.Run("400 unreadable", func(t *testing.T) {
		s := newStowServer(t, stowBackends[0], nil)
		for name, body := range map[string]string{
			"no parts":     "--b--\r\n",
			"no boundary":  "garbage without any boundary",
			"unterminated": "--b\r\nContent-Type: application/dicom\r\n\r\nabc",
		} {
			res := s.post(t, "/dicomweb/studies", "multipart/related; type=application/dicom; boundary=b", strings.NewReader(body))
			if res.status != http.StatusBadRequest {
				t.Errorf("%s: status %d, want 400: %s", name, res.status, res.body)
			}
		}
		if res := s.stow(t, "/dicomweb/studies/1..3", dicomPart(good(1))); res.status != http.StatusBadRequest {
			t.Errorf("bad study UID in the URL: status %d, want 400", res.status)
		}
	})
	t.Run("413 over the limits", func(t *testing.T) {
		s := newStowServer(t, stowBackends[0], func(s *testWiring) { s.Limits.MaxRequestBytes = 2000 })
		big := makeInstance(testStudy, testSeries, testSOP(5), 64, 64, 3)
		if res := s.stow(t, "/dicomweb/studies", dicomPart(big)); res.status != http.StatusRequestEntityTooLarge {
			t.Errorf("request over MaxRequestBytes: status %d, want 413: %s", res.status, res.body)
		}
		if _, err := s.index.GetInstance(t.Context(), testSOP(5)); !errors.Is(err, gateway.ErrNotFound) {
			t.Errorf("instance of a refused request indexed: %v", err)
		}
		s2 := newStowServer(t, stowBackends[0], func(s *testWiring) { s.Ingester.MaxInstanceBytes = 2000 })
		res := s2.stow(t, "/dicomweb/studies", dicomPart(big), dicomPart(good(6)))
		if res.status != http.StatusAccepted || len(res.failureReasons()) != 1 || res.failureReasons()[0] != int64(gateway.ReasonOutOfResources) {
			t.Errorf("instance over MaxInstanceBytes: status %d: %s", res.status, res.body)
		}
	})
	t.Run("415 media type", func(t *testing.T) {
		s := newStowServer(t, stowBackends[0], nil)
		for _, ct := range []string{"application/dicom", "application/json", `multipart/related; type="application/dicom+json"; boundary=b`, ""} {
			res := s.post(t, "/dicomweb/studies", ct, strings.NewReader("x"))
			if res.status != http.StatusUnsupportedMediaType || !strings.Contains(string(res.body), `multipart/related; type=\"application/dicom\"`) {
				t.Errorf("Content-Type %q: status %d, want 415 naming what is accepted: %s", ct, res.status, res.body)
			}
		}
	})
	t.Run("503 storage unavailable", func(t *testing.T) {
		s := newStowServer(t, stowBackends[0], func(s *testWiring) {
			s.Blobs = failingBlobs{s.Blobs}
			s.Ingester.Blobs = s.Blobs
		})
		res := s.stow(t, "/dicomweb/studies", dicomPart(good(1)))
		if res.status != http.StatusServiceUnavailable || len(res.failureReasons()) != 1 || res.failureReasons()[0] != int64(gateway.ReasonOutOfResources) {
			t.Fatalf("status %d: %s", res.status, res.body)
		}
		if _, err := s.index.GetInstance(t.Context(), testSOP(1)); !errors.Is(err, gateway.ErrNotFound) {
			t.Errorf("instance indexed although its blob failed: %v", err)
		}
	})
	t.Run("503 audit unavailable", func(t *testing.T) {
		s := newStowServer(t, stowBackends[0], nil)
		s.audit.fail = true
		if res := s.stow(t, "/dicomweb/studies", dicomPart(good(1))); res.status != http.StatusServiceUnavailable {
			t.Fatalf("status %d, want 503 when the audit event cannot be written: %s", res.status, res.body)
		}
	})
	t.Run("xml response", func(t *testing.T) {
		s := newStowServer(t, stowBackends[0], nil)
		body, boundary := multipartBody(t, dicomPart(good(1)), dicomPart(truncated))
		res := s.post(t, "/dicomweb/studies", "multipart/related; type=application/dicom; boundary="+boundary, body, "Accept", "application/dicom+xml")
		for _, want := range []string{`<NativeDicomModel xmlns="http://dicom.nema.org/PS3.19/models/NativeDICOM" xml:space="preserve">`, `tag="00081199" vr="SQ"`, `tag="00081197" vr="US"`, `<Value number="1">49152</Value>`, `<Value number="1">` + testSOP(1) + `</Value>`} {
			if !strings.Contains(string(res.body), want) {
				t.Errorf("XML response lacks %s:\n%s", want, res.body)
			}
		}
		if res.status != http.StatusAccepted {
			t.Errorf("status %d, want 202", res.status)
		}
	})
}

// failingBlobs is a blob store whose Put fails as an unreachable server's
// would, after reading part of the stream.
type failingBlobs struct{ gateway.BlobStore }

func (f failingBlobs) Put(ctx context.Context, key string, r io.Reader) (int64, error) {
	io.CopyN(io.Discard, r, 100)
	return 0, fmt.Errorf("put %s: connection refused: %w", key, gateway.ErrUnavailable)
}

// TestStowStudyMismatch refuses an instance of another study than the URL's,
// and stores the others of the request.
func TestStowStudyMismatch(t *testing.T) {
	for _, b := range stowBackends {
		t.Run(b.name, func(t *testing.T) {
			s := newStowServer(t, b, nil)
			other := makeInstance("1.2.826.0.1.3680043.10.1.2", "1.2.826.0.1.3680043.10.1.2.1", testSOP(7), 4, 4, 1)
			res := s.stow(t, "/dicomweb/studies/"+testStudy, dicomPart(makeInstance(testStudy, testSeries, testSOP(1), 4, 4, 1)), dicomPart(other))
			if res.status != http.StatusAccepted || res.referenced() != 1 {
				t.Fatalf("status %d: %s", res.status, res.body)
			}
			if got := res.failureReasons(); len(got) != 1 || got[0] != int64(gateway.ReasonDataSetSOPClassMismatch) {
				t.Errorf("failure reasons %v, want [0xA900]", got)
			}
			if res := s.stow(t, "/dicomweb/studies/"+testStudy, dicomPart(other)); res.status != http.StatusConflict {
				t.Errorf("only a mismatched instance: status %d, want 409", res.status)
			}
			if _, err := s.index.GetInstance(t.Context(), testSOP(7)); !errors.Is(err, gateway.ErrNotFound) {
				t.Errorf("mismatched instance indexed: %v", err)
			}
		})
	}
}

// TestStowDuplicates: the same bytes again succeed without a rewrite; other
// bytes under the same SOP Instance UID are refused and the original kept.
func TestStowDuplicates(t *testing.T) {
	for _, b := range stowBackends {
		t.Run(b.name, func(t *testing.T) {
			s := newStowServer(t, b, nil)
			first := makeInstance(testStudy, testSeries, testSOP(1), 8, 8, 1)
			second := makeInstance(testStudy, testSeries, testSOP(1), 8, 8, 2)
			if res := s.stow(t, "/dicomweb/studies", dicomPart(first)); res.status != http.StatusOK {
				t.Fatalf("first store: %d %s", res.status, res.body)
			}
			_, rec1 := s.storedBytes(t, testSOP(1))
			if res := s.stow(t, "/dicomweb/studies", dicomPart(first)); res.status != http.StatusOK || res.referenced() != 1 {
				t.Fatalf("same bytes again: %d %s", res.status, res.body)
			}
			_, rec2 := s.storedBytes(t, testSOP(1))
			if !rec2.StoredAt.Equal(rec1.StoredAt) {
				t.Errorf("identical resend rewrote the record (%v → %v)", rec1.StoredAt, rec2.StoredAt)
			}
			res := s.stow(t, "/dicomweb/studies", dicomPart(second))
			if res.status != http.StatusConflict || len(res.failureReasons()) != 1 || res.failureReasons()[0] != int64(gateway.ReasonDuplicateRejected) {
				t.Fatalf("different bytes: %d %s", res.status, res.body)
			}
			if got, _ := s.storedBytes(t, testSOP(1)); !bytes.Equal(got, first) {
				t.Errorf("original not kept")
			}

			// An index entry whose blob was lost is healed by a resend of
			// the same bytes, not answered "already stored".
			if err := s.blobs.Delete(t.Context(), rec1.Key()); err != nil {
				t.Fatal(err)
			}
			if res := s.stow(t, "/dicomweb/studies", dicomPart(second)); res.status != http.StatusConflict {
				t.Errorf("other bytes for an entry whose blob is lost: %d %s, want 409", res.status, res.body)
			}
			if _, err := s.blobs.Stat(t.Context(), rec1.Key()); !errors.Is(err, gateway.ErrNotFound) {
				t.Errorf("refused bytes left under the key: %v", err)
			}
			if res := s.stow(t, "/dicomweb/studies", dicomPart(first)); res.status != http.StatusOK {
				t.Fatalf("resend after the blob was lost: %d %s", res.status, res.body)
			}
			if got, _ := s.storedBytes(t, testSOP(1)); !bytes.Equal(got, first) {
				t.Errorf("resend did not restore the original bytes")
			}
		})
	}
}

// TestStowDuplicateReplace replaces under the "replace" policy.
func TestStowDuplicateReplace(t *testing.T) {
	s := newStowServer(t, stowBackends[0], func(s *testWiring) { s.Ingester.DuplicatePolicy = gateway.DuplicateReplace })
	first := makeInstance(testStudy, testSeries, testSOP(1), 8, 8, 1)
	second := makeInstance(testStudy, testSeries, testSOP(1), 8, 8, 2)
	s.stow(t, "/dicomweb/studies", dicomPart(first))
	if res := s.stow(t, "/dicomweb/studies", dicomPart(second)); res.status != http.StatusOK {
		t.Fatalf("replace: %d %s", res.status, res.body)
	}
	got, rec := s.storedBytes(t, testSOP(1))
	if sum := sha256.Sum256(second); !bytes.Equal(got, second) || rec.SHA256 != hex.EncodeToString(sum[:]) {
		t.Errorf("replacement not stored")
	}
}

// TestStowConcurrentIdentical sends one instance from many clients at once:
// all succeed, one blob, one consistent record.
func TestStowConcurrentIdentical(t *testing.T) {
	for _, b := range stowBackends {
		t.Run(b.name, func(t *testing.T) {
			s := newStowServer(t, b, nil)
			data := makeInstance(testStudy, testSeries, testSOP(1), 64, 64, 9)
			var wg sync.WaitGroup
			statuses := make([]int, 8)
			for i := range statuses {
				wg.Go(func() { statuses[i] = s.stow(t, "/dicomweb/studies", dicomPart(data)).status })
			}
			wg.Wait()
			for i, st := range statuses {
				if st != http.StatusOK {
					t.Errorf("upload %d: status %d", i, st)
				}
			}
			got, rec := s.storedBytes(t, testSOP(1))
			if sum := sha256.Sum256(data); !bytes.Equal(got, data) || rec.SHA256 != hex.EncodeToString(sum[:]) {
				t.Errorf("stored instance differs from the upload")
			}
			n := 0
			s.blobs.Walk(t.Context(), "studies/", func(gateway.BlobInfo) error { n++; return nil })
			if n != 1 {
				t.Errorf("%d blobs, want 1", n)
			}
		})
	}
}
