package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"

	"github.com/dicom-gateway/gateway/gateway"
	"github.com/dicom-gateway/gateway/internal/fhirschema"
	"github.com/dicom-gateway/gateway/internal/synth"
)

// fhirGet GETs u and returns the status, Content-Type and body.
func fhirGet(t *testing.T, u, accept string) (int, string, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, resp.Header.Get("Content-Type"), body
}

// mustValidFHIR fails the test unless body is valid FHIR R4 JSON.
func mustValidFHIR(t *testing.T, what string, body []byte) {
	t.Helper()
	if err := fhirschema.Validate(t, body); err != nil {
		t.Fatalf("%s is not valid FHIR R4: %v\n%.2000s", what, err, body)
	}
}

type bundle struct {
	ResourceType string `json:"resourceType"`
	Type         string `json:"type"`
	Total        *int   `json:"total"`
	Link         []struct {
		Relation, URL string
	} `json:"link"`
	Entry []struct {
		FullURL  string          `json:"fullUrl"`
		Resource json.RawMessage `json:"resource"`
		Search   struct{ Mode string }
	} `json:"entry"`
}

func (b *bundle) link(rel string) string {
	for _, l := range b.Link {
		if l.Relation == rel {
			return l.URL
		}
	}
	return ""
}

type imagingStudy struct {
	ResourceType string
	ID           string
	Subject      struct {
		Identifier struct{ System, Value string }
	}
	Endpoint []struct{ Reference string }
	Series   []struct {
		UID      string
		Instance []struct{ UID string }
	}
	NumberOfInstances int
}

// matches returns the ImagingStudy entries (mode match) and the Endpoint
// address of an included Endpoint.
func (b *bundle) matches(t *testing.T) (studies []imagingStudy, endpoint string) {
	t.Helper()
	for _, e := range b.Entry {
		var head struct {
			ResourceType string
			Address      string
		}
		if err := json.Unmarshal(e.Resource, &head); err != nil {
			t.Fatal(err)
		}
		switch {
		case head.ResourceType == "ImagingStudy" && e.Search.Mode == "match":
			var is imagingStudy
			if err := json.Unmarshal(e.Resource, &is); err != nil {
				t.Fatal(err)
			}
			studies = append(studies, is)
		case head.ResourceType == "Endpoint" && e.Search.Mode == "include":
			endpoint = head.Address
		default:
			t.Errorf("unexpected entry %s mode %s", head.ResourceType, e.Search.Mode)
		}
	}
	return studies, endpoint
}

func searchBundle(t *testing.T, u string) *bundle {
	t.Helper()
	code, ct, body := fhirGet(t, u, "application/fhir+json")
	if code != http.StatusOK || !strings.HasPrefix(ct, "application/fhir+json") {
		t.Fatalf("GET %s = %d %s: %.500s", u, code, ct, body)
	}
	mustValidFHIR(t, "search Bundle", body)
	var b bundle
	if err := json.Unmarshal(body, &b); err != nil {
		t.Fatal(err)
	}
	if b.ResourceType != "Bundle" || b.Type != "searchset" {
		t.Fatalf("got %s/%s, want a searchset Bundle", b.ResourceType, b.Type)
	}
	return &b
}

const testNHSNumber = "9434765919"

// fhirStudies stores three studies: hampshire's local ID with the NHS
// number in the Other Patient IDs Sequence (two series), the NHS number as
// the Patient ID itself, and another patient.
func fhirStudies() (withSeq, asID, other []synth.Instance) {
	nhs := []synth.OtherPatientID{{ID: testNHSNumber, Issuer: "NHS"}}
	mk := func(study uint64, date, pid, issuer string, others []synth.OtherPatientID, series, n int, modality string) []synth.Instance {
		var out []synth.Instance
		for s := 1; s <= series; s++ {
			for i := 1; i <= n; i++ {
				out = append(out, synth.Instance{
					PatientName: "Fhir^Test", PatientID: pid, IssuerOfPatientID: issuer, OtherPatientIDs: others,
					StudyInstanceUID: synth.UID(81, study), SeriesInstanceUID: synth.UID(81, study, uint64(s)),
					SOPInstanceUID: synth.UID(81, study, uint64(s), uint64(i)), StudyDate: date, StudyTime: "101500",
					AccessionNumber: "ACC" + date, Modality: modality, SeriesNumber: s, InstanceNumber: i, Rows: 4, Columns: 4,
				})
			}
		}
		return out
	}
	return mk(1, "20240310", "H123456", "HAMPSHIRE", nhs, 2, 2, "CT"),
		mk(2, "20230105", testNHSNumber, "NHS", nil, 1, 1, "MR"),
		mk(3, "20240311", "S999", "SURREY", []synth.OtherPatientID{{ID: "1111111111", Issuer: "NHS"}}, 1, 1, "CT")
}

