package dicomweb_test

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"image"
	_ "image/jpeg"
	_ "image/png"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/dicom-gateway/gateway/dicomcodec"
	"github.com/dicom-gateway/gateway/dicomweb"
	"github.com/dicom-gateway/gateway/gateway"
	"github.com/dicom-gateway/gateway/internal/syncbuf"
	"github.com/dicom-gateway/gateway/internal/synth"
)

// synthStudy stores a synthetic study (series × instances of rows×cols,
// frames each) and returns its instances.
func (g *wadoGateway) synthStudy(t testing.TB, spec synth.StudySpec) []synth.Instance {
	t.Helper()
	ins := synth.Study(spec)
	for _, in := range ins {
		var buf bytes.Buffer
		if _, err := in.WriteTo(&buf); err != nil {
			t.Fatal(err)
		}
		if status := g.ingest(t, buf.Bytes()); status != http.StatusOK {
			t.Fatalf("store synthetic instance: status %d", status)
		}
	}
	return ins
}

func synthPath(in synth.Instance) string {
	return "/dicomweb/studies/" + in.StudyInstanceUID + "/series/" + in.SeriesInstanceUID + "/instances/" + in.SOPInstanceUID
}

func instanceBytes(t testing.TB, in synth.Instance) []byte {
	t.Helper()
	var buf bytes.Buffer
	if _, err := in.WriteTo(&buf); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestWADOStudyOrderAndSyntax retrieves a two-series study: every instance
// once, byte-identical, in index order, each part labelled with its syntax.
func TestWADOStudyOrderAndSyntax(t *testing.T) {
	for _, backend := range wadoBackends {
		t.Run(backend, func(t *testing.T) {
			g := newWADOGatewayOn(t, backend, nil)
			ins := g.synthStudy(t, synth.StudySpec{Seed: 11, Series: 2, InstancesPerSeries: 3, Rows: 16, Columns: 16, Frames: 2})
			parts := readParts(t, g.get(t, "/dicomweb/studies/"+ins[0].StudyInstanceUID), "application/dicom")
			if got, want := len(parts), len(ins); got != want {
				t.Fatalf("%d parts, want %d", got, want)
			}
			seen := map[string]bool{}
			for _, p := range parts {
				for _, in := range ins {
					if bytes.Equal(p.body, instanceBytes(t, in)) {
						seen[in.SOPInstanceUID] = true
					}
				}
				if got, want := p.contentType, "application/dicom; transfer-syntax="+synth.ExplicitVRLittleEndian; got != want {
					t.Errorf("part Content-Type %q, want %q", got, want)
				}
			}
			if got, want := len(seen), len(ins); got != want {
				t.Errorf("%d distinct instances byte-identical, want %d", got, want)
			}
			// Series level returns only that series.
			parts = readParts(t, g.get(t, "/dicomweb/studies/"+ins[0].StudyInstanceUID+"/series/"+ins[0].SeriesInstanceUID), "application/dicom")
			if got, want := len(parts), 3; got != want {
				t.Errorf("series: %d parts, want %d", got, want)
			}
			// Frames 2,1 of a native instance: the pixel bytes in the order asked.
			parts = readParts(t, g.get(t, synthPath(ins[0])+"/frames/2,1"), "application/octet-stream")
			data := instanceBytes(t, ins[0])
			frameSize := 16 * 16 * 2
			pixels := data[len(data)-2*frameSize:]
			if len(parts) != 2 || !bytes.Equal(parts[0].body, pixels[frameSize:]) || !bytes.Equal(parts[1].body, pixels[:frameSize]) {
				t.Errorf("frames 2,1: got %d parts not equal to the pixel data", len(parts))
			}
			if got, want := parts[0].contentType, "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1"; got != want {
				t.Errorf("frame Content-Type %q, want %q", got, want)
			}
		})
	}
}

// TestWADOErrors: every refusal carries the right status and a message.
func TestWADOErrors(t *testing.T) {
	g := newWADOGateway(t, nil)
	ins := g.synthStudy(t, synth.StudySpec{Seed: 12, Rows: 8, Columns: 8, Frames: 3})
	in := ins[0]
	st, se := "/dicomweb/studies/"+in.StudyInstanceUID, "/series/"+in.SeriesInstanceUID
	for _, tt := range []struct {
		path   string
		accept string
		status int
	}{
		{"/dicomweb/studies/1.2.3", "", http.StatusNotFound},
		{"/dicomweb/studies/1..2", "", http.StatusBadRequest},
		{"/dicomweb/studies/1.2.3./metadata", "", http.StatusBadRequest},
		{"/dicomweb/studies/1.02.3/metadata", "", http.StatusNotFound}, // a leading zero is tolerated (vendor UIDs), and unknown here
		{"/dicomweb/studies/abc/series/1.2", "", http.StatusBadRequest},
		{st + "/series/1.2.3", "", http.StatusNotFound},
		{st + se + "/instances/1.2.3", "", http.StatusNotFound},
		{st + "/series/1.2.3/instances/" + in.SOPInstanceUID, "", http.StatusNotFound}, // right instance, wrong series
		{st + se + "/instances/1.2x3/metadata", "", http.StatusBadRequest},
		{st + se + "/instances/1.2%2F3/metadata", "", http.StatusNotFound}, // decoded to another path: no route
		{synthPath(in) + "/frames/0", "", http.StatusBadRequest},
		{synthPath(in) + "/frames/1,x", "", http.StatusBadRequest},
		{synthPath(in) + "/frames/1,,2", "", http.StatusBadRequest},
		{synthPath(in) + "/frames/4", "", http.StatusNotFound},
		{synthPath(in) + "/frames/1,2,3,4", "", http.StatusNotFound},
		{synthPath(in) + "/frames/1", `multipart/related; type="image/jpeg"`, http.StatusNotAcceptable},
		{synthPath(in) + "/frames/1", `multipart/related; type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2.4.50`, http.StatusNotAcceptable},
		{st, `multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.80`, http.StatusNotAcceptable},
		{st, "application/dicom+xml", http.StatusNotAcceptable},
		{st + "/metadata", "application/dicom+xml", http.StatusNotAcceptable}, // PS3.18: metadata XML is multipart only
		{synthPath(in) + "/rendered", "image/gif", http.StatusNotAcceptable},
		{synthPath(in) + "/rendered?window=1", "", http.StatusBadRequest},
		{synthPath(in) + "/rendered?viewport=0,10", "", http.StatusBadRequest},
		{synthPath(in) + "/frames/1,2/rendered", "", http.StatusBadRequest},
		{synthPath(in) + "/bulkdata/00100010/x", "", http.StatusBadRequest},
		{synthPath(in) + "/bulkdata/00091001", "", http.StatusNotFound},
		{"/dicomweb/wado?requestType=WADO&studyUID=" + in.StudyInstanceUID, "", http.StatusBadRequest},
		{"/dicomweb/wado?requestType=XYZ", "", http.StatusBadRequest},
		{"/dicomweb/wado?requestType=WADO&studyUID=1.2&seriesUID=1.3&objectUID=1.4", "", http.StatusNotFound},
		{"/dicomweb/wado?requestType=WADO&studyUID=" + in.StudyInstanceUID + "&seriesUID=" + in.SeriesInstanceUID + "&objectUID=" + in.SOPInstanceUID +
			"&contentType=application/dicom&transferSyntax=1.2.840.10008.1.2.4.50", "", http.StatusNotAcceptable},
	} {
		t.Run(tt.path, func(t *testing.T) {
			accept := tt.accept
			if accept == "" {
				accept = "*/*"
			}
			resp := g.get(t, tt.path, "Accept", accept)
			if got, want := resp.StatusCode, tt.status; got != want {
				t.Fatalf("status %d, want %d: %s", got, want, readBody(t, resp))
			}
			if msg := errorBody(t, resp); tt.status == http.StatusNotAcceptable && !strings.Contains(msg, "available") && !strings.Contains(msg, "stored as") {
				t.Errorf("406 message %q does not say what is available", msg)
			}
		})
	}
}

// TestWADOMetadataCaching: ETag, If-None-Match → 304, gzip, absolute
// BulkDataURIs honouring PublicBaseURL.
func TestWADOMetadataCaching(t *testing.T) {
	for _, backend := range wadoBackends {
		t.Run(backend, func(t *testing.T) {
			g := newWADOGatewayOn(t, backend, func(s *testWiring) { s.PublicBaseURL = "https://pacs.example.nhs.uk" })
			ins := g.synthStudy(t, synth.StudySpec{Seed: 13, InstancesPerSeries: 5, Rows: 8, Columns: 8})
			path := "/dicomweb/studies/" + ins[0].StudyInstanceUID + "/series/" + ins[0].SeriesInstanceUID + "/metadata"
			resp := g.get(t, path)
			body := readBody(t, resp)
			etag := resp.Header.Get("ETag")
			if resp.StatusCode != http.StatusOK || etag == "" {
				t.Fatalf("status %d, ETag %q", resp.StatusCode, etag)
			}
			var arr []map[string]dicomcodec.Attribute
			if err := json.Unmarshal(body, &arr); err != nil {
				t.Fatal(err)
			}
			if got, want := len(arr), 5; got != want {
				t.Fatalf("%d instances, want %d", got, want)
			}
			for _, md := range arr {
				uri := md[dicomcodec.TagPixelData].BulkDataURI
				if !strings.HasPrefix(uri, "https://pacs.example.nhs.uk/") || !strings.Contains(uri, "/instances/") || !strings.HasSuffix(uri, "/bulkdata/7FE00010") {
					t.Errorf("Pixel Data BulkDataURI %q: not absolute under the public base URL", uri)
				}
			}
			resp = g.get(t, path, "If-None-Match", etag)
			if got, want := resp.StatusCode, http.StatusNotModified; got != want {
				t.Errorf("If-None-Match: status %d, want %d", got, want)
			}
			if b := readBody(t, resp); len(b) != 0 {
				t.Errorf("304 with a %d-byte body", len(b))
			}
			resp = g.get(t, path, "If-None-Match", `"other"`)
			if got, want := resp.StatusCode, http.StatusOK; got != want {
				t.Errorf("other ETag: status %d, want %d", got, want)
			}
			resp = g.get(t, path, "Accept-Encoding", "gzip, deflate")
			if got, want := resp.Header.Get("Content-Encoding"), "gzip"; got != want {
				t.Fatalf("Content-Encoding %q, want %q", got, want)
			}
			zr, err := gzip.NewReader(resp.Body)
			if err != nil {
				t.Fatal(err)
			}
			unzipped, err := io.ReadAll(zr)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(unzipped, body) {
				t.Errorf("gzipped metadata differs from the plain one")
			}
			if resp := g.get(t, path, "Accept-Encoding", "gzip;q=0"); resp.Header.Get("Content-Encoding") != "" {
				t.Errorf("gzip;q=0 still gzipped")
			}
			// A new instance changes the ETag.
			g.synthStudy(t, synth.StudySpec{Seed: 13, InstancesPerSeries: 6, Rows: 8, Columns: 8})
			if resp := g.get(t, path, "If-None-Match", etag); resp.StatusCode != http.StatusOK {
				t.Errorf("after a new instance: status %d, want 200", resp.StatusCode)
			}
		})
	}
}

// TestWADOAudit: retrieves are audited with study and patient; a failing
// audit log refuses the request (503) before any data is sent.
func TestWADOAudit(t *testing.T) {
	for _, backend := range wadoBackends {
		t.Run(backend, func(t *testing.T) {
			auditor := &switchAuditor{}
			g := newWADOGatewayOn(t, backend, func(w *testWiring) {
				auditor.next = w.Auditor
				w.Auditor = auditor
			})
			ins := g.synthStudy(t, synth.StudySpec{Seed: 14, Rows: 8, Columns: 8})
			study := ins[0].StudyInstanceUID
			readParts(t, g.get(t, "/dicomweb/studies/"+study), "application/dicom")
			events := g.auditEvents(t, study, gateway.ActionRetrieve)
			if got, want := len(events), 1; got != want {
				t.Fatalf("%d retrieve events, want %d", got, want)
			}
			if got, want := events[0].PatientIDs, []string{ins[0].PatientID}; !slices.Equal(got, want) {
				t.Errorf("audited patient IDs %v, want %v", got, want)
			}
			if got, want := events[0].Actor.Name, "local"; got != want {
				t.Errorf("actor %q, want %q", got, want)
			}

			auditor.fail.Store(true)
			for _, path := range []string{"/dicomweb/studies/" + study, "/dicomweb/studies/" + study + "/metadata", synthPath(ins[0]) + "/frames/1", synthPath(ins[0]) + "/rendered"} {
				resp := g.get(t, path)
				if got, want := resp.StatusCode, http.StatusServiceUnavailable; got != want {
					t.Errorf("%s with the audit log down: status %d, want %d", path, got, want)
				}
				if body := readBody(t, resp); bytes.Contains(body, []byte("DICM")) || bytes.Contains(body, []byte(ins[0].PatientID)) {
					t.Errorf("%s: patient data sent although the audit failed", path)
				}
			}
			resp := g.do(t, http.MethodDelete, "/dicomweb/studies/"+study)
			if got, want := resp.StatusCode, http.StatusServiceUnavailable; got != want {
				t.Errorf("DELETE with the audit log down: status %d, want %d", got, want)
			}
			if _, err := g.index.GetInstance(t.Context(), ins[0].SOPInstanceUID); err != nil {
				t.Errorf("instance deleted although the audit failed: %v", err)
			}
		})
	}
}

// TestWADOAbortMidStream: storage failing after the response started cuts
// the connection, so the client sees truncation rather than a complete
// response missing an instance.
func TestWADOAbortMidStream(t *testing.T) {
	var fb *midStreamFailingBlobs
	g := newWADOGateway(t, func(s *testWiring) {
		fb = &midStreamFailingBlobs{BlobStore: s.Blobs}
		s.Blobs = fb
	})
	ins := g.synthStudy(t, synth.StudySpec{Seed: 15, InstancesPerSeries: 3, Rows: 64, Columns: 64})
	recs, err := g.index.ListInstances(t.Context(), ins[0].StudyInstanceUID, "")
	if err != nil {
		t.Fatal(err)
	}
	fb.failKey.Store(recs[1].Key()) // the second part: after the response has started
	resp := g.get(t, "/dicomweb/studies/"+ins[0].StudyInstanceUID)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d", resp.StatusCode)
	}
	_, err = io.ReadAll(resp.Body)
	if err == nil {
		t.Fatal("response read to the end although storage failed mid-stream")
	}
	if !errors.Is(err, io.ErrUnexpectedEOF) && !strings.Contains(err.Error(), "EOF") && !strings.Contains(err.Error(), "reset") {
		t.Logf("read error: %v", err)
	}
	// Parts opened ahead of the one that failed are closed, not leaked.
	deadline := time.Now().Add(5 * time.Second)
	for fb.opened.Load() != fb.closed.Load() && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if o, c := fb.opened.Load(), fb.closed.Load(); o != c || o < 2 {
		t.Fatalf("%d blob reads opened, %d closed: want all closed (and at least 2 opened)", o, c)
	}
}

