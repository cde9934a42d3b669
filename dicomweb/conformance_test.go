package dicomweb

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"net/textproto"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/dicom-gateway/gateway/internal/synth"
)

// standardMediaTypes are the media types PS3.18 defines for each
// transaction's response (for StoreInstances also its request, in
// standardStoreRequestTypes); the conformance table lists each with whether
// this gateway serves it. Media types the gateway serves beyond these come
// from the transactions table.
var standardMediaTypes = map[string][]string{
	"StoreInstances":            {mediaDICOMJSON, mediaDICOMXML},
	"SearchForStudies":          {mediaDICOMJSON, acceptMultipartXML},
	"SearchForSeries":           {mediaDICOMJSON, acceptMultipartXML},
	"SearchForInstances":        {mediaDICOMJSON, acceptMultipartXML},
	"RetrieveStudy":             {acceptMultipartDICOM, acceptMultipartOctet, "application/zip"},
	"RetrieveSeries":            {acceptMultipartDICOM, acceptMultipartOctet, "application/zip"},
	"RetrieveInstance":          {acceptMultipartDICOM, acceptMultipartOctet, "application/zip", mediaDICOM},
	"RetrieveStudyMetadata":     {mediaDICOMJSON, acceptMultipartXML},
	"RetrieveSeriesMetadata":    {mediaDICOMJSON, acceptMultipartXML},
	"RetrieveInstanceMetadata":  {mediaDICOMJSON, acceptMultipartXML},
	"RetrieveFrames":            {acceptMultipartOctet, mediaOctetStream},
	"RetrieveRenderedInstance":  {mediaJPEG, mediaPNG, "image/gif"},
	"RetrieveRenderedFrames":    {mediaJPEG, mediaPNG, "image/gif"},
	"RetrieveInstanceThumbnail": {mediaJPEG, mediaPNG, "image/gif"},
	"RetrieveFramesThumbnail":   {mediaJPEG, mediaPNG, "image/gif"},
	"RetrieveBulkdata":          {acceptMultipartOctet, mediaOctetStream},
	"RetrieveWADOURI":           {mediaDICOM, mediaJPEG, mediaPNG, "image/gif"},
	"RetrieveCapabilities":      {mediaWADL, mediaJSON},
}

var standardStoreRequestTypes = []string{acceptMultipartDICOM, `multipart/related; type="application/dicom+json"`, acceptMultipartXML}

const (
	conformanceBegin = "<!-- conformance:begin -->"
	conformanceEnd   = "<!-- conformance:end -->"
)

// conformanceProbe serves the gateway on the embedded backends and sends
// real requests to it.
type conformanceProbe struct {
	t   *testing.T
	srv *httptest.Server
	n   uint64 // instances made so far
}

func (p *conformanceProbe) do(method, path string, header http.Header, body io.Reader) *http.Response {
	p.t.Helper()
	req, err := http.NewRequestWithContext(p.t.Context(), method, p.srv.URL+path, body)
	if err != nil {
		p.t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		p.t.Fatal(err)
	}
	p.t.Cleanup(func() { resp.Body.Close() })
	return resp
}

// instance makes a new synthetic native CT instance (one frame, 64×64,
// renderable) in its own study.
func (p *conformanceProbe) instance() synth.Instance {
	p.n++
	return synth.Instance{
		PatientName: "Conformance^Probe", PatientID: "CONF", StudyDate: "20260101",
		StudyInstanceUID:  synth.UID(9, p.n),
		SeriesInstanceUID: synth.UID(9, p.n, 1),
		SOPInstanceUID:    synth.UID(9, p.n, 1, 1),
		PixelSeed:         p.n,
	}
}

// stow sends in as a STOW-RS request whose body's Content-Type is
// contentType (with a boundary), asking for accept.
func (p *conformanceProbe) stow(in synth.Instance, contentType, accept string) *http.Response {
	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	_, params, _ := mime.ParseMediaType(contentType)
	part, err := mw.CreatePart(textproto.MIMEHeader{"Content-Type": {params["type"]}})
	if err != nil {
		p.t.Fatal(err)
	}
	if _, err := in.WriteTo(part); err != nil {
		p.t.Fatal(err)
	}
	mw.Close()
	h := http.Header{"Content-Type": {contentType + "; boundary=" + mw.Boundary()}}
	if accept != "" {
		h.Set("Accept", accept)
	}
	return p.do(http.MethodPost, "/dicomweb/studies", h, &body)
}

