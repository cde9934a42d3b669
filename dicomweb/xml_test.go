package dicomweb_test

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"encoding/xml"
	"fmt"
	"io"
	"math"
	"mime"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/dicom-gateway/gateway/dicomcodec"
	"github.com/dicom-gateway/gateway/gateway"
	"github.com/dicom-gateway/gateway/internal/synth"
)

// acceptXML is the Accept header of DICOM XML for QIDO-RS and metadata.
const acceptXML = `multipart/related; type="application/dicom+xml"`

// TestDICOMXMLMetadata: study, series and instance metadata in DICOM XML,
// one part per instance, carry the same attributes as the DICOM JSON of the
// same resource (VRs, values, the three person name groups, sequences with
// their items, BulkData URIs, InlineBinary) and every part is valid against
// the PS3.19 A.1.6 schema. The synthetic metadata cases are built to hold
// all of these, and the test checks it saw each kind.
func TestDICOMXMLMetadata(t *testing.T) {
	for _, backend := range wadoBackends {
		t.Run(backend, func(t *testing.T) {
			g := newWADOGatewayOn(t, backend, nil)
			var recs []*gateway.InstanceRecord
			for _, mc := range synth.MetadataCases() {
				rec, err := g.ingester.Store(t.Context(), bytes.NewReader(mc.Data), gateway.StoreOptions{})
				if err != nil {
					t.Fatalf("%s: %v", mc.Name, err)
				}
				recs = append(recs, rec)
			}
			study := "/dicomweb/studies/" + recs[0].StudyInstanceUID
			paths := []string{study + "/metadata"}
			for _, rec := range recs {
				series := study + "/series/" + rec.SeriesInstanceUID
				paths = append(paths, series+"/metadata", series+"/instances/"+rec.SOPInstanceUID+"/metadata")
			}
			var docs [][]byte
			var seen xmlCoverage
			for _, p := range paths {
				want := decodeJSONArray(t, readBody(t, g.get(t, p)))
				parts := readParts(t, g.get(t, p, "Accept", acceptXML), "application/dicom+xml")
				got := make([]dicomcodec.Dataset, len(parts))
				for i, part := range parts {
					if part.contentType != "application/dicom+xml" {
						t.Errorf("%s part %d: Content-Type %q, want application/dicom+xml", p, i, part.contentType)
					}
					got[i] = parseNativeDICOM(t, part.body)
					seen.add(got[i])
					if bytes.Contains(part.body, []byte(`privateCreator="SYNTH PRIVATE"`)) {
						seen.privateCreator++
					}
					docs = append(docs, part.body)
				}
				compareDatasets(t, p, got, want)
			}
			for what, n := range map[string]int{"PN Ideographic": seen.ideographic, "PN Phonetic": seen.phonetic, "SQ item": seen.items,
				"BulkData": seen.bulk, "InlineBinary": seen.inline, "privateCreator": seen.privateCreator} {
				if n == 0 {
					t.Errorf("no %s in the metadata: the round trip did not cover it", what)
				}
			}
			validateNativeDICOM(t, docs)

			// gzip carries the same parts.
			resp := g.get(t, paths[0], "Accept", acceptXML, "Accept-Encoding", "gzip")
			if resp.Header.Get("Content-Encoding") != "gzip" {
				t.Fatalf("Content-Encoding %q, want gzip", resp.Header.Get("Content-Encoding"))
			}
			zr, err := gzip.NewReader(resp.Body)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body = io.NopCloser(zr)
			parts := readParts(t, resp, "application/dicom+xml")
			want := decodeJSONArray(t, readBody(t, g.get(t, paths[0])))
			got := make([]dicomcodec.Dataset, len(parts))
			for i, part := range parts {
				got[i] = parseNativeDICOM(t, part.body)
			}
			compareDatasets(t, paths[0]+" (gzip)", got, want)

			// The JSON and XML answers have different validators.
			etagJSON := g.get(t, paths[0]).Header.Get("ETag")
			if etagXML := g.get(t, paths[0], "Accept", acceptXML).Header.Get("ETag"); etagXML == "" || etagXML == etagJSON {
				t.Errorf("XML ETag %q, JSON ETag %q: want distinct validators", etagXML, etagJSON)
			}
		})
	}
}