// TestWADODelete: instance, series and study deletes remove blobs and index
// entries, the study and series attributes QIDO returns follow, and a retry
// after a partial failure completes.
func TestWADODelete(t *testing.T) {
	for _, backend := range wadoBackends {
		t.Run(backend, func(t *testing.T) {
			g := newWADOGatewayOn(t, backend, nil)
			ins := g.synthStudy(t, synth.StudySpec{Seed: 16, Series: 2, InstancesPerSeries: 3, Rows: 8, Columns: 8})
			study := ins[0].StudyInstanceUID
			seriesCount := func() (series, instances int) {
				res, err := g.index.Search(t.Context(), &gateway.Query{Level: gateway.LevelSeries, StudyInstanceUID: study, Limit: 100})
				if err != nil {
					if errors.Is(err, gateway.ErrNotFound) {
						return 0, 0
					}
					t.Fatal(err)
				}
				for _, it := range res.Items {
					n, _ := it.Number("00201209", 0) // NumberOfSeriesRelatedInstances
					instances += int(n)
				}
				return len(res.Items), instances
			}
			if s, i := seriesCount(); s != 2 || i != 6 {
				t.Fatalf("before: %d series, %d instances; want 2, 6", s, i)
			}

			resp := g.do(t, http.MethodDelete, synthPath(ins[0]))
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("DELETE instance: status %d: %s", resp.StatusCode, readBody(t, resp))
			}
			if resp := g.get(t, synthPath(ins[0])); resp.StatusCode != http.StatusNotFound {
				t.Errorf("GET deleted instance: status %d, want 404", resp.StatusCode)
			}
			if _, err := g.blobs.Stat(t.Context(), gateway.InstanceKey(study, ins[0].SeriesInstanceUID, ins[0].SOPInstanceUID)); !errors.Is(err, gateway.ErrNotFound) {
				t.Errorf("blob of deleted instance: %v, want ErrNotFound", err)
			}
			if s, i := seriesCount(); s != 2 || i != 5 {
				t.Errorf("after instance delete: %d series, %d instances; want 2, 5", s, i)
			}
			if resp := g.do(t, http.MethodDelete, synthPath(ins[0])); resp.StatusCode != http.StatusNotFound {
				t.Errorf("second DELETE of the instance: status %d, want 404", resp.StatusCode)
			}

			resp = g.do(t, http.MethodDelete, "/dicomweb/studies/"+study+"/series/"+ins[3].SeriesInstanceUID)
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("DELETE series: status %d: %s", resp.StatusCode, readBody(t, resp))
			}
			if s, i := seriesCount(); s != 1 || i != 2 {
				t.Errorf("after series delete: %d series, %d instances; want 1, 2", s, i)
			}

			// A partial failure: the index entry of one instance is gone but its
			// blob stays (an orphan). DELETE of the study still removes everything.
			if err := g.index.DeleteInstance(t.Context(), ins[1].SOPInstanceUID); err != nil {
				t.Fatal(err)
			}
			resp = g.do(t, http.MethodDelete, "/dicomweb/studies/"+study)
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("DELETE study: status %d: %s", resp.StatusCode, readBody(t, resp))
			}
			var left []string
			g.blobs.Walk(t.Context(), gateway.StudyPrefix(study), func(bi gateway.BlobInfo) error {
				left = append(left, bi.Key)
				return nil
			})
			if len(left) != 0 {
				t.Errorf("blobs left after the study delete: %v", left)
			}
			if s, _ := seriesCount(); s != 0 {
				t.Errorf("after study delete: %d series, want 0", s)
			}
			if resp := g.get(t, "/dicomweb/studies/"+study); resp.StatusCode != http.StatusNotFound {
				t.Errorf("GET deleted study: status %d, want 404", resp.StatusCode)
			}
			if got := len(g.auditEvents(t, study, gateway.ActionDelete)); got != 3 {
				t.Errorf("%d delete audit events, want 3", got)
			}
		})
	}
}

