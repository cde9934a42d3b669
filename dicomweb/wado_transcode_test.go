package dicomweb_test

import (
	"bytes"
	"net/http"
	"strings"
	"testing"

	"github.com/dicom-gateway/gateway/dicomcodec"
	"github.com/dicom-gateway/gateway/gateway"
	"github.com/dicom-gateway/gateway/internal/synth"
)

// TestWADOTranscode: an instance stored in Implicit VR Little Endian is
// served in Explicit VR Little Endian when a client asks for that syntax
// (multipart at every level, a bare body, WADO-URI), transcoded as
// gateway.TranscodeToExplicitLE does, and also when it names no syntax (the
// PS3.18 default); "*" gets the stored bytes, and so does a compressed
// instance that names no syntax; syntaxes that cannot be produced are 406.
func TestWADOTranscode(t *testing.T) {
	for _, backend := range wadoBackends {
		t.Run(backend, func(t *testing.T) {
			g := newWADOGatewayOn(t, backend, nil)
			cases := synth.MetadataCases()
			byName := map[string][]byte{}
			for _, c := range cases {
				if status := g.ingest(t, c.Data); status != http.StatusOK {
					t.Fatalf("store %s: %d", c.Name, status)
				}
				byName[c.Name] = c.Data
			}
			implicit, explicit := byName["mr-multiframe-implicit"], byName["ct-sequences-explicit"]
			var want bytes.Buffer
			if _, err := dicomcodec.TranscodeToExplicitLE(&want, bytes.NewReader(implicit)); err != nil {
				t.Fatal(err)
			}
			recs, err := g.index.ListInstances(t.Context(), studyUIDOf(t, implicit), "")
			if err != nil {
				t.Fatal(err)
			}
			var implicitRec *gateway.InstanceRecord
			for _, r := range recs {
				if r.TransferSyntaxUID == dicomcodec.TSImplicitLE {
					implicitRec = r
				}
			}
			instPath := "/dicomweb/studies/" + implicitRec.StudyInstanceUID + "/series/" + implicitRec.SeriesInstanceUID + "/instances/" + implicitRec.SOPInstanceUID
			asExplicit := `multipart/related; type="application/dicom"; transfer-syntax=` + dicomcodec.TSExplicitLE

			// One instance, asked for in Explicit VR Little Endian.
			parts := readParts(t, g.get(t, instPath, "Accept", asExplicit), "application/dicom")
			if len(parts) != 1 || !bytes.Equal(parts[0].body, want.Bytes()) {
				t.Fatalf("instance: %d parts, or bytes differ from the transcode", len(parts))
			}
			if got := parts[0].contentType; got != "application/dicom; transfer-syntax="+dicomcodec.TSExplicitLE {
				t.Errorf("part Content-Type %q", got)
			}
			// The whole study holds a JPEG Baseline instance, which cannot be
			// served in Explicit VR Little Endian: asking only for that is
			// 406; with "*" as a fallback every instance comes, the implicit
			// one transcoded and the others as stored.
			resp := g.get(t, "/dicomweb/studies/"+implicitRec.StudyInstanceUID, "Accept", asExplicit)
			if body := readBody(t, resp); resp.StatusCode != http.StatusNotAcceptable || !strings.Contains(string(body), "1.2.840.10008.1.2.4.50") {
				t.Errorf("study asked only as explicit: status %d %s, want 406 naming the JPEG syntax", resp.StatusCode, body)
			}
			parts = readParts(t, g.get(t, "/dicomweb/studies/"+implicitRec.StudyInstanceUID, "Accept",
				asExplicit+`, multipart/related; type="application/dicom"; transfer-syntax=*; q=0.5`), "application/dicom")
			if len(parts) != len(cases) {
				t.Fatalf("study: %d parts, want %d", len(parts), len(cases))
			}
			matched := 0
			for _, p := range parts {
				for _, w := range [][]byte{want.Bytes(), explicit, byName["us-jpeg-encapsulated"]} {
					if bytes.Equal(p.body, w) {
						matched++
					}
				}
			}
			if matched != len(cases) {
				t.Errorf("study: %d of %d parts are the expected bytes (transcoded implicit, stored explicit, stored JPEG)", matched, len(cases))
			}
			// "*": the stored bytes. No syntax named (also */*, what curl
			// sends): the default, Explicit VR Little Endian, transcoded.
			parts = readParts(t, g.get(t, instPath, "Accept", `multipart/related; type="application/dicom"; transfer-syntax=*`), "application/dicom")
			if len(parts) != 1 || !bytes.Equal(parts[0].body, implicit) {
				t.Errorf("transfer-syntax=*: not the stored bytes")
			}
			for _, accept := range []string{`multipart/related; type="application/dicom"`, "*/*", "application/dicom"} {
				resp := g.get(t, instPath, "Accept", accept)
				var body []byte
				if strings.HasPrefix(resp.Header.Get("Content-Type"), "multipart/") {
					parts := readParts(t, resp, "application/dicom")
					if len(parts) != 1 {
						t.Fatalf("Accept %s: %d parts", accept, len(parts))
					}
					body = parts[0].body
				} else {
					body = readBody(t, resp)
				}
				if !bytes.Equal(body, want.Bytes()) {
					t.Errorf("Accept %s: not transcoded to Explicit VR Little Endian", accept)
				}
			}
			// A compressed instance keeps its syntax when none is named.
			for _, r := range recs {
				if r.TransferSyntaxUID != dicomcodec.TSJPEGBaseline {
					continue
				}
				p := "/dicomweb/studies/" + r.StudyInstanceUID + "/series/" + r.SeriesInstanceUID + "/instances/" + r.SOPInstanceUID
				parts := readParts(t, g.get(t, p, "Accept", `multipart/related; type="application/dicom"`), "application/dicom")
				if len(parts) != 1 || !bytes.Equal(parts[0].body, byName["us-jpeg-encapsulated"]) {
					t.Errorf("JPEG Baseline instance without a syntax: not the stored bytes")
				}
			}
			// Preference order: JPEG Baseline first (cannot), explicit next.
			parts = readParts(t, g.get(t, instPath, "Accept",
				`multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50, `+asExplicit+`; q=0.5`), "application/dicom")
			if len(parts) != 1 || !bytes.Equal(parts[0].body, want.Bytes()) {
				t.Error("q-value list: not transcoded to the acceptable syntax")
			}
			// A bare application/dicom body.
			resp = g.get(t, instPath, "Accept", "application/dicom; transfer-syntax="+dicomcodec.TSExplicitLE)
			if body := readBody(t, resp); resp.StatusCode != http.StatusOK || !bytes.Equal(body, want.Bytes()) {
				t.Errorf("bare body: status %d, or bytes differ", resp.StatusCode)
			}
			// Not producible: 406 with a message.
			for _, accept := range []string{
				`multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.2`,
				`multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50`,
			} {
				resp := g.get(t, instPath, "Accept", accept)
				if body := readBody(t, resp); resp.StatusCode != http.StatusNotAcceptable || !strings.Contains(string(body), "available") {
					t.Errorf("Accept %s: status %d %s, want 406", accept, resp.StatusCode, body)
				}
			}
			// WADO-URI: no transferSyntax is the default too; "*" the stored bytes.
			uri := "/dicomweb/wado?requestType=WADO&studyUID=" + implicitRec.StudyInstanceUID + "&seriesUID=" + implicitRec.SeriesInstanceUID +
				"&objectUID=" + implicitRec.SOPInstanceUID + "&contentType=application/dicom&transferSyntax="
			resp = g.get(t, uri+dicomcodec.TSExplicitLE)
			if body := readBody(t, resp); resp.StatusCode != http.StatusOK || !bytes.Equal(body, want.Bytes()) {
				t.Errorf("WADO-URI transferSyntax=explicit: status %d or bytes differ", resp.StatusCode)
			}
			resp = g.get(t, uri)
			if body := readBody(t, resp); resp.StatusCode != http.StatusOK || !bytes.Equal(body, want.Bytes()) {
				t.Errorf("WADO-URI without transferSyntax: status %d or not transcoded", resp.StatusCode)
			}
			resp = g.get(t, uri+"*")
			if body := readBody(t, resp); resp.StatusCode != http.StatusOK || !bytes.Equal(body, implicit) {
				t.Errorf("WADO-URI transferSyntax=*: status %d or not the stored bytes", resp.StatusCode)
			}
			resp = g.get(t, uri+"1.2.840.10008.1.2.4.50")
			if readBody(t, resp); resp.StatusCode != http.StatusNotAcceptable {
				t.Errorf("WADO-URI transferSyntax=JPEG: status %d, want 406", resp.StatusCode)
			}
		})
	}
}
