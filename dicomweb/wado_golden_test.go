package dicomweb_test

import (
	"bytes"
	"encoding/json"
	"flag"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dicom-gateway/gateway/dicomcodec"
	"github.com/dicom-gateway/gateway/internal/dicomjsontest"
	"github.com/dicom-gateway/gateway/internal/synth"
)

var updateGolden = flag.Bool("update", false, "rewrite the golden files in testdata/golden from what the gateway answers")

// goldenBaseURL is the public base URL of the gateway the golden files were
// taken from, so that their BulkDataURIs do not carry a random test port.
const goldenBaseURL = "https://pacs.example.org"

// TestMetadataGolden stores the synthetic metadata cases (synth.MetadataCases:
// sequences nested two deep, bulk data inside an item, all three person name
// groups, multi-valued and binary numbers, private and empty elements,
// implicit VR, encapsulated frames) and a committed sample study, and checks
// on both backend families that:
//   - study metadata is byte-identical to the reviewed golden file
//     (go test ./dicomweb -run TestMetadataGolden -update rewrites them);
//   - series and instance metadata are the matching slices of it;
//   - each case's metadata says what dcmtk's dcm2json says of the file.
func TestMetadataGolden(t *testing.T) {
	cases := synth.MetadataCases()
	sample, err := filepath.Glob("../testdata/studies/study1/*.dcm")
	if err != nil || len(sample) == 0 {
		t.Fatalf("committed sample study missing (%v): regenerate with go run ./cmd/synth", err)
	}
	dcm2json, err := exec.LookPath("dcm2json")
	if err != nil && os.Getenv("CI") == "true" {
		t.Fatal("dcm2json (Debian package dcmtk) is not installed; scripts/testenv.sh installs it")
	}
	for _, backend := range []string{"embedded", "s3+redis"} {
		t.Run(backend, func(t *testing.T) {
			g := newWADOGatewayOn(t, backend, func(s *testWiring) { s.PublicBaseURL = goldenBaseURL })
			for _, c := range cases {
				if status := g.ingest(t, c.Data); status != http.StatusOK {
					t.Fatalf("store %s: %d", c.Name, status)
				}
			}
			var sampleStudy string
			for _, f := range sample {
				data, err := os.ReadFile(f)
				if err != nil {
					t.Fatal(err)
				}
				if status := g.ingest(t, data); status != http.StatusOK {
					t.Fatalf("store %s: %d", f, status)
				}
				sampleStudy = studyUIDOf(t, data)
			}
			casesStudy := studyUIDOf(t, cases[0].Data)
			for _, golden := range []struct{ file, study string }{
				{"metadata-cases.json", casesStudy},
				{"metadata-sample-study1.json", sampleStudy},
			} {
				body := metadataJSON(t, g, "/dicomweb/studies/"+golden.study+"/metadata")
				checkGolden(t, filepath.Join("testdata", "golden", golden.file), body)
				checkSlices(t, g, body)
				checkBulkData(t, g, body)
			}
			if dcm2json == "" {
				t.Log("dcm2json (dcmtk) not installed: comparison with dcmtk skipped")
				return
			}
			for _, c := range cases {
				t.Run(c.Name, func(t *testing.T) {
					// dcm2json cannot write encapsulated pixel data as
					// InlineBinary: it reads the file without its Pixel Data
					// (the last element; the comparison leaves bulk data out).
					data, pixelData := c.Data, false
					if i := bytes.Index(data, []byte("\xe0\x7f\x10\x00OB\x00\x00\xff\xff\xff\xff")); i > 0 {
						data, pixelData = data[:i], true
					}
					path := filepath.Join(t.TempDir(), c.Name+".dcm")
					if err := os.WriteFile(path, data, 0o600); err != nil {
						t.Fatal(err)
					}
					out, err := exec.CommandContext(t.Context(), dcm2json, path).Output()
					if err != nil {
						t.Fatalf("dcm2json %s: %v", c.Name, err)
					}
					var want map[string]any
					if err := json.Unmarshal(out, &want); err != nil {
						t.Fatalf("dcm2json output: %v", err)
					}
					var items []map[string]any
					url := "/dicomweb/studies/" + casesStudy + "/series/" + stringValue(want, "0020000E") + "/instances/" + stringValue(want, "00080018") + "/metadata"
					if err := json.Unmarshal(metadataJSON(t, g, url), &items); err != nil || len(items) != 1 {
						t.Fatalf("instance metadata: %d items, %v", len(items), err)
					}
					if pixelData {
						if _, ok := items[0]["7FE00010"]; !ok {
							t.Fatal("encapsulated Pixel Data missing from the metadata")
						}
						delete(items[0], "7FE00010")
					}
					if diffs := dicomjsontest.Diff(items[0], want); len(diffs) > 0 {
						t.Errorf("%d differences from dcm2json:\n%s", len(diffs), strings.Join(diffs, "\n"))
					}
				})
			}
		})
	}
}

// metadataJSON GETs a metadata resource and returns its body, indented
// (the golden files are meant to be read in review).
func metadataJSON(t *testing.T, g *wadoGateway, path string) []byte {
	t.Helper()
	resp := g.get(t, path, "Accept", "application/dicom+json")
	body := readBody(t, resp)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %s", path, resp.StatusCode, body)
	}
	var out bytes.Buffer
	if err := json.Indent(&out, body, "", "  "); err != nil {
		t.Fatalf("GET %s: not JSON: %v", path, err)
	}
	out.WriteByte('\n')
	return out.Bytes()
}

