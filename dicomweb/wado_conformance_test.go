package dicomweb_test

import (
	"bytes"
	"image"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"testing"

	"github.com/dicom-gateway/gateway/dicomcodec"
	"github.com/dicom-gateway/gateway/gateway"
	"github.com/dicom-gateway/gateway/internal/synth"
)

// casesGateway stores synth.MetadataCases (Explicit VR LE with sequences,
// Implicit VR LE multi-frame, JPEG Baseline) and returns their records by
// transfer syntax.
func casesGateway(t *testing.T, backend string) (*wadoGateway, map[string]*gateway.InstanceRecord) {
	t.Helper()
	g := newWADOGatewayOn(t, backend, nil)
	var study string
	for _, c := range synth.MetadataCases() {
		if status := g.ingest(t, c.Data); status != http.StatusOK {
			t.Fatalf("store %s: %d", c.Name, status)
		}
		study = studyUIDOf(t, c.Data)
	}
	recs, err := g.index.ListInstances(t.Context(), study, "")
	if err != nil {
		t.Fatal(err)
	}
	byTS := map[string]*gateway.InstanceRecord{}
	for _, r := range recs {
		byTS[r.TransferSyntaxUID] = r
	}
	for _, ts := range []string{dicomcodec.TSExplicitLE, dicomcodec.TSImplicitLE, dicomcodec.TSJPEGBaseline} {
		if byTS[ts] == nil {
			t.Fatalf("no stored instance in %s", ts)
		}
	}
	return g, byTS
}

func recPath(r *gateway.InstanceRecord) string {
	return "/dicomweb/studies/" + r.StudyInstanceUID + "/series/" + r.SeriesInstanceUID + "/instances/" + r.SOPInstanceUID
}