// TestFHIRImagingStudy drives the FHIR facade of a running gateway: every
// answer validated against the official FHIR R4 JSON schema; search by NHS
// number (in the Other Patient IDs Sequence and as the Patient ID), by
// study identifier, _id, started and modality; paging by next links; read;
// the Endpoint, whose address opens the study with WADO-RS; errors as
// OperationOutcome; the audit.
func TestFHIRImagingStudy(t *testing.T) {
	m := MustRunMain(t, testConfig(t), nil)
	root := "http://" + m.Addr
	fhirBase := root + "/fhir"
	withSeq, asID, other := fhirStudies()
	stowOK(t, root+"/dicomweb", slices.Concat(withSeq, asID, other))
	studyA, studyB, studyC := withSeq[0].StudyInstanceUID, asID[0].StudyInstanceUID, other[0].StudyInstanceUID

	t.Run("metadata", func(t *testing.T) {
		code, ct, body := fhirGet(t, fhirBase+"/metadata", "")
		if code != http.StatusOK || !strings.HasPrefix(ct, "application/fhir+json") {
			t.Fatalf("metadata = %d %s", code, ct)
		}
		mustValidFHIR(t, "CapabilityStatement", body)
		if !strings.Contains(string(body), `"fhirVersion":"4.0.1"`) || !strings.Contains(string(body), `"type":"ImagingStudy"`) {
			t.Errorf("CapabilityStatement lacks R4 or ImagingStudy: %.500s", body)
		}
	})

	t.Run("by NHS number", func(t *testing.T) {
		b := searchBundle(t, fhirBase+"/ImagingStudy?patient.identifier="+url.QueryEscape(gateway.NHSNumberSystem+"|"+testNHSNumber))
		studies, endpoint := b.matches(t)
		var ids []string
		for _, s := range studies {
			ids = append(ids, s.ID)
		}
		if want := []string{studyA, studyB}; !slices.Equal(ids, want) { // newest first
			t.Fatalf("studies = %v, want %v", ids, want)
		}
		if b.Total == nil || *b.Total != 2 {
			t.Errorf("total = %v, want 2", b.Total)
		}
		a := studies[0]
		if a.Subject.Identifier.System != gateway.NHSNumberSystem || a.Subject.Identifier.Value != testNHSNumber {
			t.Errorf("subject = %+v, want the NHS number", a.Subject.Identifier)
		}
		if len(a.Series) != 2 || len(a.Series[0].Instance) != 2 || a.NumberOfInstances != 4 {
			t.Errorf("study A: %d series, %d instances, want 2 series of 2", len(a.Series), a.NumberOfInstances)
		}
		if len(a.Endpoint) != 1 || a.Endpoint[0].Reference != "Endpoint/dicom-wado-rs" {
			t.Fatalf("endpoint reference = %+v", a.Endpoint)
		}
		if endpoint != root+"/dicomweb" {
			t.Fatalf("included Endpoint address = %q, want %q", endpoint, root+"/dicomweb")
		}
		// The reference resolves, and its address opens the study.
		code, _, epBody := fhirGet(t, fhirBase+"/"+a.Endpoint[0].Reference, "")
		mustValidFHIR(t, "Endpoint", epBody)
		if code != http.StatusOK || !strings.Contains(string(epBody), `"code":"dicom-wado-rs"`) {
			t.Fatalf("Endpoint = %d %.300s", code, epBody)
		}
		code, ct, wado := fhirGet(t, endpoint+"/studies/"+a.ID+"/series/"+a.Series[0].UID+"/instances/"+a.Series[0].Instance[0].UID, `multipart/related; type="application/dicom"`)
		if code != http.StatusOK || !strings.HasPrefix(ct, "multipart/related") || !strings.Contains(string(wado), a.Series[0].Instance[0].UID) {
			t.Fatalf("WADO-RS through the Endpoint = %d %s", code, ct)
		}
		// No match for another number, nor for the number under another system.
		for _, q := range []string{gateway.NHSNumberSystem + "|0000000000", "urn:oid:1.2.3|" + testNHSNumber} {
			b := searchBundle(t, fhirBase+"/ImagingStudy?patient.identifier="+url.QueryEscape(q))
			if s, _ := b.matches(t); len(s) != 0 {
				t.Errorf("%s matched %d studies", q, len(s))
			}
		}
		// The local identifier with its issuer.
		b = searchBundle(t, fhirBase+"/ImagingStudy?patient.identifier="+url.QueryEscape("HAMPSHIRE|H123456"))
		if s, _ := b.matches(t); len(s) != 1 || s[0].ID != studyA {
			t.Errorf("local ID search = %v", s)
		}
	})

	t.Run("paging", func(t *testing.T) {
		u := fhirBase + "/ImagingStudy?_count=1"
		var got []string
		for range 5 {
			b := searchBundle(t, u)
			s, _ := b.matches(t)
			if len(s) != 1 {
				t.Fatalf("page %s has %d studies, want 1", u, len(s))
			}
			got = append(got, s[0].ID)
			if u = b.link("next"); u == "" {
				break
			}
		}
		if want := []string{studyC, studyA, studyB}; !slices.Equal(got, want) {
			t.Errorf("pages = %v, want %v", got, want)
		}
	})

	t.Run("parameters", func(t *testing.T) {
		for _, tt := range []struct {
			query string
			want  []string
		}{
			{"identifier=" + url.QueryEscape("urn:oid:"+studyB), []string{studyB}},
			{"identifier=" + url.QueryEscape("urn:dicom:uid|urn:oid:"+studyA), []string{studyA}},
			{"_id=" + studyC, []string{studyC}},
			{"started=ge2024-01-01", []string{studyC, studyA}},
			{"started=lt2024-03-11", []string{studyA, studyB}},
			{"started=2024-03", []string{studyC, studyA}},
			{"started=gt2024-03-10&started=le2024-12-31", []string{studyC}},
			{"started=eq2023-01-05", []string{studyB}},
			{"modality=MR", []string{studyB}},
			{"modality=" + url.QueryEscape("http://dicom.nema.org/resources/ontology/DCM|CT"), []string{studyC, studyA}},
			{"modality=CT&patient.identifier=" + url.QueryEscape(gateway.NHSNumberSystem+"|"+testNHSNumber), []string{studyA}},
		} {
			s, _ := searchBundle(t, fhirBase+"/ImagingStudy?"+tt.query).matches(t)
			var ids []string
			for _, x := range s {
				ids = append(ids, x.ID)
			}
			if !slices.Equal(ids, tt.want) {
				t.Errorf("%s: %v, want %v", tt.query, ids, tt.want)
			}
		}
	})

	t.Run("read", func(t *testing.T) {
		code, ct, body := fhirGet(t, fhirBase+"/ImagingStudy/"+studyA, "application/json")
		if code != http.StatusOK || !strings.HasPrefix(ct, "application/fhir+json") {
			t.Fatalf("read = %d %s", code, ct)
		}
		mustValidFHIR(t, "ImagingStudy", body)
		var is imagingStudy
		if err := json.Unmarshal(body, &is); err != nil || is.ID != studyA || len(is.Series) != 2 {
			t.Fatalf("read %s: %+v %v", studyA, is, err)
		}
		// The schema refuses what R4 does not define: the same resource
		// with one made-up property fails.
		var doc map[string]any
		if err := json.Unmarshal(body, &doc); err != nil {
			t.Fatal(err)
		}
		doc["studyInstanceUid"] = studyA
		bad, _ := json.Marshal(doc)
		if err := fhirschema.Validate(t, bad); err == nil {
			t.Fatal("schema accepted an ImagingStudy with an unknown property; the validation proves nothing")
		}
	})

	t.Run("errors", func(t *testing.T) {
		for _, tt := range []struct {
			path, accept string
			status       int
			code         string
		}{
			{"/ImagingStudy/1.2.3.999", "", http.StatusNotFound, "not-found"},
			{"/ImagingStudy/not-a-uid", "", http.StatusBadRequest, "invalid"},
			{"/ImagingStudy?started=xx2024", "", http.StatusBadRequest, "invalid"},
			{"/ImagingStudy?started=2024-13-01", "", http.StatusBadRequest, "invalid"},
			{"/ImagingStudy?identifier=1.2.3", "", http.StatusBadRequest, "invalid"},
			{"/ImagingStudy?patient.identifier=" + url.QueryEscape("|H12*"), "", http.StatusBadRequest, "invalid"},
			{"/ImagingStudy?_count=x", "", http.StatusBadRequest, "invalid"},
			{"/Endpoint/other", "", http.StatusNotFound, "not-found"},
			{"/Patient", "", http.StatusNotFound, "not-found"},
			{"/Patient/123", "", http.StatusNotFound, "not-found"},
			{"/metadata", "application/fhir+xml", http.StatusNotAcceptable, "not-supported"},
			{"/ImagingStudy?_format=xml", "", http.StatusNotAcceptable, "not-supported"},
		} {
			code, ct, body := fhirGet(t, fhirBase+tt.path, tt.accept)
			if code != tt.status || !strings.HasPrefix(ct, "application/fhir+json") {
				t.Errorf("%s = %d %s, want %d FHIR JSON", tt.path, code, ct, tt.status)
				continue
			}
			mustValidFHIR(t, "OperationOutcome of "+tt.path, body)
			if !strings.Contains(string(body), `"resourceType":"OperationOutcome"`) || !strings.Contains(string(body), `"code":"`+tt.code+`"`) {
				t.Errorf("%s: %s, want an OperationOutcome with code %s", tt.path, body, tt.code)
			}
		}
	})

	t.Run("audit", func(t *testing.T) {
		var page struct {
			Events []gateway.AuditEvent `json:"events"`
		}
		code, _, body := fhirGet(t, root+"/api/v1/audit?action=query&study_uid="+studyA, "application/json")
		if code != http.StatusOK {
			t.Fatalf("audit = %d %s", code, body)
		}
		if err := json.Unmarshal(body, &page); err != nil {
			t.Fatal(err)
		}
		var search, read bool
		for _, ev := range page.Events {
			route, _ := ev.Detail["route"].(string)
			if !strings.HasPrefix(route, "/fhir/") {
				continue
			}
			if !slices.Contains(ev.PatientIDs, "H123456") {
				t.Errorf("FHIR search audited with patients %v, want H123456", ev.PatientIDs)
			}
			if d, _ := json.Marshal(ev.Detail); strings.Contains(string(d), testNHSNumber) || strings.Contains(string(d), "H12") {
				t.Errorf("audit detail carries a search value: %s", d)
			}
			search = search || route == "/fhir/ImagingStudy"
			read = read || route == "/fhir/ImagingStudy/:id"
		}
		if !search || !read {
			t.Errorf("audit of study A: FHIR search %v, read %v; want both (query events, route /fhir/…)", search, read)
		}
	})
}