// TestDICOMXMLSearch: QIDO-RS results in DICOM XML, one part per match,
// equal to the JSON results at every level and valid against the schema;
// no match is 200 with no part.
func TestDICOMXMLSearch(t *testing.T) {
	for _, backend := range wadoBackends {
		t.Run(backend, func(t *testing.T) {
			g := newWADOGatewayOn(t, backend, nil)
			for _, mc := range synth.MetadataCases() {
				if g.ingest(t, mc.Data) != http.StatusOK {
					t.Fatalf("%s not stored", mc.Name)
				}
			}
			var docs [][]byte
			for _, q := range []string{
				"/dicomweb/studies?includefield=all",
				"/dicomweb/series?includefield=all",
				"/dicomweb/instances?includefield=all",
				"/dicomweb/series?Modality=CT",
			} {
				want := decodeJSONArray(t, readBody(t, g.get(t, q)))
				if len(want) == 0 {
					t.Fatalf("%s: no JSON results", q)
				}
				parts := readParts(t, g.get(t, q, "Accept", acceptXML), "application/dicom+xml")
				got := make([]dicomcodec.Dataset, len(parts))
				for i, part := range parts {
					got[i] = parseNativeDICOM(t, part.body)
					docs = append(docs, part.body)
				}
				compareDatasets(t, q, got, want)
			}
			if parts := readParts(t, g.get(t, "/dicomweb/studies?PatientID=nobody", "Accept", acceptXML), "application/dicom+xml"); len(parts) != 0 {
				t.Errorf("no match: %d parts, want 0", len(parts))
			}
			// JSON stays the default and the answer to */*.
			for _, accept := range []string{"", "*/*", "application/dicom+json"} {
				resp := g.get(t, "/dicomweb/studies", "Accept", accept)
				if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/dicom+json") {
					t.Errorf("Accept %q: Content-Type %q, want DICOM JSON", accept, ct)
				}
			}
			// An Accept naming only what a search cannot answer in is 406
			// (PS3.18 8.7), not a JSON answer the client did not ask for.
			for _, accept := range []string{"application/dicom+xml", "image/jpeg", "multipart/related; type=\"application/dicom\""} {
				resp := g.get(t, "/dicomweb/studies", "Accept", accept)
				body := readBody(t, resp)
				if resp.StatusCode != http.StatusNotAcceptable {
					t.Errorf("Accept %q: status %d, want 406: %.200s", accept, resp.StatusCode, body)
				}
			}
			validateNativeDICOM(t, docs)
		})
	}
}

// TestDICOMXMLNamesOfAFlaggedStudy: a study flagged for an identity
// conflict whose first patient has no name carries the flag's names
// (0009,1002) with an empty value first; its DICOM XML search result
// writes that value as an empty PersonName, in its place and valid against
// the schema (PersonName and Value elements may not share an attribute).
// A search of its instances warns of the conflict once.
func TestDICOMXMLNamesOfAFlaggedStudy(t *testing.T) {
	g := newWADOGatewayOn(t, "embedded", nil)
	study := synth.UID(91, 1)
	for i, p := range []struct{ id, name string }{{"A100", ""}, {"B200", "Beta^Bob"}, {"C300", "Gamma^Cy"}} {
		inst := synth.Instance{PatientName: p.name, PatientID: p.id, StudyInstanceUID: study,
			SeriesInstanceUID: synth.UID(91, 1, uint64(i+1)), SOPInstanceUID: synth.UID(91, 1, uint64(i+1), 1), Rows: 4, Columns: 4}
		data, err := io.ReadAll(inst.Reader())
		if err != nil {
			t.Fatal(err)
		}
		if g.ingest(t, data) != http.StatusOK {
			t.Fatalf("instance of %s not stored", p.id)
		}
	}
	parts := readParts(t, g.get(t, "/dicomweb/studies?StudyInstanceUID="+study+"&includefield=00091002", "Accept", acceptXML), "application/dicom+xml")
	if len(parts) != 1 {
		t.Fatalf("%d parts, want the study", len(parts))
	}
	doc := string(parts[0].body)
	if !strings.Contains(doc, `<PersonName number="1"/>`) || !strings.Contains(doc, `<PersonName number="2">`) {
		t.Errorf("the names are not written as two PersonName values, the first empty: %s", doc)
	}
	validateNativeDICOM(t, [][]byte{parts[0].body})
	// Its three instances, each shown flagged: one Warning for the study.
	resp := g.get(t, "/dicomweb/instances?StudyInstanceUID="+study)
	readBody(t, resp)
	n := 0
	for _, w := range resp.Header.Values("Warning") {
		if strings.Contains(w, "more than one patient identity") {
			n++
		}
	}
	if n != 1 {
		t.Errorf("%d identity Warnings for the instances of one flagged study, want 1", n)
	}
}