// served reports whether resp is a success in media type want (for
// multipart, its type parameter too).
func served(resp *http.Response, want string) bool {
	if resp.StatusCode/100 != 2 {
		return false
	}
	gotType, gotParams, err := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if err != nil {
		return false
	}
	wantType, wantParams, err := mime.ParseMediaType(want)
	if err != nil || gotType != wantType {
		return false
	}
	if t, ok := wantParams["type"]; ok {
		return strings.EqualFold(strings.TrimSpace(gotParams["type"]), t)
	}
	return true
}

// concreteURL fills a route path's parameters with in's UIDs, frame 1 and
// the bulk data path bulk.
func concreteURL(path string, in synth.Instance, bulk string) string {
	r := strings.NewReplacer(":study", in.StudyInstanceUID, ":series", in.SeriesInstanceUID,
		":instance", in.SOPInstanceUID, ":frames", "1", "*path", bulk)
	return r.Replace(path)
}

// pixelBulkPath is the bulkdata path of in's Pixel Data, from its metadata.
func (p *conformanceProbe) pixelBulkPath(in synth.Instance) string {
	p.t.Helper()
	prefix := fmt.Sprintf("/dicomweb/studies/%s/series/%s/instances/%s", in.StudyInstanceUID, in.SeriesInstanceUID, in.SOPInstanceUID)
	resp := p.do(http.MethodGet, prefix+"/metadata", http.Header{"Accept": {mediaDICOMJSON}}, nil)
	var md []map[string]struct{ BulkDataURI string }
	if err := json.NewDecoder(resp.Body).Decode(&md); err != nil || len(md) != 1 {
		p.t.Fatalf("metadata of the probe instance: %v (%d items)", err, len(md))
	}
	uri := md[0]["7FE00010"].BulkDataURI
	_, after, ok := strings.Cut(uri, prefix+"/bulkdata/")
	if !ok {
		p.t.Fatalf("Pixel Data BulkDataURI %q is not under %s/bulkdata/", uri, prefix)
	}
	return after
}

// probe asks the route for its response in mediaType and reports whether
// it was served so.
func (p *conformanceProbe) probe(r route, mediaType string, stored synth.Instance, bulk string) bool {
	switch {
	case r.method == http.MethodPost:
		return served(p.stow(p.instance(), acceptMultipartDICOM, mediaType), mediaType)
	case r.method == http.MethodDelete:
		in := p.instance()
		if resp := p.stow(in, acceptMultipartDICOM, ""); resp.StatusCode != http.StatusOK {
			p.t.Fatalf("STOW of an instance to delete: %d", resp.StatusCode)
		}
		return served(p.do(r.method, concreteURL(r.path, in, ""), http.Header{"Accept": {mediaType}}, nil), mediaType)
	case strings.HasSuffix(r.path, "/wado"):
		q := fmt.Sprintf("?requestType=WADO&studyUID=%s&seriesUID=%s&objectUID=%s&contentType=%s",
			stored.StudyInstanceUID, stored.SeriesInstanceUID, stored.SOPInstanceUID, mediaType)
		return served(p.do(r.method, r.path+q, nil, nil), mediaType)
	}
	return served(p.do(r.method, concreteURL(r.path, stored, bulk), http.Header{"Accept": {mediaType}}, nil), mediaType)
}

// conformanceRow is one line of the README's table.
type conformanceRow struct {
	transaction, section, resources, mediaType string
	supported                                  bool
}