// TestWADORenderedAndURI: rendered and thumbnail images of native
// greyscale, JPEG and PNG, WADO-URI for the object and its rendering.
func TestWADORenderedAndURI(t *testing.T) {
	g := newWADOGateway(t, nil)
	ins := g.synthStudy(t, synth.StudySpec{Seed: 17, Rows: 300, Columns: 200, Frames: 2})
	in := ins[0]
	for _, tt := range []struct {
		path, accept, mediaType string
		w, h                    int
	}{
		{synthPath(in) + "/rendered", "", "image/jpeg", 200, 300},
		{synthPath(in) + "/rendered", "image/png", "image/png", 200, 300},
		{synthPath(in) + "/frames/2/rendered?window=100,50&quality=50", "image/jpeg", "image/jpeg", 200, 300},
		{synthPath(in) + "/rendered?viewport=100,100", "", "image/jpeg", 67, 100},
		{synthPath(in) + "/thumbnail", "", "image/jpeg", 85, 128},
		{synthPath(in) + "/frames/1/thumbnail", "image/png", "image/png", 85, 128},
		{"/dicomweb/wado?requestType=WADO&studyUID=" + in.StudyInstanceUID + "&seriesUID=" + in.SeriesInstanceUID + "&objectUID=" + in.SOPInstanceUID, "", "image/jpeg", 200, 300},
		{"/dicomweb/wado?requestType=WADO&studyUID=" + in.StudyInstanceUID + "&seriesUID=" + in.SeriesInstanceUID + "&objectUID=" + in.SOPInstanceUID + "&contentType=image/png&rows=150&frameNumber=2", "", "image/png", 100, 150},
	} {
		t.Run(tt.path, func(t *testing.T) {
			resp := g.get(t, tt.path, "Accept", tt.accept)
			body := readBody(t, resp)
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("status %d: %s", resp.StatusCode, body)
			}
			if got := resp.Header.Get("Content-Type"); got != tt.mediaType {
				t.Errorf("Content-Type %q, want %q", got, tt.mediaType)
			}
			cfg, format, err := image.DecodeConfig(bytes.NewReader(body))
			if err != nil {
				t.Fatalf("not an image: %v", err)
			}
			if "image/"+format != tt.mediaType || cfg.Width != tt.w || cfg.Height != tt.h {
				t.Errorf("image %s %dx%d, want %s %dx%d", format, cfg.Width, cfg.Height, tt.mediaType, tt.w, tt.h)
			}
		})
	}
	resp := g.get(t, "/dicomweb/wado?requestType=WADO&studyUID="+in.StudyInstanceUID+"&seriesUID="+in.SeriesInstanceUID+"&objectUID="+in.SOPInstanceUID+"&contentType=application/dicom")
	if body := readBody(t, resp); resp.StatusCode != http.StatusOK || !bytes.Equal(body, instanceBytes(t, in)) {
		t.Errorf("WADO-URI application/dicom: status %d, %d bytes not equal to the stored instance", resp.StatusCode, len(body))
	}
	if got, want := resp.Header.Get("Content-Type"), "application/dicom"; got != want {
		t.Errorf("WADO-URI Content-Type %q, want %q", got, want)
	}
}

