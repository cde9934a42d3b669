package dicomweb

import (
	"encoding/xml"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"

	"github.com/dicom-gateway/gateway/gateway"
)

// TestEveryDICOMwebRouteNamesItsTransaction walks the route table: a
// DICOMweb route the transaction table does not name would be described
// without an id and left out of the README's conformance table.
func TestEveryDICOMwebRouteNamesItsTransaction(t *testing.T) {
	const dw = "/dicomweb"
	s := New(Config{})
	for _, r := range s.routes() {
		if r.path != dw && !strings.HasPrefix(r.path, dw+"/") {
			continue
		}
		tx, ok := transactionOf(dw, r.method, r.path)
		if !ok || tx.id == "" {
			t.Errorf("%s %s names no transaction in the transactions table", r.method, r.path)
		}
		if r.method != http.MethodDelete && r.method != http.MethodOptions && tx.section == "" {
			t.Errorf("%s %s: transaction %s has no PS3.18 section", r.method, r.path, tx.id)
		}
	}
}

// capabilitiesRequest sends a plain OPTIONS (no CORS preflight headers).
func capabilitiesRequest(t *testing.T, h http.Handler, path, accept, token string) *httptest.ResponseRecorder {
	t.Helper()
	req := httptest.NewRequestWithContext(t.Context(), http.MethodOptions, "http://127.0.0.1:8080"+path, nil)
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

func decodeWADL(t *testing.T, rec *httptest.ResponseRecorder) wadlApplication {
	t.Helper()
	if rec.Code != http.StatusOK {
		t.Fatalf("status=%d, want 200: %s", rec.Code, rec.Body)
	}
	if ct := rec.Header().Get("Content-Type"); !strings.HasPrefix(ct, mediaWADL) {
		t.Fatalf("Content-Type=%q, want %s", ct, mediaWADL)
	}
	var app wadlApplication
	if err := xml.Unmarshal(rec.Body.Bytes(), &app); err != nil {
		t.Fatalf("WADL does not parse: %v\n%s", err, rec.Body)
	}
	if app.XMLName.Space != "http://wadl.dev.java.net/2009/02" {
		t.Fatalf("root element %v, want WADL's application", app.XMLName)
	}
	return app
}

// TestCapabilitiesDescribeEveryRoute asks the service root for its
// Capabilities Description and checks that every DICOMweb route of the route
// table is in it, as a resource with that method and its transaction's id
// and media types, and nothing else is.
func TestCapabilitiesDescribeEveryRoute(t *testing.T) {
	const dw = "/dicomweb"
	s := New(Config{})
	app := decodeWADL(t, capabilitiesRequest(t, s.Handler(), dw, "", ""))
	if got, want := app.Resources.Base, "http://127.0.0.1:8080/dicomweb/"; got != want {
		t.Errorf("resources base=%q, want %q", got, want)
	}
	described := map[string]wadlMethod{}
	for _, res := range app.Resources.Resources {
		for _, m := range res.Methods {
			described[m.Name+" "+res.Path] = m
		}
	}
	routed := 0
	for _, r := range s.routes() {
		if r.path != dw && !strings.HasPrefix(r.path, dw+"/") {
			continue
		}
		routed++
		rel, _ := wadlPath(strings.TrimPrefix(strings.TrimPrefix(r.path, dw), "/"))
		m, ok := described[r.method+" "+rel]
		if !ok {
			t.Errorf("%s %s is routed but not in the capabilities (as %q)", r.method, r.path, rel)
			continue
		}
		tx, _ := transactionOf(dw, r.method, r.path)
		if m.ID != tx.id {
			t.Errorf("%s %s: id=%q, want %q", r.method, r.path, m.ID, tx.id)
		}
		if m.Doc == nil || !strings.Contains(m.Doc.Text, "role: "+string(r.role)) {
			t.Errorf("%s %s: doc %+v does not name role %s", r.method, r.path, m.Doc, r.role)
		}
		var got []string
		for _, resp := range m.Responses {
			for _, rep := range resp.Representations {
				got = append(got, rep.MediaType)
			}
		}
		if !slices.Equal(got, tx.produces) {
			t.Errorf("%s %s: representations %q, want %q", r.method, r.path, got, tx.produces)
		}
	}
	if routed != len(described) {
		t.Errorf("%d DICOMweb routes, %d methods described", routed, len(described))
	}
	if m := described["POST studies"]; m.Request == nil || len(m.Request.Representations) == 0 ||
		m.Request.Representations[0].MediaType != acceptMultipartDICOM {
		t.Errorf("POST studies: request %+v, want %s", m.Request, acceptMultipartDICOM)
	}
}

// TestCapabilitiesOfAResource checks OPTIONS on a resource: the resource and
// those below it, its Allow header, template parameters, and negotiation.
func TestCapabilitiesOfAResource(t *testing.T) {
	h := New(Config{}).Handler()
	rec := capabilitiesRequest(t, h, "/dicomweb/studies/1.2.3", mediaWADL, "")
	app := decodeWADL(t, rec)
	if got, want := rec.Header().Get("Allow"), "DELETE, GET, OPTIONS, POST"; got != want {
		t.Errorf("Allow=%q, want %q", got, want)
	}
	var paths []string
	for _, res := range app.Resources.Resources {
		paths = append(paths, res.Path)
		if !strings.HasPrefix(res.Path, "studies/{study}") {
			t.Errorf("resource %q is not below studies/{study}", res.Path)
		}
		if !slices.ContainsFunc(res.Params, func(p wadlParam) bool { return p.Name == "study" && p.Style == "template" }) {
			t.Errorf("resource %q lacks the template parameter study", res.Path)
		}
	}
	for _, want := range []string{"studies/{study}", "studies/{study}/metadata", "studies/{study}/series/{series}/instances/{instance}/frames/{frames}"} {
		if !slices.Contains(paths, want) {
			t.Errorf("resources %q lack %q", paths, want)
		}
	}
	if slices.Contains(paths, "studies") {
		t.Errorf("resources of studies/{study} include its parent: %q", paths)
	}

	rec = capabilitiesRequest(t, h, "/dicomweb/studies", "application/xml", "")
	if ct := rec.Header().Get("Content-Type"); rec.Code != http.StatusOK || !strings.HasPrefix(ct, "application/xml") {
		t.Errorf("Accept application/xml: status=%d Content-Type=%q, want 200 application/xml", rec.Code, ct)
	}
	rec = capabilitiesRequest(t, h, "/dicomweb/studies", "application/dicom+json", "")
	if rec.Code != http.StatusNotAcceptable {
		t.Errorf("Accept application/dicom+json: status=%d, want 406", rec.Code)
	}
}

// TestCapabilitiesNeedReadAndKeepCORSPreflight: with auth on, a plain
// OPTIONS needs role read, while a browser's CORS preflight (which never
// carries credentials) is still answered 204 by cors.
func TestCapabilitiesNeedReadAndKeepCORSPreflight(t *testing.T) {
	cfg, tokens := tokenPerRole(t)
	auth, err := NewAuthenticator(cfg)
	if err != nil {
		t.Fatal(err)
	}
	const viewer = "https://viewer.example.nhs.uk"
	h := New(Config{Auth: auth, CORSOrigins: []string{viewer}}).Handler()
	if rec := capabilitiesRequest(t, h, "/dicomweb", "", ""); rec.Code != http.StatusUnauthorized {
		t.Errorf("no credentials: status=%d, want 401", rec.Code)
	}
	if rec := capabilitiesRequest(t, h, "/dicomweb", "", tokens[gateway.RoleStore]); rec.Code != http.StatusForbidden {
		t.Errorf("role store: status=%d, want 403", rec.Code)
	}
	decodeWADL(t, capabilitiesRequest(t, h, "/dicomweb", "", tokens[gateway.RoleRead]))

	for _, path := range []string{"/dicomweb/studies", "/dicomweb/studies/1.2.3/series/4.5.6/instances/7.8.9/frames/1"} {
		req := httptest.NewRequestWithContext(t.Context(), http.MethodOptions, "http://127.0.0.1:8080"+path, nil)
		req.Header.Set("Origin", viewer)
		req.Header.Set("Access-Control-Request-Method", http.MethodGet)
		req.Header.Set("Access-Control-Request-Headers", "authorization, accept")
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != http.StatusNoContent || rec.Header().Get("Access-Control-Allow-Origin") != viewer {
			t.Errorf("preflight of %s: status=%d Allow-Origin=%q, want 204 %s", path, rec.Code, rec.Header().Get("Access-Control-Allow-Origin"), viewer)
		}
		if rec.Body.Len() != 0 {
			t.Errorf("preflight of %s has a body: %s", path, rec.Body)
		}
	}
}