// TestConformanceTable builds the README's conformance table by asking a
// running gateway for every media type of every DICOMweb transaction (those
// PS3.18 defines and those the transactions table declares), and compares
// it with the README between the conformance markers. It fails when a
// declared media type is not served or a served one is not declared, so the
// capabilities (WADL) and the README cannot claim what the code does not do.
// go test ./dicomweb -run TestConformanceTable -update rewrites the README.
func TestConformanceTable(t *testing.T) {
	const dw = "/dicomweb"
	s := embeddedServer(t, nil).serve()
	srv := httptest.NewServer(s.Handler())
	t.Cleanup(srv.Close)
	p := &conformanceProbe{t: t, srv: srv}
	stored := p.instance()
	if resp := p.stow(stored, acceptMultipartDICOM, ""); resp.StatusCode != http.StatusOK {
		t.Fatalf("STOW of the probe instance: %d", resp.StatusCode)
	}
	bulk := p.pixelBulkPath(stored)

	// The transactions in route order, each with its routes.
	var order []string
	routesOf := map[string][]route{}
	for _, r := range s.routes() {
		if r.path != dw && !strings.HasPrefix(r.path, dw+"/") {
			continue
		}
		tx, ok := transactionOf(dw, r.method, r.path)
		if !ok {
			t.Fatalf("%s %s names no transaction", r.method, r.path)
		}
		if _, seen := routesOf[tx.id]; !seen {
			order = append(order, tx.id)
		}
		routesOf[tx.id] = append(routesOf[tx.id], r)
	}

	var rows []conformanceRow
	for _, id := range order {
		first := len(rows)
		rs := routesOf[id]
		tx, _ := transactionOf(dw, rs[0].method, rs[0].path)
		var resources []string
		for _, r := range rs {
			rel, _ := wadlPath(strings.TrimPrefix(r.path, dw))
			if rel == "" {
				rel = "/"
			}
			if r.method == http.MethodOptions {
				resources = []string{"`OPTIONS /` and on every resource"}
				break
			}
			resources = append(resources, "`"+r.method+" "+rel+"`")
		}
		section := tx.section
		if section == "" {
			section = "–"
		}
		if id == "StoreInstances" {
			for _, mt := range union(standardStoreRequestTypes, tx.consumes) {
				resp := p.stow(p.instance(), mt, "")
				ok := resp.StatusCode == http.StatusOK
				checkDeclared(t, id+" request", mt, ok, slices.Contains(tx.consumes, mt))
				rows = append(rows, conformanceRow{id + " (request)", section, strings.Join(resources, ", "), mt, ok})
			}
		}
		name := id
		if id == "StoreInstances" {
			name += " (response)"
		}
		for _, mt := range union(standardMediaTypes[id], tx.produces) {
			ok := p.probe(rs[0], mt, stored, bulk)
			checkDeclared(t, id, mt, ok, slices.Contains(tx.produces, mt))
			rows = append(rows, conformanceRow{name, section, strings.Join(resources, ", "), mt, ok})
		}
		prev := ""
		for k := first; k < len(rows); k++ { // name each transaction once
			if rows[k].transaction == prev {
				rows[k].transaction, rows[k].section, rows[k].resources = "", "", ""
				continue
			}
			prev = rows[k].transaction
		}
	}

	var b strings.Builder
	b.WriteString(conformanceBegin + "\n")
	b.WriteString("| transaction | PS3.18 | resources (under `/dicomweb`) | media type | supported |\n|---|---|---|---|---|\n")
	for _, r := range rows {
		yes := "no"
		if r.supported {
			yes = "**yes**"
		}
		fmt.Fprintf(&b, "| %s | %s | %s | `%s` | %s |\n", r.transaction, r.section, r.resources, r.mediaType, yes)
	}
	b.WriteString(conformanceEnd)
	table := b.String()

	const readme = "../README.md"
	raw, err := os.ReadFile(readme)
	if err != nil {
		t.Fatal(err)
	}
	text := string(raw)
	i, j := strings.Index(text, conformanceBegin), strings.Index(text, conformanceEnd)
	if i < 0 || j < i {
		t.Fatalf("README.md lacks the %s … %s markers", conformanceBegin, conformanceEnd)
	}
	current := text[i : j+len(conformanceEnd)]
	if update := flag.Lookup("update"); update != nil && update.Value.String() == "true" {
		if err := os.WriteFile(readme, []byte(text[:i]+table+text[j+len(conformanceEnd):]), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	if current != table {
		t.Errorf("README.md's conformance table differs from what the gateway serves; rerun with -update and review.\nwant:\n%s", table)
	}
}

// checkDeclared fails when the transactions table and the gateway disagree
// about mediaType.
func checkDeclared(t *testing.T, what, mediaType string, served, declared bool) {
	t.Helper()
	switch {
	case declared && !served:
		t.Errorf("%s: %s is declared in the transactions table but not served", what, mediaType)
	case served && !declared:
		t.Errorf("%s: %s is served but not declared in the transactions table (capabilities.go): add it", what, mediaType)
	}
}

// union is a then the entries of b not in a.
func union(a, b []string) []string {
	out := slices.Clone(a)
	for _, s := range b {
		if !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	return out
}