// TestCORS: configured origins get CORS headers and preflights answer
// without credentials; others get none.
func TestCORS(t *testing.T) {
	g := newWADOGateway(t, func(s *testWiring) { s.CORSOrigins = []string{"https://viewer.example.nhs.uk"} })
	ins := g.synthStudy(t, synth.StudySpec{Seed: 18, Rows: 8, Columns: 8})
	path := "/dicomweb/studies/" + ins[0].StudyInstanceUID + "/metadata"
	resp := g.do(t, http.MethodOptions, path, "Origin", "https://viewer.example.nhs.uk", "Access-Control-Request-Method", "GET",
		"Access-Control-Request-Headers", "authorization")
	if got, want := resp.StatusCode, http.StatusNoContent; got != want {
		t.Errorf("preflight status %d, want %d", got, want)
	}
	if got := resp.Header.Get("Access-Control-Allow-Origin"); got != "https://viewer.example.nhs.uk" {
		t.Errorf("preflight Allow-Origin %q", got)
	}
	if got := resp.Header.Get("Access-Control-Allow-Headers"); !strings.Contains(got, "Authorization") {
		t.Errorf("preflight Allow-Headers %q lacks Authorization", got)
	}
	resp = g.get(t, path, "Origin", "https://viewer.example.nhs.uk")
	if got := resp.Header.Get("Access-Control-Allow-Origin"); resp.StatusCode != http.StatusOK || got != "https://viewer.example.nhs.uk" {
		t.Errorf("GET: status %d, Allow-Origin %q", resp.StatusCode, got)
	}
	if got := resp.Header.Get("Access-Control-Expose-Headers"); !strings.Contains(got, "ETag") {
		t.Errorf("Expose-Headers %q lacks ETag", got)
	}
	resp = g.get(t, path, "Origin", "https://evil.example.com")
	if got := resp.Header.Get("Access-Control-Allow-Origin"); got != "" {
		t.Errorf("other origin got Allow-Origin %q", got)
	}
}