// TestWADOContentLocation: every part of a multipart retrieve names the
// resource it holds: the instance's URL at study, series and instance
// level, the frame's URL for frames (and for the frames of encapsulated
// pixel bulk data), the bulk data URI for other bulk data, the instance's
// metadata URL for each part of DICOM XML metadata. (Behind a proxy they
// follow the public base: TestWADOForwardedBase.)
func TestWADOContentLocation(t *testing.T) {
	for _, backend := range wadoBackends {
		t.Run(backend, func(t *testing.T) {
			g, byTS := casesGateway(t, backend)
			base := g.srv.URL
			anyTS := `multipart/related; type="application/dicom"; transfer-syntax=*`
			study := byTS[dicomcodec.TSJPEGBaseline].StudyInstanceUID
			parts := readParts(t, g.get(t, "/dicomweb/studies/"+study, "Accept", anyTS), "application/dicom")
			want := map[string]bool{}
			for _, r := range byTS {
				want[base+recPath(r)] = true
			}
			if len(parts) != len(want) {
				t.Fatalf("study: %d parts, want %d", len(parts), len(want))
			}
			for i, p := range parts {
				if !want[p.location] {
					t.Errorf("study part %d: Content-Location %q is not one of the study's instances", i, p.location)
				}
				delete(want, p.location)
			}
			implicit := byTS[dicomcodec.TSImplicitLE]
			parts = readParts(t, g.get(t, "/dicomweb/studies/"+study+"/series/"+implicit.SeriesInstanceUID, "Accept", anyTS), "application/dicom")
			for i, p := range parts {
				if !strings.HasPrefix(p.location, base+"/dicomweb/studies/"+study+"/series/"+implicit.SeriesInstanceUID+"/instances/") {
					t.Errorf("series part %d: Content-Location %q", i, p.location)
				}
			}
			parts = readParts(t, g.get(t, recPath(implicit), "Accept", anyTS), "application/dicom")
			if len(parts) != 1 || parts[0].location != base+recPath(implicit) {
				t.Errorf("instance: Content-Location %q, want %q", parts[0].location, base+recPath(implicit))
			}
			// DICOM XML metadata: one part an instance, naming its metadata.
			want = map[string]bool{}
			for _, r := range byTS {
				want[base+recPath(r)+"/metadata"] = true
			}
			parts = readParts(t, g.get(t, "/dicomweb/studies/"+study+"/metadata", "Accept", `multipart/related; type="application/dicom+xml"`), "application/dicom+xml")
			if len(parts) != len(want) {
				t.Fatalf("XML metadata: %d parts, want %d", len(parts), len(want))
			}
			for i, p := range parts {
				if !want[p.location] {
					t.Errorf("XML metadata part %d: Content-Location %q is not an instance's metadata URL", i, p.location)
				}
				delete(want, p.location)
			}

			// Frames: each part names its frame.
			frames := implicit.Frames()
			if frames < 2 {
				t.Fatalf("implicit case has %d frames, want a multi-frame", frames)
			}
			parts = readParts(t, g.get(t, recPath(implicit)+"/frames/2,1", "Accept", `multipart/related; type="application/octet-stream"`), "application/octet-stream")
			if len(parts) != 2 || parts[0].location != base+recPath(implicit)+"/frames/2" || parts[1].location != base+recPath(implicit)+"/frames/1" {
				for i, p := range parts {
					t.Errorf("frames part %d: Content-Location %q", i, p.location)
				}
			}
			// Pixel bulk data: native is one part, the bulk data URI;
			// encapsulated is one part a frame, each naming its frame.
			parts = readParts(t, g.get(t, recPath(implicit)+"/bulkdata/7FE00010", "Accept", `multipart/related; type="application/octet-stream"`), "application/octet-stream")
			if want := base + recPath(implicit) + "/bulkdata/7FE00010"; len(parts) != 1 || parts[0].location != want {
				t.Errorf("native pixel bulk data: %d parts, Content-Location %q, want %q", len(parts), parts[0].location, want)
			}
			jpeg := byTS[dicomcodec.TSJPEGBaseline]
			parts = readParts(t, g.get(t, recPath(jpeg)+"/bulkdata/7FE00010", "Accept", `multipart/related; type="image/jpeg"`), "image/jpeg")
			if len(parts) != jpeg.Frames() {
				t.Fatalf("encapsulated pixel bulk data: %d parts, want %d", len(parts), jpeg.Frames())
			}
			for i, p := range parts {
				if want := base + recPath(jpeg) + "/frames/" + strconv.Itoa(i+1); p.location != want {
					t.Errorf("encapsulated bulk data part %d: Content-Location %q, want %q", i, p.location, want)
				}
			}
			// Other bulk data (a private OB value): its URI.
			explicit := byTS[dicomcodec.TSExplicitLE]
			parts = readParts(t, g.get(t, recPath(explicit)+"/bulkdata/00091001", "Accept", `multipart/related; type="application/octet-stream"`), "application/octet-stream")
			if want := base + recPath(explicit) + "/bulkdata/00091001"; len(parts) != 1 || parts[0].location != want {
				t.Errorf("bulk data: Content-Location %q, want %q", parts[0].location, want)
			}
		})
	}
}

// TestWADOMultipartContentType: the type parameter of a multipart response
// is a bare media type; the transfer syntax is a parameter of its own when
// every part has the same one, and absent when the parts differ.
func TestWADOMultipartContentType(t *testing.T) {
	for _, backend := range wadoBackends {
		t.Run(backend, func(t *testing.T) {
			g, byTS := casesGateway(t, backend)
			implicit := byTS[dicomcodec.TSImplicitLE]
			for _, tt := range []struct {
				path, accept, wantType, wantTS string
			}{
				{recPath(implicit), `multipart/related; type="application/dicom"; transfer-syntax=*`, "application/dicom", dicomcodec.TSImplicitLE},
				{recPath(implicit), `multipart/related; type="application/dicom"`, "application/dicom", dicomcodec.TSExplicitLE},
				{recPath(implicit) + "/frames/1", `multipart/related; type="application/octet-stream"`, "application/octet-stream", dicomcodec.TSExplicitLE},
				{recPath(byTS[dicomcodec.TSJPEGBaseline]) + "/frames/1", `multipart/related; type="image/jpeg"`, "image/jpeg", dicomcodec.TSJPEGBaseline},
				// Three syntaxes in one study: each part says its own.
				{"/dicomweb/studies/" + implicit.StudyInstanceUID, `multipart/related; type="application/dicom"; transfer-syntax=*`, "application/dicom", ""},
			} {
				resp := g.get(t, tt.path, "Accept", tt.accept)
				ct := resp.Header.Get("Content-Type")
				mt, params, err := mime.ParseMediaType(ct)
				if err != nil || mt != "multipart/related" {
					t.Fatalf("%s: Content-Type %q (%v)", tt.path, ct, err)
				}
				if got := params["type"]; got != tt.wantType || strings.ContainsAny(got, ";=") {
					t.Errorf("%s: type=%q, want the bare %q", tt.path, got, tt.wantType)
				}
				if got := params["transfer-syntax"]; got != tt.wantTS {
					t.Errorf("%s: transfer-syntax=%q, want %q (Content-Type %s)", tt.path, got, tt.wantTS, ct)
				}
				for i, p := range readParts(t, resp, tt.wantType) {
					_, pp, err := mime.ParseMediaType(p.contentType)
					if err != nil || pp["transfer-syntax"] == "" || (tt.wantTS != "" && pp["transfer-syntax"] != tt.wantTS) {
						t.Errorf("%s part %d: Content-Type %q", tt.path, i, p.contentType)
					}
				}
			}
		})
	}
}