// TestFHIRAuth: with auth on, /fhir needs a credential with role read, and
// the refusals are OperationOutcomes (the server's own errors written in
// FHIR form), as is a role that is not enough.
func TestFHIRAuth(t *testing.T) {
	sum := func(s string) string { h := sha256.Sum256([]byte(s)); return hex.EncodeToString(h[:]) }
	_, root := centre(t, "hampshire", `
auth:
  tokens:
    - {name: epr, sha256: "`+sum("epr-token")+`", roles: [read]}
    - {name: pacs, sha256: "`+sum("pacs-token")+`", roles: [store]}
`)
	for _, tt := range []struct {
		token  string
		status int
		code   string
	}{
		{"", http.StatusUnauthorized, "login"},
		{"wrong-token", http.StatusUnauthorized, "login"},
		{"pacs-token", http.StatusForbidden, "forbidden"},
		{"epr-token", http.StatusOK, ""},
	} {
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, root+"/fhir/ImagingStudy?_count=1", nil)
		if tt.token != "" {
			req.Header.Set("Authorization", "Bearer "+tt.token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tt.status || !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/fhir+json") {
			t.Errorf("token %q: %d %s, want %d FHIR JSON", tt.token, resp.StatusCode, resp.Header.Get("Content-Type"), tt.status)
			continue
		}
		mustValidFHIR(t, "answer", body)
		if tt.code != "" && (!strings.Contains(string(body), `"resourceType":"OperationOutcome"`) || !strings.Contains(string(body), `"code":"`+tt.code+`"`)) {
			t.Errorf("token %q: %s, want an OperationOutcome with code %s", tt.token, body, tt.code)
		}
	}
}