// TestDICOMXMLStowResponse: the STOW-RS response in DICOM XML, bare or as
// the one part of a multipart/related body, says what the JSON response
// says and is valid against the schema.
func TestDICOMXMLStowResponse(t *testing.T) {
	for _, b := range stowBackends {
		t.Run(b.name, func(t *testing.T) {
			s := newStowServer(t, b, nil)
			good := makeInstance(testStudy, testSeries, testSOP(1), 4, 4, 2)
			truncated := makeInstance(testStudy, testSeries, testSOP(99), 4, 4, 2)[:400]
			post := func(accept string) stowResult {
				body, boundary := multipartBody(t, dicomPart(good), dicomPart(truncated))
				return s.post(t, "/dicomweb/studies", `multipart/related; type="application/dicom"; boundary=`+boundary, body, "Accept", accept)
			}
			first := post("application/dicom+json") // stores; the resends below succeed without rewriting
			jsonRes := post("application/dicom+json")
			if jsonRes.status != http.StatusAccepted || first.status != http.StatusAccepted {
				t.Fatalf("status %d, %d, want 202", first.status, jsonRes.status)
			}
			var docs [][]byte
			for _, accept := range []string{"application/dicom+xml", acceptXML, "multipart/related; type=application/dicom+xml, application/dicom+json;q=0.5"} {
				body, boundary := multipartBody(t, dicomPart(good), dicomPart(truncated))
				req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, s.srv.URL+"/dicomweb/studies", body)
				if err != nil {
					t.Fatal(err)
				}
				req.Header.Set("Content-Type", `multipart/related; type="application/dicom"; boundary=`+boundary)
				req.Header.Set("Accept", accept)
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { resp.Body.Close() })
				if resp.StatusCode != http.StatusAccepted {
					t.Fatalf("Accept %q: status %d, want 202", accept, resp.StatusCode)
				}
				var doc []byte
				if strings.HasPrefix(accept, "multipart/") {
					resp.StatusCode = http.StatusOK // readParts checks for 200
					parts := readParts(t, resp, "application/dicom+xml")
					if len(parts) != 1 {
						t.Fatalf("Accept %q: %d parts, want 1", accept, len(parts))
					}
					doc = parts[0].body
				} else {
					if mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type")); mt != "application/dicom+xml" {
						t.Fatalf("Accept %q: Content-Type %q", accept, resp.Header.Get("Content-Type"))
					}
					doc = readBody(t, resp)
				}
				compareDatasets(t, "STOW "+accept, []dicomcodec.Dataset{parseNativeDICOM(t, doc)}, []dicomcodec.Dataset{normalizeDataset(jsonRes.ds)})
				docs = append(docs, doc)
			}
			validateNativeDICOM(t, docs)
		})
	}
}

// TestDICOMXMLCorpusMetadata: the metadata of every corpus file the gateway
// stores, in DICOM XML, equals its DICOM JSON and is valid against the
// schema: real vendors' private elements, character sets and sequences.
func TestDICOMXMLCorpusMetadata(t *testing.T) {
	var docs [][]byte
	for _, ci := range storeCorpusForWADO(t, "embedded") {
		want := decodeJSONArray(t, readBody(t, ci.g.get(t, ci.path()+"/metadata")))
		parts := readParts(t, ci.g.get(t, ci.path()+"/metadata", "Accept", acceptXML), "application/dicom+xml")
		got := make([]dicomcodec.Dataset, len(parts))
		for i, part := range parts {
			got[i] = parseNativeDICOM(t, part.body)
			docs = append(docs, part.body)
		}
		compareDatasets(t, ci.name, got, want)
	}
	validateNativeDICOM(t, docs)
}