// TestWADOForwardedBaseTrustedProxiesOnly: with trusted_proxies set, the
// forwarded scheme, host and prefix are believed only from a listed proxy
// (a client elsewhere gets URLs of the gateway as it reached it); the
// test client on 127.0.0.1 is one when the list names it, by address or
// CIDR.
func TestWADOForwardedBaseTrustedProxiesOnly(t *testing.T) {
	auth, tokens := tokenAuth(t, dicomweb.TokenConfig{Name: "viewer", Roles: []gateway.Role{gateway.RoleRead}})
	for _, tc := range []struct {
		proxies []string
		forward bool
	}{
		{[]string{"10.0.0.5"}, false},
		{[]string{"10.0.0.0/8", "192.0.2.7"}, false},
		{[]string{"proxy.internal"}, false}, // unparsable: trusts nothing
		{[]string{"10.0.0.5", "127.0.0.1"}, true},
		{[]string{"127.0.0.0/8"}, true},
		{[]string{"::ffff:127.0.0.1"}, true},
		{[]string{"::ffff:127.0.0.0/104"}, true},
	} {
		var logs syncbuf.Buffer
		g := newWADOGateway(t, func(s *testWiring) {
			s.Auth, s.TrustedProxies = auth, tc.proxies
			s.Config.Logger = slog.New(slog.NewTextHandler(&logs, nil))
		})
		ins := g.synthStudy(t, synth.StudySpec{Seed: 19, Rows: 8, Columns: 8})
		for _, headers := range [][]string{
			{"X-Forwarded-Proto", "https", "X-Forwarded-Host", "pacs.example.nhs.uk", "X-Forwarded-Prefix", "/gw"},
			{"Forwarded", `proto=https;host=pacs.example.nhs.uk`, "X-Forwarded-Prefix", "/gw"},
		} {
			resp := g.get(t, synthPath(ins[0])+"/metadata", append([]string{"Authorization", "Bearer " + tokens["viewer"]}, headers...)...)
			var arr []map[string]dicomcodec.Attribute
			if err := json.Unmarshal(readBody(t, resp), &arr); err != nil || len(arr) != 1 {
				t.Fatalf("metadata: %v", err)
			}
			want := g.srv.URL + synthPath(ins[0]) + "/bulkdata/7FE00010"
			if tc.forward {
				want = "https://pacs.example.nhs.uk/gw" + synthPath(ins[0]) + "/bulkdata/7FE00010"
			}
			if got := arr[0][dicomcodec.TagPixelData].BulkDataURI; got != want {
				t.Errorf("trusted_proxies %v, %v: BulkDataURI %q, want %q", tc.proxies, headers, got, want)
			}
		}
		warned := strings.Count(logs.String(), "forwarded headers from a peer not in trusted_proxies ignored")
		if want := map[bool]int{false: 1, true: 0}[tc.forward]; warned != want {
			t.Errorf("trusted_proxies %v: warned %d times, want %d", tc.proxies, warned, want)
		}
		if strings.Contains(logs.String(), `msg="trusted_proxies ignored"`) {
			t.Errorf("trusted_proxies %v: gin refused the list: %s", tc.proxies, logs.String())
		}
	}
}

