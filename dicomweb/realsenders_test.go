package dicomweb_test

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"log/slog"
	"net/http"
	"strings"
	"testing"

	"github.com/dicom-gateway/gateway/dicomcodec"
	"github.com/dicom-gateway/gateway/gateway"
	"github.com/dicom-gateway/gateway/internal/syncbuf"
)

// postStow sends the instances to g in one STOW-RS request and returns the
// status, the Warning header and the decoded answer.
func postStow(t *testing.T, g *wadoGateway, instances ...[]byte) (int, string, dicomcodec.Dataset) {
	t.Helper()
	var parts []stowPart
	for _, data := range instances {
		parts = append(parts, dicomPart(data))
	}
	body, boundary := multipartBody(t, parts...)
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, g.srv.URL+"/dicomweb/studies", body)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", `multipart/related; type="application/dicom"; boundary=`+boundary)
	req.Header.Set("Accept", "application/dicom+json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var ds dicomcodec.Dataset
	if err := json.NewDecoder(resp.Body).Decode(&ds); err != nil {
		t.Fatalf("STOW answer (status %d) is not DICOM JSON: %v", resp.StatusCode, err)
	}
	return resp.StatusCode, resp.Header.Get("Warning"), ds
}

// loggedWADOGateway is a gateway on backend whose server and ingest log to
// the returned buffer.
func loggedWADOGateway(t *testing.T, backend string) (*wadoGateway, *syncbuf.Buffer) {
	logs := &syncbuf.Buffer{}
	logger := slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	g := newWADOGatewayOn(t, backend, func(s *testWiring) {
		s.Config.Logger = logger
		s.Ingester.Logger = logger
	})
	return g, logs
}

// TestStowVendorUIDsWithLeadingZeros: UIDs that break PS3.5 9.1 only by a
// leading zero in a component (as an ultrasound vendor writes them) are
// stored, answered 202 with a Warning header and a Warning Reason in the
// Referenced SOP Sequence item, logged without patient data, and served
// by WADO-RS and QIDO-RS; UIDs broken in any other way are still refused.
func TestStowVendorUIDsWithLeadingZeros(t *testing.T) {
	for _, backend := range wadoBackends {
		t.Run(backend, func(t *testing.T) {
			g, logs := loggedWADOGateway(t, backend)
			const (
				study  = "1.2.840.0113619.2.5.01"
				series = "1.2.840.0113619.2.5.01.02"
				sop    = "1.2.840.0113619.2.5.01.02.003"
			)
			data := makeInstance(study, series, sop, 4, 4, 1)
			status, warning, ds := postStow(t, g, data)
			if status != http.StatusAccepted {
				t.Fatalf("status %d, want 202: %v", status, ds)
			}
			if !strings.HasPrefix(warning, "299 ") || !strings.Contains(warning, sop) {
				t.Errorf("Warning header %q, want a 299 warning naming the UID", warning)
			}
			if _, ok := ds["00081198"]; ok {
				t.Errorf("FailedSOPSequence present: %v", ds["00081198"])
			}
			items := ds["00081199"].Value
			if len(items) != 1 {
				t.Fatalf("ReferencedSOPSequence has %d items, want 1", len(items))
			}
			item := items[0].(dicomcodec.Dataset)
			if got := item["00081196"]; got.VR != "US" || len(got.Value) != 1 || got.Value[0] != int64(gateway.WarningDataSetMismatch) {
				t.Errorf("WarningReason %+v, want US 0xB007", got)
			}
			if got := item.String("00081155"); got != sop {
				t.Errorf("ReferencedSOPInstanceUID %q, want %q", got, sop)
			}
			log := logs.String()
			if !strings.Contains(log, "instance stored with UIDs that break PS3.5 9.1") || !strings.Contains(log, sop) {
				t.Errorf("no warning naming %s in the log:\n%s", sop, log)
			}
			for _, phi := range []string{"Testpatient", "Secretname", "PID-4242"} {
				if strings.Contains(log, phi) {
					t.Errorf("patient data %q in the log", phi)
				}
			}

			// WADO-RS serves the original bytes; metadata and QIDO-RS find it.
			parts := readParts(t, g.get(t, "/dicomweb/studies/"+study+"/series/"+series+"/instances/"+sop, "Accept", `multipart/related; type="application/dicom"`), "application/dicom")
			if len(parts) != 1 || !bytes.Equal(parts[0].body, data) {
				t.Errorf("retrieved %d parts, want the original bytes", len(parts))
			}
			resp := g.get(t, "/dicomweb/studies/"+study+"/series/"+series+"/instances/"+sop+"/metadata")
			var meta []dicomcodec.Dataset
			if err := json.Unmarshal(readBody(t, resp), &meta); err != nil || resp.StatusCode != http.StatusOK || len(meta) != 1 || meta[0].String("00080018") != sop {
				t.Errorf("metadata: status %d, %v, %d objects", resp.StatusCode, err, len(meta))
			}
			resp = g.get(t, "/dicomweb/studies?StudyInstanceUID="+study)
			var found []dicomcodec.Dataset
			if err := json.Unmarshal(readBody(t, resp), &found); err != nil || len(found) != 1 || found[0].String("0020000D") != study {
				t.Errorf("QIDO-RS: status %d, %v, %d studies", resp.StatusCode, err, len(found))
			}

			// A conformant instance: 200, no warning.
			status, warning, ds = postStow(t, g, makeInstance(testStudy, testSeries, testSOP(700), 4, 4, 1))
			if status != http.StatusOK || warning != "" {
				t.Errorf("conformant instance: status %d, Warning %q, want 200 and none", status, warning)
			}
			if item := ds["00081199"].Value[0].(dicomcodec.Dataset); len(item["00081196"].Value) != 0 {
				t.Errorf("conformant instance has a WarningReason")
			}

			// Every other deviation is still refused.
			for _, bad := range []string{"1.2.840.0113.a", "1.2..3", "1.2.3.", strings.Repeat("1", 65), "1.2/../3"} {
				status, _, ds := postStow(t, g, makeInstance(testStudy, testSeries, bad, 4, 4, 1))
				if status != http.StatusConflict || len(ds["00081198"].Value) != 1 {
					t.Errorf("SOP Instance UID %q: status %d, want 409 with a FailedSOPSequence", bad, status)
				}
			}
		})
	}
}