// validateNativeDICOM checks docs with jing against
// testdata/NativeDICOM-document.rnc (the PS3.19 A.1.6 schema plus the
// xml:space directive Table A.1.5-1 requires). Without jing the test is
// skipped, except under CI=true, where it fails (scripts/testenv.sh
// installs it).
func validateNativeDICOM(t *testing.T, docs [][]byte) {
	t.Helper()
	if len(docs) == 0 {
		t.Fatal("no XML documents to validate")
	}
	jing, err := exec.LookPath("jing")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("jing is not installed: run scripts/testenv.sh, which installs it")
		}
		t.Skip("jing not installed (scripts/testenv.sh installs it): schema not checked")
	}
	schema, err := filepath.Abs(filepath.Join("testdata", "NativeDICOM-document.rnc"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	args := []string{"-c", schema}
	for i, d := range docs {
		name := filepath.Join(dir, fmt.Sprintf("doc%04d.xml", i))
		if err := os.WriteFile(name, d, 0o600); err != nil {
			t.Fatal(err)
		}
		args = append(args, name)
	}
	out, err := exec.CommandContext(t.Context(), jing, args...).CombinedOutput()
	var problems []string
	for _, line := range strings.Split(string(out), "\n") {
		if strings.Contains(line, ": error:") || strings.Contains(line, ": fatal:") {
			problems = append(problems, line)
		}
	}
	if err != nil || len(problems) > 0 {
		if len(problems) > 20 {
			problems = problems[:20]
		}
		t.Fatalf("%d documents, jing: %v\n%s", len(docs), err, strings.Join(problems, "\n"))
	}
	t.Logf("jing: %d documents valid against the Native DICOM Model schema", len(docs))
}

// The Native DICOM Model as encoding/xml reads it.
type xmlNativeModel struct {
	XMLName xml.Name       `xml:"http://dicom.nema.org/PS3.19/models/NativeDICOM NativeDicomModel"`
	Space   string         `xml:"http://www.w3.org/XML/1998/namespace space,attr"`
	Attrs   []xmlAttribute `xml:"DicomAttribute"`
}

type xmlAttribute struct {
	Tag            string `xml:"tag,attr"`
	VR             string `xml:"vr,attr"`
	Keyword        string `xml:"keyword,attr"`
	PrivateCreator string `xml:"privateCreator,attr"`
	BulkData       *struct {
		URI  string `xml:"uri,attr"`
		UUID string `xml:"uuid,attr"`
	} `xml:"BulkData"`
	InlineBinary *string `xml:"InlineBinary"`
	Values       []struct {
		Number int    `xml:"number,attr"`
		Text   string `xml:",chardata"`
	} `xml:"Value"`
	Items []struct {
		Number int            `xml:"number,attr"`
		Attrs  []xmlAttribute `xml:"DicomAttribute"`
	} `xml:"Item"`
	Names []struct {
		Number      int           `xml:"number,attr"`
		Alphabetic  *xmlNameGroup `xml:"Alphabetic"`
		Ideographic *xmlNameGroup `xml:"Ideographic"`
		Phonetic    *xmlNameGroup `xml:"Phonetic"`
	} `xml:"PersonName"`
}

type xmlNameGroup struct {
	FamilyName, GivenName, MiddleName, NamePrefix, NameSuffix string
}

// value is the group as a DICOM PN component group ("Family^Given").
func (g *xmlNameGroup) value() string {
	if g == nil {
		return ""
	}
	return strings.TrimRight(strings.Join([]string{g.FamilyName, g.GivenName, g.MiddleName, g.NamePrefix, g.NameSuffix}, "^"), "^")
}

// parseNativeDICOM reads one NativeDicomModel document back into a
// dataset with the value types DICOM JSON decodes to, checking what the
// schema cannot: value numbers 1..n in order, one kind of content per
// attribute, keywords from the data dictionary, the xml:space directive.
func parseNativeDICOM(t *testing.T, doc []byte) dicomcodec.Dataset {
	t.Helper()
	var m xmlNativeModel
	if err := xml.Unmarshal(doc, &m); err != nil {
		t.Fatalf("not a NativeDicomModel document: %v\n%.500s", err, doc)
	}
	if m.Space != "preserve" {
		t.Errorf(`NativeDicomModel xml:space=%q, want "preserve" (PS3.19 Table A.1.5-1)`, m.Space)
	}
	return xmlDataset(t, m.Attrs)
}

func xmlDataset(t *testing.T, attrs []xmlAttribute) dicomcodec.Dataset {
	t.Helper()
	ds := dicomcodec.Dataset{}
	for i, x := range attrs {
		if i > 0 && attrs[i-1].Tag >= x.Tag {
			t.Errorf("tag %s after %s: attributes not in ascending order", x.Tag, attrs[i-1].Tag)
		}
		if kw := dicomcodec.TagKeyword(x.Tag); x.Keyword != kw {
			t.Errorf("tag %s keyword %q, want %q", x.Tag, x.Keyword, kw)
		}
		kinds := 0
		a := dicomcodec.Attribute{VR: x.VR}
		if x.BulkData != nil {
			kinds++
			a.BulkDataURI = x.BulkData.URI
		}
		if x.InlineBinary != nil {
			kinds++
			a.InlineBinary = *x.InlineBinary
		}
		if len(x.Values) > 0 {
			kinds++
			for j, v := range x.Values {
				checkNumber(t, x.Tag, j, v.Number)
				a.Value = append(a.Value, xmlValue(t, x.VR, v.Text))
			}
		}
		if len(x.Items) > 0 {
			kinds++
			for j, it := range x.Items {
				checkNumber(t, x.Tag, j, it.Number)
				a.Value = append(a.Value, xmlDataset(t, it.Attrs))
			}
		}
		if len(x.Names) > 0 {
			kinds++
			for j, pn := range x.Names {
				checkNumber(t, x.Tag, j, pn.Number)
				a.Value = append(a.Value, dicomcodec.PersonName{Alphabetic: pn.Alphabetic.value(), Ideographic: pn.Ideographic.value(), Phonetic: pn.Phonetic.value()})
			}
		}
		if kinds > 1 {
			t.Errorf("tag %s has %d kinds of content, the model allows one", x.Tag, kinds)
		}
		ds[x.Tag] = a
	}
	for _, x := range attrs {
		if x.PrivateCreator == "" {
			continue
		}
		creatorTag := x.Tag[:4] + "00" + x.Tag[4:6]
		if got := strings.TrimSpace(ds.String(creatorTag)); got != x.PrivateCreator {
			t.Errorf("tag %s privateCreator %q, but %s is %q", x.Tag, x.PrivateCreator, creatorTag, got)
		}
	}
	return ds
}

func checkNumber(t *testing.T, tag string, i, number int) {
	t.Helper()
	if number != i+1 {
		t.Errorf("tag %s: value %d has number=%d, want %d", tag, i+1, number, i+1)
	}
}

// xmlValue decodes the text of a Value as DICOM JSON types it for vr; an
// empty Value is JSON's null.
func xmlValue(t *testing.T, vr, s string) any {
	t.Helper()
	if s == "" {
		return nil
	}
	switch vr {
	case "DS", "FD", "FL":
		f, err := strconv.ParseFloat(s, 64)
		if err != nil {
			t.Errorf("%s value %q: %v", vr, s, err)
		}
		return f
	case "IS", "SL", "SS", "UL", "US", "SV", "UV":
		if n, err := strconv.ParseInt(s, 10, 64); err == nil {
			return n
		}
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Errorf("%s value %q: %v", vr, s, err)
		}
		return n
	}
	return s
}