func checkGolden(t *testing.T, path string, got []byte) {
	t.Helper()
	if *updateGolden {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./dicomweb -run TestMetadataGolden -update, then review the file)", err)
	}
	if !bytes.Equal(got, want) {
		gl, wl := strings.Split(string(got), "\n"), strings.Split(string(want), "\n")
		for i := 0; i < max(len(gl), len(wl)); i++ {
			if i >= len(gl) || i >= len(wl) || gl[i] != wl[i] {
				t.Fatalf("%s: differs from line %d:\n got %q\nwant %q", path, i+1, line(gl, i), line(wl, i))
			}
		}
	}
}

func line(lines []string, i int) string {
	if i < len(lines) {
		return lines[i]
	}
	return "(end of file)"
}

// checkSlices checks that the metadata of each series, and of each instance,
// of a study is exactly its objects in the study's metadata.
func checkSlices(t *testing.T, g *wadoGateway, studyBody []byte) {
	t.Helper()
	var items []json.RawMessage
	if err := json.Unmarshal(studyBody, &items); err != nil {
		t.Fatal(err)
	}
	bySeries := map[string][]json.RawMessage{}
	var order []string
	for _, it := range items {
		var ds map[string]any
		json.Unmarshal(it, &ds)
		study, series, sop := stringValue(ds, "0020000D"), stringValue(ds, "0020000E"), stringValue(ds, "00080018")
		if _, ok := bySeries[series]; !ok {
			order = append(order, study+"/series/"+series)
		}
		bySeries[series] = append(bySeries[series], it)
		got := metadataJSON(t, g, "/dicomweb/studies/"+study+"/series/"+series+"/instances/"+sop+"/metadata")
		if want := indentArray(t, []json.RawMessage{it}); !bytes.Equal(got, want) {
			t.Errorf("instance %s metadata differs from its object in the study metadata:\n%s\nwant\n%s", sop, got, want)
		}
	}
	for _, path := range order {
		series := path[strings.LastIndexByte(path, '/')+1:]
		got := metadataJSON(t, g, "/dicomweb/studies/"+path+"/metadata")
		if want := indentArray(t, bySeries[series]); !bytes.Equal(got, want) {
			t.Errorf("series %s metadata differs from its objects in the study metadata", series)
		}
	}
}

func indentArray(t *testing.T, items []json.RawMessage) []byte {
	t.Helper()
	raw := append([]byte("["), bytes.Join(bytesOf(items), []byte(","))...) // not Marshal: it would escape < and >
	raw = append(raw, ']')
	var out bytes.Buffer
	json.Indent(&out, raw, "", "  ")
	out.WriteByte('\n')
	return out.Bytes()
}

func bytesOf(items []json.RawMessage) [][]byte {
	out := make([][]byte, len(items))
	for i, it := range items {
		out[i] = it
	}
	return out
}

// stringValue is the first value of a DICOM JSON attribute as a string.
func stringValue(ds map[string]any, tag string) string {
	a, _ := ds[tag].(map[string]any)
	v, _ := a["Value"].([]any)
	if len(v) == 0 {
		return ""
	}
	s, _ := v[0].(string)
	return s
}

func studyUIDOf(t *testing.T, data []byte) string {
	t.Helper()
	h, err := dicomcodec.ParseHeader(bytes.NewReader(data), dicomcodec.HeaderLimits{})
	if err != nil {
		t.Fatal(err)
	}
	return h.Dataset.String(dicomcodec.TagStudyInstanceUID)
}

// checkBulkData fetches every BulkDataURI of a metadata body from the test
// server: each must answer (one part, or one per frame of encapsulated
// Pixel Data); the Modality LUT Data inside the
// sequence case's item must be the ramp the case wrote.
func checkBulkData(t *testing.T, g *wadoGateway, body []byte) {
	t.Helper()
	var uris []string
	var walk func(v any)
	walk = func(v any) {
		switch x := v.(type) {
		case map[string]any:
			if u, ok := x["BulkDataURI"].(string); ok {
				uris = append(uris, u)
			}
			for _, c := range x {
				walk(c)
			}
		case []any:
			for _, c := range x {
				walk(c)
			}
		}
	}
	var items []any
	json.Unmarshal(body, &items)
	walk(items)
	if len(uris) == 0 {
		t.Fatal("no BulkDataURI in the metadata")
	}
	for _, u := range uris {
		path, ok := strings.CutPrefix(u, goldenBaseURL)
		if !ok {
			t.Fatalf("BulkDataURI %s is not under the public base URL %s", u, goldenBaseURL)
		}
		parts := readParts(t, g.get(t, path, "Accept", "multipart/related; type=application/octet-stream"), "")
		if len(parts) == 0 || len(parts[0].body) == 0 { // encapsulated Pixel Data: a part per frame
			t.Fatalf("GET %s: %d parts", path, len(parts))
		}
		if strings.HasSuffix(path, "/bulkdata/00283000/0/00283006") {
			for i := 0; i < 4096; i++ {
				if v := int(parts[0].body[2*i]) | int(parts[0].body[2*i+1])<<8; len(parts[0].body) != 8192 || v != i {
					t.Fatalf("LUT Data from %s: %d bytes, entry %d = %d, want 8192 bytes of a ramp", path, len(parts[0].body), i, v)
				}
			}
		}
	}
}