// unInstance is an Explicit VR Little Endian instance whose standard
// elements, the UIDs among them, are all sent as UN, as some conversion
// tools write them.
func unInstance(study, series, sop string) []byte {
	const class = "1.2.840.10008.5.1.4.1.1.7"
	var meta []byte
	meta = append(meta, dicomElement(0x0002, 0x0001, "OB", []byte{0, 1})...)
	meta = append(meta, dicomElement(0x0002, 0x0002, "UI", []byte(class))...)
	meta = append(meta, dicomElement(0x0002, 0x0003, "UI", []byte(sop))...)
	meta = append(meta, dicomElement(0x0002, 0x0010, "UI", []byte("1.2.840.10008.1.2.1"))...)
	out := append(make([]byte, 128), "DICM"...)
	out = append(out, dicomElement(0x0002, 0x0000, "UL", binary.LittleEndian.AppendUint32(nil, uint32(len(meta))))...)
	out = append(out, meta...)
	// dicomElement pads UN values with a space; UIDs need a NUL.
	uid := func(s string) []byte {
		if len(s)%2 == 1 {
			return append([]byte(s), 0)
		}
		return []byte(s)
	}
	out = append(out, dicomElement(0x0008, 0x0016, "UN", uid(class))...)
	out = append(out, dicomElement(0x0008, 0x0018, "UN", uid(sop))...)
	out = append(out, dicomElement(0x0008, 0x0060, "UN", []byte("OT"))...)
	out = append(out, dicomElement(0x0010, 0x0010, "UN", []byte("Unknown^Vr"))...)
	out = append(out, dicomElement(0x0020, 0x000D, "UN", uid(study))...)
	out = append(out, dicomElement(0x0020, 0x000E, "UN", uid(series))...)
	out = append(out, dicomElement(0x0020, 0x0013, "UN", []byte("3 "))...)
	out = append(out, dicomElement(0x0028, 0x0010, "UN", us(2))...)
	return out
}

// TestStowStandardElementsSentAsUN stores an instance whose UIDs and other
// standard elements are sent as UN (once refused for "missing" UIDs) and
// checks its DICOM JSON metadata: the dictionary's VRs, decoded values.
func TestStowStandardElementsSentAsUN(t *testing.T) {
	for _, backend := range wadoBackends {
		t.Run(backend, func(t *testing.T) {
			g, _ := loggedWADOGateway(t, backend)
			study, series, sop := testStudy+".9", testStudy+".9.1", testStudy+".9.1.1"
			data := unInstance(study, series, sop)
			if status, _, ds := postStow(t, g, data); status != http.StatusOK {
				t.Fatalf("status %d, want 200: %v", status, ds)
			}
			resp := g.get(t, "/dicomweb/studies/"+study+"/series/"+series+"/instances/"+sop+"/metadata")
			body := readBody(t, resp)
			var meta []map[string]json.RawMessage
			if err := json.Unmarshal(body, &meta); err != nil || len(meta) != 1 {
				t.Fatalf("metadata: status %d, %v: %s", resp.StatusCode, err, body)
			}
			for tag, want := range map[string]string{
				"00080016": `{"vr":"UI","Value":["1.2.840.10008.5.1.4.1.1.7"]}`,
				"00080018": `{"vr":"UI","Value":["` + sop + `"]}`,
				"00080060": `{"vr":"CS","Value":["OT"]}`,
				"00100010": `{"vr":"PN","Value":[{"Alphabetic":"Unknown^Vr"}]}`,
				"0020000D": `{"vr":"UI","Value":["` + study + `"]}`,
				"0020000E": `{"vr":"UI","Value":["` + series + `"]}`,
				"00200013": `{"vr":"IS","Value":[3]}`,
				"00280010": `{"vr":"US","Value":[2]}`,
			} {
				if got := string(meta[0][tag]); got != want {
					t.Errorf("%s = %s, want %s", tag, got, want)
				}
			}
			parts := readParts(t, g.get(t, "/dicomweb/studies/"+study, "Accept", `multipart/related; type="application/dicom"`), "application/dicom")
			if len(parts) != 1 || !bytes.Equal(parts[0].body, data) {
				t.Errorf("retrieved %d parts, want the original bytes unchanged", len(parts))
			}
		})
	}
}