// decodeJSONArray decodes a DICOM JSON array, normalized as XML reads.
func decodeJSONArray(t *testing.T, b []byte) []dicomcodec.Dataset {
	t.Helper()
	var arr []dicomcodec.Dataset
	if err := json.Unmarshal(b, &arr); err != nil {
		t.Fatalf("not a DICOM JSON array: %v: %.300s", err, b)
	}
	for i := range arr {
		arr[i] = normalizeDataset(arr[i])
	}
	return arr
}

// normalizeDataset maps what XML cannot tell apart from JSON's null to
// null: an empty string value and a non-finite number are both an empty
// <Value>.
func normalizeDataset(ds dicomcodec.Dataset) dicomcodec.Dataset {
	out := dicomcodec.Dataset{}
	for k, a := range ds {
		if a.Value != nil {
			vals := slices.Clone(a.Value)
			for i, v := range vals {
				switch x := v.(type) {
				case string:
					if x == "" {
						vals[i] = nil
					}
				case float64:
					if math.IsNaN(x) || math.IsInf(x, 0) {
						vals[i] = nil
					}
				case dicomcodec.Dataset:
					vals[i] = normalizeDataset(x)
				}
			}
			a.Value = vals
		}
		out[k] = a
	}
	return out
}

// compareDatasets fails on the first attribute that differs.
func compareDatasets(t *testing.T, what string, got, want []dicomcodec.Dataset) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d XML parts, %d JSON objects", what, len(got), len(want))
	}
	for i := range want {
		if reflect.DeepEqual(got[i], want[i]) {
			continue
		}
		for tag, w := range want[i] {
			if g, ok := got[i][tag]; !ok || !reflect.DeepEqual(g, w) {
				t.Errorf("%s object %d tag %s:\n XML  %#v\n JSON %#v", what, i, tag, g, w)
				return
			}
		}
		for tag := range got[i] {
			if _, ok := want[i][tag]; !ok {
				t.Errorf("%s object %d: tag %s in XML only", what, i, tag)
				return
			}
		}
	}
}

// xmlCoverage counts the kinds of content the round trip saw.
type xmlCoverage struct {
	ideographic, phonetic, items, bulk, inline, privateCreator int
}

func (c *xmlCoverage) add(ds dicomcodec.Dataset) {
	for _, a := range ds {
		if a.BulkDataURI != "" {
			c.bulk++
		}
		if a.InlineBinary != "" {
			c.inline++
		}
		for _, v := range a.Value {
			switch x := v.(type) {
			case dicomcodec.PersonName:
				if x.Ideographic != "" {
					c.ideographic++
				}
				if x.Phonetic != "" {
					c.phonetic++
				}
			case dicomcodec.Dataset:
				c.items++
				c.add(x)
			}
		}
	}
}