// TestWADOForwardedBase: behind a reverse proxy (which needs auth),
// BulkDataURIs and Content-Locations use the forwarded scheme, host and
// prefix, never the gateway's own address.
func TestWADOForwardedBase(t *testing.T) {
	auth, tokens := tokenAuth(t, dicomweb.TokenConfig{Name: "viewer", Roles: []gateway.Role{gateway.RoleRead}})
	g := newWADOGateway(t, func(s *testWiring) { s.Auth = auth })
	bearer := "Bearer " + tokens["viewer"]
	ins := g.synthStudy(t, synth.StudySpec{Seed: 19, Rows: 8, Columns: 8})
	parts := readParts(t, g.get(t, synthPath(ins[0]), "Accept", `multipart/related; type="application/dicom"; transfer-syntax=*`, "Authorization", bearer,
		"X-Forwarded-Proto", "https", "X-Forwarded-Host", "pacs.example.nhs.uk", "X-Forwarded-Prefix", "/gw"), "application/dicom")
	if want := "https://pacs.example.nhs.uk/gw" + synthPath(ins[0]); len(parts) != 1 || parts[0].location != want {
		t.Errorf("forwarded instance: %d parts, Content-Location %v, want %q", len(parts), parts, want)
	}
	resp := g.get(t, synthPath(ins[0])+"/metadata", "Authorization", bearer,
		"X-Forwarded-Proto", "https", "X-Forwarded-Host", "pacs.example.nhs.uk", "X-Forwarded-Prefix", "/gw")
	var arr []map[string]dicomcodec.Attribute
	if err := json.Unmarshal(readBody(t, resp), &arr); err != nil || len(arr) != 1 {
		t.Fatalf("metadata: %v", err)
	}
	want := "https://pacs.example.nhs.uk/gw" + synthPath(ins[0]) + "/bulkdata/7FE00010"
	if got := arr[0][dicomcodec.TagPixelData].BulkDataURI; got != want {
		t.Errorf("BulkDataURI %q, want %q", got, want)
	}
	// RFC 7239 Forwarded (first element: the proxy nearest the client) wins
	// over X-Forwarded-*; a host that could bend the URL is ignored, and the
	// request's own host is used.
	for _, tc := range []struct{ forwarded, want string }{
		{`for=192.0.2.60;proto=https;host="pacs.example.org:8443", for=10.0.0.1;proto=http;host=inner`, "https://pacs.example.org:8443/gw"},
		{`proto=https;host="evil.example/x@y"`, "https://" + strings.TrimPrefix(g.srv.URL, "http://") + "/gw"},
	} {
		resp := g.get(t, synthPath(ins[0])+"/metadata", "Authorization", bearer, "Forwarded", tc.forwarded,
			"X-Forwarded-Proto", "http", "X-Forwarded-Host", "other.example", "X-Forwarded-Prefix", "/gw")
		arr = nil
		if err := json.Unmarshal(readBody(t, resp), &arr); err != nil || len(arr) != 1 {
			t.Fatalf("metadata: %v", err)
		}
		if got, want := arr[0][dicomcodec.TagPixelData].BulkDataURI, tc.want+synthPath(ins[0])+"/bulkdata/7FE00010"; got != want {
			t.Errorf("Forwarded %q: BulkDataURI %q, want %q", tc.forwarded, got, want)
		}
	}
}
