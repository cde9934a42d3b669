package main

import (
	"bytes"
	"encoding/json"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/dicom-gateway/gateway/client"
	"github.com/dicom-gateway/gateway/dicomcodec"
	"github.com/dicom-gateway/gateway/gateway"
	"github.com/dicom-gateway/gateway/internal/cluster"
	"github.com/dicom-gateway/gateway/internal/syncbuf"
	"github.com/dicom-gateway/gateway/internal/synth"
)

// wadoPart10 retrieves one instance's Part 10 bytes with WADO-RS.
func wadoPart10(t *testing.T, root, study, series, sop string) []byte {
	t.Helper()
	code, ct, body := fhirGet(t, root+"/dicomweb/studies/"+study+"/series/"+series+"/instances/"+sop, `multipart/related; type="application/dicom"`)
	if code != http.StatusOK {
		t.Fatalf("WADO-RS %s = %d", sop, code)
	}
	_, params, err := mime.ParseMediaType(ct)
	if err != nil {
		t.Fatal(err)
	}
	part, err := multipart.NewReader(bytes.NewReader(body), params["boundary"]).NextPart()
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(part)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestTwoCentreDeidentifiedTransfer: hampshire sends a study to a research
// peer configured with deidentify: basic. Every attribute of PS3.15 Table
// E.1-1 the instances carry is removed, emptied, replaced or kept at surrey
// as its action says (private attributes gone, nested items cleaned); the
// UIDs are hampshire's keyed mapping, consistent within the study (the
// series, frame of reference and every instance's reference to another
// resolve among what surrey holds); pixel data is byte-identical;
// verification compared the SHA-256 of the de-identified bytes; a second
// send maps to the same UIDs and surrey answers it as a duplicate (still one
// study of three instances); the audit records the profile and the study's
// UID mapping; the identities stay out of both logs.
func TestTwoCentreDeidentifiedTransfer(t *testing.T) {
	var logs syncbuf.Buffer
	defer func() {
		out := logs.String()
		if !strings.Contains(out, "transfer completed") {
			t.Errorf("the log lacks the transfers; the PHI check proves nothing")
		}
		for _, phi := range []string{"PROBE-PID", "Probe^Patient"} {
			if strings.Contains(out, phi) {
				t.Errorf("%s in the application log", phi)
			}
		}
	}()
	_, surrey := centreLogging(t, "surrey", "", &logs)
	keyFile := filepath.Join(t.TempDir(), "deid.key")
	if err := os.WriteFile(keyFile, []byte("# UID mapping key\n"+strings.Repeat("5a", 32)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	key, err := loadDeidentifyKey(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(t)
	cfg.Name, cfg.DeidentifyKey = "hampshire", key
	fc, err := parseFileConfig(strings.NewReader(`
peers:
  - name: surrey
    url: ` + surrey + `/dicomweb
    gateway: true
    deidentify: {profile: basic}
`))
	if err != nil {
		t.Fatal(err)
	}
	cfg.File = *fc
	m := MustRunMain(t, cfg, &logs)
	hampshire := "http://" + m.Addr

	study, series := synth.UID(84, 1), synth.UID(84, 1, 1)
	probe := synth.ProfileProbe(study, series, 3)
	stowOK(t, hampshire+"/dicomweb", probe)
	hc := client.New(hampshire)
	send := func() *gateway.Transfer {
		t.Helper()
		tr, err := cluster.CreateTransfer(t.Context(), hc, study, "surrey")
		if err != nil {
			t.Fatal(err)
		}
		return awaitTransfer(t, hc, tr.ID)
	}
	tr := send()
	if tr.State != gateway.StateCompleted || tr.InstancesSent != len(probe) {
		t.Fatalf("transfer %s: %d/%d sent, last error %q", tr.State, tr.InstancesSent, len(probe), tr.LastError)
	}
	if tr.Verified == nil || !*tr.Verified || !strings.Contains(tr.Verification, "sha256: 3/3 identical") {
		t.Errorf("verification %v %q, want the de-identified bytes' SHA-256 identical at surrey", tr.Verified, tr.Verification)
	}

	// Progress is kept under hampshire's UIDs, so a resumed transfer
	// skips what surrey confirmed.
	if len(tr.Instances) != len(probe) {
		t.Errorf("transfer progress lists %d instances, want %d", len(tr.Instances), len(probe))
	}
	for _, p := range tr.Instances {
		if !slices.ContainsFunc(probe, func(in synth.Instance) bool { return in.SOPInstanceUID == p.SOPInstanceUID }) || p.State != gateway.InstanceSent {
			t.Errorf("transfer progress %s %s: want hampshire's UIDs, sent", p.SOPInstanceUID, p.State)
		}
	}

	mapper, err := gateway.NewDeidentifier(nil, key, nil)
	if err != nil {
		t.Fatal(err)
	}
	mapUID := func(uid string) string { return mapper.MapUID("surrey", uid) }
	// Each probe instance's Patient ID, under its issuer, becomes the
	// patient's pseudonym.
	var first bytes.Buffer
	if _, err := probe[0].WriteTo(&first); err != nil {
		t.Fatal(err)
	}
	h, err := dicomcodec.ParseHeader(&first, dicomcodec.HeaderLimits{})
	if err != nil {
		t.Fatal(err)
	}
	pid, issuer := h.Dataset.String("00100020"), h.Dataset.String("00100021")
	pseudonym := mapper.MapPatientID("surrey", issuer, pid)
	o := dicomcodec.DeidentifyOptions{MapUID: mapUID, MapPatientID: func(string) string { return pseudonym }}
	mStudy, mSeries := mapUID(study), mapUID(series)
	if code, _, _ := fhirGet(t, surrey+"/dicomweb/studies/"+study+"/metadata", "application/dicom+json"); code != http.StatusNotFound {
		t.Errorf("surrey holds the study under its original UID: %d", code)
	}
	sc := client.New(surrey)
	held, err := sc.StudyInstances(t.Context(), mStudy, 100)
	if err != nil || len(held) != len(probe) {
		t.Fatalf("surrey's instances of the mapped study: %v, %v", held, err)
	}
	for _, in := range probe {
		var src bytes.Buffer
		if _, err := in.WriteTo(&src); err != nil {
			t.Fatal(err)
		}
		got := wadoPart10(t, surrey, mStudy, mSeries, mapUID(in.SOPInstanceUID))
		hs, err := dicomcodec.ParseHeader(bytes.NewReader(src.Bytes()), dicomcodec.HeaderLimits{})
		if err != nil {
			t.Fatal(err)
		}
		hg, err := dicomcodec.ParseHeader(bytes.NewReader(got), dicomcodec.HeaderLimits{})
		if err != nil {
			t.Fatalf("instance at surrey does not parse: %v", err)
		}
		if v := synth.ProfileViolations(hs.Dataset, hg.Dataset, o); len(v) > 0 {
			t.Errorf("instance %s at surrey: %d departures from the profile, first %v", in.SOPInstanceUID, len(v), v[:min(10, len(v))])
		}
		if bytes.Contains(got, []byte("PHI")) || bytes.Contains(got, []byte("PROBE")) || bytes.Contains(got, []byte("Probe")) {
			t.Errorf("instance %s at surrey still carries a probe value", in.SOPInstanceUID)
		}
		if !bytes.Equal(src.Bytes()[hs.HeaderLength:], got[hg.HeaderLength:]) {
			t.Errorf("instance %s: pixel data differs at surrey", in.SOPInstanceUID)
		}
		d := hg.Dataset
		if d.String(dicomcodec.TagStudyInstanceUID) != mStudy || d.String(dicomcodec.TagSeriesInstanceUID) != mSeries ||
			d.String("00200052") != mapUID(study+".0") || d.String("00120062") != "YES" {
			t.Errorf("instance %s: study %s series %s frame of reference %s identity removed %q", in.SOPInstanceUID,
				d.String(dicomcodec.TagStudyInstanceUID), d.String(dicomcodec.TagSeriesInstanceUID), d.String("00200052"), d.String("00120062"))
		}
		refs := d["00081140"].Value
		if len(refs) != 1 || !slices.Contains(held, refs[0].(dicomcodec.Dataset).String("00081155")) {
			t.Errorf("instance %s: its Referenced Image Sequence %v does not resolve among surrey's instances %v", in.SOPInstanceUID, refs, held)
		}
	}

	// The same study again: the same UIDs and bytes, a duplicate at surrey.
	if again := send(); again.State != gateway.StateCompleted || !strings.Contains(again.Verification, "sha256: 3/3 identical") {
		t.Fatalf("second transfer: %s, %q, %q", again.State, again.LastError, again.Verification)
	}
	code, _, studies := fhirGet(t, surrey+"/dicomweb/studies", "application/dicom+json")
	var list []map[string]any
	if code != http.StatusOK || json.Unmarshal(studies, &list) != nil || len(list) != 1 {
		t.Errorf("surrey's studies after the second send: %d, %s; want the one study", code, studies)
	}
	if held2, err := sc.StudyInstances(t.Context(), mStudy, 100); err != nil || len(held2) != len(probe) {
		t.Errorf("surrey's instances after the second send: %d, %v", len(held2), err)
	}

	// Hampshire's audit records the profile and the study's mapping.
	events := auditEvents(t, hampshire, "action="+gateway.ActionTransferDeidentified+"&study_uid="+study)
	if len(events) != 2 {
		t.Fatalf("transfer.deidentified events = %d, want one per transfer", len(events))
	}
	detail, _ := json.Marshal(events[0].Detail)
	named := `{"issuer":"` + issuer + `","patient_id":"` + pid + `","pseudonym":"` + pseudonym + `"}`
	for _, s := range []string{`"profile":"basic"`, `"retain_longitudinal_temporal":false`, `"` + study + `":"` + mStudy + `"`, `"instances":3`, named} {
		if !strings.Contains(string(detail), s) {
			t.Errorf("transfer.deidentified detail %s lacks %s", detail, s)
		}
	}
	if !slices.Contains(events[0].StudyUIDs, mStudy) {
		t.Errorf("transfer.deidentified study_uids %v lack the mapped UID", events[0].StudyUIDs)
	}
}

// TestDeidentifyConfig: a deidentify rule without a key, with an unknown
// profile, or next to a coerce rule stops start-up with the reason.
func TestDeidentifyConfig(t *testing.T) {
	key := bytes.Repeat([]byte{7}, 32)
	for _, tt := range []struct {
		peer gateway.Peer
		key  []byte
		want string
	}{
		{gateway.Peer{Name: "r", Deidentify: &gateway.DeidentifyRule{Profile: "basic"}}, nil, "--deidentify-key-file"},
		{gateway.Peer{Name: "r", Deidentify: &gateway.DeidentifyRule{Profile: "full"}}, key, "want basic"},
		{gateway.Peer{Name: "r", Deidentify: &gateway.DeidentifyRule{Profile: "basic"}, Coerce: &gateway.CoerceRule{To: "national"}}, key, "exclude each other"},
	} {
		if _, err := gateway.NewDeidentifier([]gateway.Peer{tt.peer}, tt.key, nil); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%+v: %v, want %q", tt.peer.Deidentify, err, tt.want)
		}
	}
	if _, err := gateway.ParseDeidentifyKey(strings.NewReader("abcd\n")); err == nil || strings.Contains(err.Error(), "abcd") {
		t.Errorf("short key: %v (must fail without echoing the key)", err)
	}
}

// TestDicomPeerRewrites: the rewrite rules reach DIMSE peers through the
// transfer queue: a study sent by C-STORE to a peer with deidentify arrives
// at storescp under the mapped UIDs with nothing of the probe values left,
// and one sent to a peer with coerce arrives under the NHS number.
func TestDicomPeerRewrites(t *testing.T) {
	research, pacs := t.TempDir(), t.TempDir()
	cfg := dicomConfig(t)
	cfg.DeidentifyKey = bytes.Repeat([]byte{0x24}, 32)
	cfg.File.Peers = []gateway.Peer{
		{Name: "research", DIMSE: &gateway.DIMSEPeer{Host: "127.0.0.1", Port: startStoreSCP(t, research), CalledAE: "PACS"}, Deidentify: &gateway.DeidentifyRule{Profile: gateway.ProfileBasic}},
		{Name: "pacs", DIMSE: &gateway.DIMSEPeer{Host: "127.0.0.1", Port: startStoreSCP(t, pacs), CalledAE: "PACS"}, Coerce: &gateway.CoerceRule{To: gateway.CoerceNational}},
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	m := MustRunMain(t, cfg, nil)
	base := "http://" + m.Addr
	probe := synth.ProfileProbe(synth.UID(86, 1), synth.UID(86, 1, 1), 2)
	coerced := synth.Instance{PatientName: "Doe^Jane", PatientID: "H123456", IssuerOfPatientID: "HAMPSHIRE",
		OtherPatientIDs:  []synth.OtherPatientID{{ID: testNHSNumber, Issuer: "NHS"}},
		StudyInstanceUID: synth.UID(86, 2), SeriesInstanceUID: synth.UID(86, 2, 1), SOPInstanceUID: synth.UID(86, 2, 1, 1), Rows: 4, Columns: 4}
	for _, in := range append(probe, coerced) {
		var b bytes.Buffer
		if _, err := in.WriteTo(&b); err != nil {
			t.Fatal(err)
		}
		storeLocal(t, m, &b)
	}
	for _, tt := range []struct{ study, peer string }{{probe[0].StudyInstanceUID, "research"}, {coerced.StudyInstanceUID, "pacs"}} {
		if tr := waitTransfer(t, base, createTransfer(t, base, tt.study, tt.peer)); tr["state"] != "completed" {
			t.Fatalf("transfer to %s: %v", tt.peer, tr)
		}
	}
	mapper, err := gateway.NewDeidentifier(nil, cfg.DeidentifyKey, nil)
	if err != nil {
		t.Fatal(err)
	}
	entries, _ := os.ReadDir(research)
	if len(entries) != len(probe) {
		t.Fatalf("research peer received %d files, want %d", len(entries), len(probe))
	}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(research, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		h, err := dicomcodec.ParseHeader(bytes.NewReader(b), dicomcodec.HeaderLimits{})
		if err != nil {
			t.Fatal(err)
		}
		if !slices.ContainsFunc(probe, func(in synth.Instance) bool { return mapper.MapUID("research", in.SOPInstanceUID) == h.SOPInstanceUID }) ||
			h.StudyInstanceUID != mapper.MapUID("research", probe[0].StudyInstanceUID) || bytes.Contains(b, []byte("PHI")) || bytes.Contains(b, []byte("PROBE")) {
			t.Errorf("%s at the research peer: SOP %s study %s, probe values left %v", e.Name(), h.SOPInstanceUID, h.StudyInstanceUID, bytes.Contains(b, []byte("PHI")))
		}
	}
	entries, _ = os.ReadDir(pacs)
	if len(entries) != 1 {
		t.Fatalf("pacs received %d files, want 1", len(entries))
	}
	b, err := os.ReadFile(filepath.Join(pacs, entries[0].Name()))
	if err != nil {
		t.Fatal(err)
	}
	h, err := dicomcodec.ParseHeader(bytes.NewReader(b), dicomcodec.HeaderLimits{})
	if err != nil {
		t.Fatal(err)
	}
	if h.Dataset.String(dicomcodec.TagPatientID) != testNHSNumber || h.SOPInstanceUID != coerced.SOPInstanceUID {
		t.Errorf("coerced instance at pacs: Patient ID %q, SOP %s", h.Dataset.String(dicomcodec.TagPatientID), h.SOPInstanceUID)
	}
}