// TestWADOAcceptErrors: PS3.18 8.7.5 and 8.7.7. A retrieve of a DICOM
// resource with no Accept header is 406, and so is an empty one; */* (what
// curl sends) gets the default representation; an Accept that mixes DICOM
// and rendered media types is 400. Rendered resources keep answering JPEG
// without an Accept header and take browsers' image Accept lists; a single
// JPEG frame asked for as image/jpeg alongside its multipart form is not a
// mix (both are bulk data).
func TestWADOAcceptErrors(t *testing.T) {
	for _, backend := range wadoBackends {
		t.Run(backend, func(t *testing.T) {
			g, byTS := casesGateway(t, backend)
			explicit, jpeg := byTS[dicomcodec.TSExplicitLE], byTS[dicomcodec.TSJPEGBaseline]
			study := "/dicomweb/studies/" + explicit.StudyInstanceUID
			series := study + "/series/" + explicit.SeriesInstanceUID
			dicomResources := []string{
				study, study + "/metadata", series, series + "/metadata",
				recPath(explicit), recPath(explicit) + "/metadata", recPath(explicit) + "/frames/1",
				recPath(explicit) + "/bulkdata/7FE00010", recPath(explicit) + "/bulkdata/00091001",
			}
			for _, path := range dicomResources {
				for _, accept := range []string{"", " "} {
					req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, g.srv.URL+path, nil)
					if err != nil {
						t.Fatal(err)
					}
					if accept != "" {
						req.Header.Set("Accept", accept)
					}
					resp, err := http.DefaultTransport.RoundTrip(req) // sends no Accept of its own
					if err != nil {
						t.Fatal(err)
					}
					if resp.StatusCode != http.StatusNotAcceptable {
						t.Errorf("GET %s with Accept %q: status %d, want 406", path, accept, resp.StatusCode)
					} else if msg := errorBody(t, resp); !strings.Contains(msg, "Accept header") {
						t.Errorf("GET %s without Accept: message %q does not say what is missing", path, msg)
					}
					resp.Body.Close()
				}
				if resp := g.get(t, path, "Accept", "*/*"); resp.StatusCode != http.StatusOK {
					t.Errorf("GET %s with */*: status %d, want 200: %s", path, resp.StatusCode, readBody(t, resp))
				}
			}
			// Refused before anything is read or audited.
			if n := len(g.auditEvents(t, explicit.StudyInstanceUID, gateway.ActionRetrieve)); n != len(dicomResources) {
				t.Errorf("%d retrieve audit events, want %d (only the */* requests)", n, len(dicomResources))
			}

			for _, tt := range []struct {
				path, accept string
				status       int
			}{
				{recPath(explicit), `multipart/related; type="application/dicom", image/jpeg`, http.StatusBadRequest},
				{study, `multipart/related; type="application/dicom"; transfer-syntax=*, image/png;q=0.5`, http.StatusBadRequest},
				{study + "/metadata", `application/dicom+json, text/html`, http.StatusBadRequest},
				{recPath(explicit) + "/frames/1", `multipart/related; type="application/octet-stream", text/plain`, http.StatusBadRequest},
				{recPath(explicit) + "/rendered", `image/jpeg, application/dicom`, http.StatusBadRequest},
				{recPath(explicit) + "/thumbnail", `image/png, multipart/related; type="application/dicom"`, http.StatusBadRequest},
				// Not mixes.
				{recPath(jpeg) + "/frames/1", `multipart/related; type="image/jpeg", image/jpeg`, http.StatusOK},
				{recPath(explicit) + "/rendered", "", http.StatusOK},
				{recPath(explicit) + "/thumbnail", "image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8", http.StatusOK},
				{recPath(explicit) + "/rendered", "*/*", http.StatusOK},
				{study, `multipart/related; type="application/dicom", */*;q=0.1`, http.StatusOK},
			} {
				var resp *http.Response
				if tt.accept == "" {
					req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, g.srv.URL+tt.path, nil)
					var err error
					if resp, err = http.DefaultTransport.RoundTrip(req); err != nil {
						t.Fatal(err)
					}
					t.Cleanup(func() { resp.Body.Close() })
				} else {
					resp = g.get(t, tt.path, "Accept", tt.accept)
				}
				if resp.StatusCode != tt.status {
					t.Errorf("GET %s Accept %q: status %d, want %d: %s", tt.path, tt.accept, resp.StatusCode, tt.status, readBody(t, resp))
					continue
				}
				if tt.status == http.StatusBadRequest {
					if msg := errorBody(t, resp); !strings.Contains(msg, "mixes") {
						t.Errorf("GET %s Accept %q: 400 message %q", tt.path, tt.accept, msg)
					}
				}
				if strings.HasSuffix(tt.path, "/rendered") && tt.status == http.StatusOK && resp.Header.Get("Content-Type") != "image/jpeg" {
					t.Errorf("GET %s Accept %q: Content-Type %q, want image/jpeg", tt.path, tt.accept, resp.Header.Get("Content-Type"))
				}
			}
		})
	}
}

// TestWADORenderedViewport: viewport=vw,vh fits the image to the viewport,
// scaled down or up, keeping its aspect ratio (PS3.18 8.3.5.1.3); a
// thumbnail with no viewport is only ever scaled down.
func TestWADORenderedViewport(t *testing.T) {
	for _, backend := range wadoBackends {
		t.Run(backend, func(t *testing.T) {
			g := newWADOGatewayOn(t, backend, nil)
			big := g.synthStudy(t, synth.StudySpec{Seed: 171, Rows: 300, Columns: 200})[0]
			small := g.synthStudy(t, synth.StudySpec{Seed: 172, Rows: 40, Columns: 64})[0]
			for _, tt := range []struct {
				path string
				w, h int
			}{
				{synthPath(big) + "/rendered?viewport=100,100", 67, 100},   // down, height bound
				{synthPath(big) + "/rendered?viewport=600,600", 400, 600},  // up, height bound
				{synthPath(big) + "/rendered?viewport=300,1000", 300, 450}, // up, width bound
				{synthPath(big) + "/rendered?viewport=200,300", 200, 300},  // exact
				{synthPath(small) + "/rendered?viewport=512,512", 512, 320},
				{synthPath(small) + "/frames/1/rendered?viewport=128,40", 64, 40},
				{synthPath(small) + "/thumbnail?viewport=256,256", 256, 160},
				{synthPath(small) + "/thumbnail", 64, 40}, // no viewport: 128 box, never up
				{synthPath(big) + "/thumbnail", 85, 128},
				{synthPath(small) + "/rendered?viewport=16384,16384", 4096, 2560}, // bounded
			} {
				resp := g.get(t, tt.path, "Accept", "image/png")
				body := readBody(t, resp)
				if resp.StatusCode != http.StatusOK {
					t.Errorf("%s: status %d: %s", tt.path, resp.StatusCode, body)
					continue
				}
				cfg, _, err := image.DecodeConfig(bytes.NewReader(body))
				if err != nil {
					t.Fatalf("%s: %v", tt.path, err)
				}
				if cfg.Width != tt.w || cfg.Height != tt.h {
					t.Errorf("%s: %dx%d, want %dx%d", tt.path, cfg.Width, cfg.Height, tt.w, tt.h)
				}
			}
		})
	}
}
