package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/dicom-gateway/gateway/client"
	"github.com/dicom-gateway/gateway/gateway"
	"github.com/dicom-gateway/gateway/internal/cluster"
	"github.com/dicom-gateway/gateway/internal/syncbuf"
	"github.com/dicom-gateway/gateway/internal/synth"
)

// centre starts a gateway called name with the --config YAML yml.
func centre(t *testing.T, name, yml string) (*Main, string) {
	t.Helper()
	return centreLogging(t, name, yml, nil)
}

// centreLogging is centre with the gateway's log written to logs.
func centreLogging(t *testing.T, name, yml string, logs io.Writer) (*Main, string) {
	t.Helper()
	cfg := testConfig(t)
	cfg.Name = name
	fc, err := parseFileConfig(strings.NewReader(yml))
	if err != nil {
		t.Fatal(err)
	}
	cfg.File = *fc
	m := MustRunMain(t, cfg, logs)
	return m, "http://" + m.Addr
}

func auditEvents(t *testing.T, root, query string) []gateway.AuditEvent {
	t.Helper()
	code, _, body := fhirGet(t, root+"/api/v1/audit?"+query, "application/json")
	if code != http.StatusOK {
		t.Fatalf("audit %s = %d %s", query, code, body)
	}
	var page struct {
		Events []gateway.AuditEvent `json:"events"`
	}
	if err := json.Unmarshal(body, &page); err != nil {
		t.Fatal(err)
	}
	return page.Events
}

// awaitTransfer polls transfer id at c, through the project client, until it is final (30 s at most).
func awaitTransfer(t *testing.T, c *client.Client, id string) *gateway.Transfer {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	tr, err := c.WaitTransfer(ctx, id, 50*time.Millisecond, nil)
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

// TestTwoCentreIdentityCoercion: hampshire sends a study filed under its
// local patient ID to surrey, whose rule maps it through the NHS number to
// surrey's local ID. Surrey's QIDO finds it under surrey's identity (and
// not hampshire's), the SHA-256 verification checks the coerced bytes
// surrey stored, both audits show the mapping, surrey's FHIR search by NHS
// number returns it and its Endpoint opens it with WADO-RS; a study without
// an NHS number is refused with the reason and nothing of it arrives.
func TestTwoCentreIdentityCoercion(t *testing.T) {
	var logs syncbuf.Buffer // both centres: the identities must not reach it
	defer func() {
		out := logs.String()
		if !strings.Contains(out, "transfer completed") {
			t.Errorf("the log lacks the transfers; the PHI check proves nothing")
		}
		for _, phi := range []string{"H123456", "S777001", testNHSNumber, "H555", "H999"} {
			if i := strings.Index(out, phi); i >= 0 {
				t.Errorf("patient ID %s in the application log: …%s…", phi, out[max(0, i-200):min(len(out), i+100)])
			}
		}
	}()
	_, surrey := centreLogging(t, "surrey", "", &logs)
	lookup := filepath.Join(t.TempDir(), "surrey-ids.csv")
	if err := os.WriteFile(lookup, []byte("# nhs_number,local_id\n"+testNHSNumber+",S777001\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, hampshire := centreLogging(t, "hampshire", `
peers:
  - name: surrey
    url: `+surrey+`/dicomweb
    gateway: true
    coerce: {to: local, issuer: SURREY, lookup_file: `+lookup+`}
routes:
  - name: mr-national
    modality: [MR]
    destinations: [surrey]
    settle_time: 100ms
    coerce: {to: national}
`, &logs)
	withNHS, _, _ := fhirStudies() // H123456 at HAMPSHIRE, NHS number in Other Patient IDs
	noNHS := []synth.Instance{{PatientName: "No^Number", PatientID: "H999", IssuerOfPatientID: "HAMPSHIRE",
		StudyInstanceUID: synth.UID(82, 1), SeriesInstanceUID: synth.UID(82, 1, 1), SOPInstanceUID: synth.UID(82, 1, 1, 1),
		StudyDate: "20240101", Rows: 4, Columns: 4}}
	// One instance encodes its sequence with undefined lengths: the
	// rewriter walks both forms.
	withNHS[3].UndefinedLengthSequences = true
	stowOK(t, hampshire+"/dicomweb", slices.Concat(withNHS, noNHS))
	study := withNHS[0].StudyInstanceUID

	hc := client.New(hampshire)
	send := func(study string) *gateway.Transfer {
		t.Helper()
		tr, err := cluster.CreateTransfer(t.Context(), hc, study, "surrey")
		if err != nil {
			t.Fatal(err)
		}
		return awaitTransfer(t, hc, tr.ID)
	}
	tr := send(study)
	if tr.State != gateway.StateCompleted || tr.InstancesSent != len(withNHS) {
		t.Fatalf("transfer %s: %d/%d sent, last error %q", tr.State, tr.InstancesSent, len(withNHS), tr.LastError)
	}
	if tr.Verified == nil || !*tr.Verified || !strings.Contains(tr.Verification, "sha256: 4/4 identical") {
		t.Errorf("verification %v %q, want the coerced bytes' SHA-256 identical at surrey", tr.Verified, tr.Verification)
	}

	// The coerced bytes are the same on every send: a second transfer of
	// the study finds surrey holding identical instances and completes.
	if again := send(study); again.State != gateway.StateCompleted {
		t.Fatalf("second transfer of the study: %s, %q", again.State, again.LastError)
	}

	// Surrey files the study under its own identity only.
	for _, tt := range []struct {
		query string
		want  int
	}{
		{"PatientID=S777001&IssuerOfPatientID=SURREY", 1},
		{"PatientID=H123456", 0},
		{"IssuerOfPatientID=HAMPSHIRE", 0},
	} {
		code, _, body := fhirGet(t, surrey+"/dicomweb/studies?"+tt.query, "application/dicom+json")
		var got []map[string]any
		if code != http.StatusOK || json.Unmarshal(body, &got) != nil || len(got) != tt.want {
			t.Errorf("surrey QIDO %s = %d, %d studies, want %d", tt.query, code, len(got), tt.want)
		}
	}
	// Pixel data and every other attribute are unchanged: the instances'
	// sizes differ only by the identity values' lengths.
	hSums, err := hc.StudySHA256(t.Context(), study, true)
	if err != nil {
		t.Fatal(err)
	}
	sSums, err := client.New(surrey).StudySHA256(t.Context(), study, true)
	if err != nil {
		t.Fatal(err)
	}
	for sop, h := range hSums {
		if s, ok := sSums[sop]; !ok || s == h {
			t.Errorf("instance %s at surrey: present %v, identical to hampshire's %v; want coerced bytes", sop, ok, s == h)
		}
	}

	// Hampshire's audit records the mapping, before and after.
	var coerced *gateway.AuditEvent
	for _, ev := range auditEvents(t, hampshire, "action="+gateway.ActionTransferCoerced+"&study_uid="+study) {
		coerced = &ev
	}
	if coerced == nil {
		t.Fatal("no transfer.coerced event at hampshire")
	}
	detail, _ := json.Marshal(coerced.Detail)
	for _, s := range []string{`"before_patient_id":"H123456"`, `"before_issuer":"HAMPSHIRE"`, `"after_patient_id":"S777001"`, `"after_issuer":"SURREY"`, `"instances":4`} {
		if !strings.Contains(string(detail), s) {
			t.Errorf("transfer.coerced detail %s lacks %s", detail, s)
		}
	}
	if !slices.Contains(coerced.PatientIDs, "H123456") || !slices.Contains(coerced.PatientIDs, "S777001") {
		t.Errorf("transfer.coerced patient_ids %v, want both identities", coerced.PatientIDs)
	}
	// Surrey's audit records the mapping too, from the Original
	// Attributes Sequence item hampshire added to each instance.
	received := auditEvents(t, surrey, "action="+gateway.ActionIdentityReceived+"&study_uid="+study)
	if len(received) < len(withNHS) {
		t.Errorf("surrey's identity.received events = %d, want one per instance received (%d)", len(received), len(withNHS))
	}
	for _, ev := range received {
		d := ev.Detail
		if d["before_patient_id"] != "H123456" || d["before_issuer"] != "HAMPSHIRE" || d["after_patient_id"] != "S777001" ||
			d["after_issuer"] != "SURREY" || d["modifying_system"] != "hampshire" {
			t.Errorf("identity.received at surrey = %v", d)
		}
	}

	// Surrey's FHIR facade finds it by NHS number, with surrey's subject
	// data, and the Endpoint opens it.
	b := searchBundle(t, surrey+"/fhir/ImagingStudy?patient.identifier="+url.QueryEscape(gateway.NHSNumberSystem+"|"+testNHSNumber))
	studies, endpoint := b.matches(t)
	if len(studies) != 1 || studies[0].ID != study || endpoint != surrey+"/dicomweb" {
		t.Fatalf("surrey FHIR search = %v, endpoint %q", studies, endpoint)
	}
	is := studies[0]
	code, ct, wado := fhirGet(t, endpoint+"/studies/"+is.ID+"/series/"+is.Series[0].UID+"/instances/"+is.Series[0].Instance[0].UID, `multipart/related; type="application/dicom"`)
	if code != http.StatusOK || !strings.HasPrefix(ct, "multipart/related") || !strings.Contains(string(wado), "S777001") || !strings.Contains(string(wado), "COERCE") {
		t.Fatalf("WADO-RS at surrey through the Endpoint = %d %s, want the coerced instance with its Original Attributes item", code, ct)
	}

	// A routing rule's own rule wins over the peer's: MR studies go to
	// surrey under the NHS number itself.
	mr := []synth.Instance{{PatientName: "Mr^Scan", PatientID: "H555", IssuerOfPatientID: "HAMPSHIRE",
		OtherPatientIDs: []synth.OtherPatientID{{ID: testNHSNumber, Issuer: "NHS"}}, Modality: "MR",
		StudyInstanceUID: synth.UID(82, 2), SeriesInstanceUID: synth.UID(82, 2, 1), SOPInstanceUID: synth.UID(82, 2, 1, 1),
		StudyDate: "20240102", Rows: 4, Columns: 4}}
	stowOK(t, hampshire+"/dicomweb", mr)
	var routed []*gateway.Transfer
	for range 100 {
		if routed, err = hc.ListTransfers(t.Context(), client.TransferQuery{StudyUID: mr[0].StudyInstanceUID}); err == nil && len(routed) > 0 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if len(routed) != 1 {
		t.Fatalf("routed transfers of the MR study: %d, want 1", len(routed))
	}
	if tr := awaitTransfer(t, hc, routed[0].ID); tr.State != gateway.StateCompleted {
		t.Fatalf("routed transfer: %s, %q", tr.State, tr.LastError)
	}
	code, _, body2 := fhirGet(t, surrey+"/dicomweb/studies?PatientID="+testNHSNumber+"&IssuerOfPatientID=NHS&StudyInstanceUID="+mr[0].StudyInstanceUID, "application/dicom+json")
	var got []map[string]any
	if code != http.StatusOK || json.Unmarshal(body2, &got) != nil || len(got) != 1 {
		t.Errorf("routed MR study at surrey under the NHS number: %d, %s", code, body2)
	}

	// A study without an NHS number is refused, with the reason, and
	// nothing of it reaches surrey.
	tr = send(noNHS[0].StudyInstanceUID)
	if tr.State != gateway.StateFailed || !strings.Contains(tr.LastError, "carries no NHS number") || tr.InstancesSent != 0 {
		t.Errorf("transfer of a study without NHS number: %s, %d sent, %q; want failed with the reason", tr.State, tr.InstancesSent, tr.LastError)
	}
	code, _, _ = fhirGet(t, surrey+"/dicomweb/studies/"+noNHS[0].StudyInstanceUID+"/metadata", "application/dicom+json")
	if code != http.StatusNotFound {
		t.Errorf("refused study at surrey: metadata = %d, want 404", code)
	}
}

// TestIdentityConflictFlagged: instances of one study arriving under two
// patient identities are all stored, and the study is flagged (never
// silently merged): QIDO returns the flag attribute with a Warning, later
// instances keep it, and the audit names both identities. Deleting the
// misfiled instance over HTTP makes the study its patient's alone again.
func TestIdentityConflictFlagged(t *testing.T) {
	_, root := centre(t, "surrey", "")
	mk := func(i uint64, pid, issuer string) synth.Instance {
		return synth.Instance{PatientName: "Doe^Jane", PatientID: pid, IssuerOfPatientID: issuer, StudyInstanceUID: synth.UID(83, 1),
			SeriesInstanceUID: synth.UID(83, 1, 1), SOPInstanceUID: synth.UID(83, 1, 1, i), InstanceNumber: int(i), Rows: 4, Columns: 4}
	}
	study := synth.UID(83, 1)
	qido := func() (string, []string) {
		t.Helper()
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, root+"/dicomweb/studies?StudyInstanceUID="+study, nil)
		req.Header.Set("Accept", "application/dicom+json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return string(body), resp.Header.Values("Warning")
	}
	for i, in := range []synth.Instance{mk(1, "S100", "SURREY"), mk(2, "H200", "HAMPSHIRE"), mk(3, "S100", "SURREY")} {
		body, ct := stowBody(t, []synth.Instance{in})
		resp, err := http.Post(root+"/dicomweb/studies", ct, body)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("STOW %d = %d", i, resp.StatusCode)
		}
		got, warnings := qido()
		flagged := strings.Contains(got, `"00091001"`) && strings.Contains(got, "IDENTITY CONFLICT")
		warned := slices.ContainsFunc(warnings, func(w string) bool { return strings.Contains(w, "more than one patient identity") })
		if want := i > 0; flagged != want || warned != want {
			t.Errorf("after instance %d: flag %v, warning %v, want %v: %s", i+1, flagged, warned, want, got)
		}
	}
	// Neither patient's search loses the study (the latest instance is
	// S100's, the flag names H200); each finds it with the flag, by QIDO
	// and by FHIR. Before, only the latest instance's patient found it.
	for _, pid := range []string{"S100", "H200"} {
		code, _, found := fhirGet(t, root+"/dicomweb/studies?PatientID="+pid+"&includefield=00091001", "application/dicom+json")
		if code != http.StatusOK || !strings.Contains(string(found), study) || !strings.Contains(string(found), "IDENTITY CONFLICT") {
			t.Errorf("QIDO PatientID=%s = %d: the flagged study is not found with its flag: %.300s", pid, code, found)
		}
		if studies, _ := searchBundle(t, root+"/fhir/ImagingStudy?patient.identifier="+pid).matches(t); len(studies) != 1 {
			t.Errorf("FHIR search by patient %s: %d studies, want the flagged one", pid, len(studies))
		}
	}
	if _, _, found := fhirGet(t, root+"/dicomweb/studies?PatientID=X300", "application/dicom+json"); strings.Contains(string(found), study) {
		t.Errorf("QIDO PatientID=X300 finds the study of two other patients")
	}
	code, _, fhirBody := fhirGet(t, root+"/fhir/ImagingStudy/"+study, "")
	if code != http.StatusOK || !strings.Contains(string(fhirBody), "IDENTITY CONFLICT") {
		t.Errorf("FHIR ImagingStudy of the flagged study = %d, without the conflict note: %.300s", code, fhirBody)
	}
	mustValidFHIR(t, "flagged ImagingStudy", fhirBody)
	var insts []map[string]any
	code, _, body := fhirGet(t, root+"/dicomweb/studies/"+study+"/series/"+synth.UID(83, 1, 1)+"/instances", "application/dicom+json")
	if code != http.StatusOK || json.Unmarshal(body, &insts) != nil || len(insts) != 3 {
		t.Errorf("instances of the flagged study = %d, %d: want all three stored", code, len(insts))
	}
	// Each arrival under an identity other than the study's latest is a
	// conflict: H200 after S100, then S100 after H200.
	evs := auditEvents(t, root, "action="+gateway.ActionIdentityConflict+"&study_uid="+study)
	var pairs []string
	for _, ev := range evs {
		pairs = append(pairs, fmt.Sprint(ev.Detail["held_patient_id"], "→", ev.Detail["incoming_patient_id"]))
		if !slices.Contains(ev.PatientIDs, "H200") || !slices.Contains(ev.PatientIDs, "S100") {
			t.Errorf("identity.conflict names %v, want both patients", ev.PatientIDs)
		}
	}
	slices.Sort(pairs)
	if want := []string{"H200→S100", "S100→H200"}; !slices.Equal(pairs, want) {
		t.Errorf("identity.conflict events %v, want %v", pairs, want)
	}
	// A study-level search that showed the flagged study (one patient's ID,
	// the other's in the flag) is audited under both patients.
	both := 0
	for _, ev := range auditEvents(t, root, "action="+gateway.ActionQuery+"&study_uid="+study) {
		level := strings.ToLower(fmt.Sprint(ev.Detail["level"]))
		if level == "study" && slices.Contains(ev.PatientIDs, "H200") && slices.Contains(ev.PatientIDs, "S100") {
			both++
		}
	}
	if both == 0 {
		t.Errorf("no query event of the flagged study names both patients")
	}
	// The PACS admin deletes the misfiled H200 instance: the study is
	// S100's alone again, unflagged and without a Warning, H200's searches
	// no longer find it, and the change is audited.
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodDelete,
		root+"/dicomweb/studies/"+study+"/series/"+synth.UID(83, 1, 1)+"/instances/"+synth.UID(83, 1, 1, 2), nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusNoContent {
		t.Fatalf("DELETE of the misfiled instance = %d", resp.StatusCode)
	}
	if got, warnings := qido(); strings.Contains(got, "IDENTITY CONFLICT") || len(warnings) > 0 {
		t.Errorf("after the delete: still flagged or warned (%v): %s", warnings, got)
	}
	for pid, want := range map[string]int{"S100": 1, "H200": 0} {
		if studies, _ := searchBundle(t, root+"/fhir/ImagingStudy?patient.identifier="+pid).matches(t); len(studies) != want {
			t.Errorf("after the delete: FHIR search by patient %s: %d studies, want %d", pid, len(studies), want)
		}
		_, _, found := fhirGet(t, root+"/dicomweb/studies?PatientID="+pid, "application/dicom+json")
		if strings.Contains(string(found), study) != (want == 1) {
			t.Errorf("after the delete: QIDO PatientID=%s finds the study: %v, want %v", pid, want != 1, want == 1)
		}
	}
	if evs := auditEvents(t, root, "action="+gateway.ActionIdentityRestated+"&study_uid="+study); len(evs) != 1 || !slices.Contains(evs[0].PatientIDs, "H200") {
		t.Errorf("identity.restated events %+v, want one naming H200", evs)
	}
}

// TestIdentityConflictFoundByNHSNumber: a study held under a patient's NHS
// number (Patient ID, issuer NHS) into which an instance of another
// patient, held under a local number, arrives last is still found by the
// search by the first patient's NHS number (its ImagingStudy carries the
// conflict note: TestIdentityConflictFlagged).
func TestIdentityConflictFoundByNHSNumber(t *testing.T) {
	_, root := centre(t, "surrey", "")
	mk := func(i uint64, pid, issuer string) synth.Instance {
		return synth.Instance{PatientName: "Doe^Jane", PatientID: pid, IssuerOfPatientID: issuer, StudyInstanceUID: synth.UID(85, 1),
			SeriesInstanceUID: synth.UID(85, 1, i), SOPInstanceUID: synth.UID(85, 1, i, 1), Rows: 4, Columns: 4, StudyDate: "20240101"}
	}
	stowOK(t, root+"/dicomweb", []synth.Instance{mk(1, testNHSNumber, "NHS")})
	stowOK(t, root+"/dicomweb", []synth.Instance{mk(2, "SUR900", "SURREY")})
	b := searchBundle(t, root+"/fhir/ImagingStudy?patient.identifier="+url.QueryEscape(gateway.NHSNumberSystem+"|"+testNHSNumber))
	studies, _ := b.matches(t)
	if len(studies) != 1 || !strings.Contains(fmt.Sprint(studies[0]), synth.UID(85, 1)) {
		t.Errorf("search by the first patient's NHS number: %d studies %v, want the flagged study", len(studies), studies)
	}
}

// TestAuditNamesTheNHSNumber: a study held under a local hospital number
// that carries the patient's NHS number in its Other Patient IDs Sequence
// is audited under both, so asking the audit log for the NHS number finds
// its store, its search, its metadata read and its retrieve.
func TestAuditNamesTheNHSNumber(t *testing.T) {
	_, root := centre(t, "surrey", "")
	in := synth.Instance{PatientName: "Doe^Jane", PatientID: "SUR123", IssuerOfPatientID: "SURREY",
		OtherPatientIDs: []synth.OtherPatientID{{ID: testNHSNumber, Issuer: "NHS"}}, StudyInstanceUID: synth.UID(84, 1),
		SeriesInstanceUID: synth.UID(84, 1, 1), SOPInstanceUID: synth.UID(84, 1, 1, 1), InstanceNumber: 1, Rows: 4, Columns: 4}
	stowOK(t, root+"/dicomweb", []synth.Instance{in})
	study := "/dicomweb/studies/" + in.StudyInstanceUID
	for _, read := range []struct{ path, accept string }{
		{"/dicomweb/studies?StudyInstanceUID=" + in.StudyInstanceUID, "application/dicom+json"},
		{study + "/metadata", "application/dicom+json"},
		{study + "/series/" + in.SeriesInstanceUID + "/instances/" + in.SOPInstanceUID, `multipart/related; type="application/dicom"`},
	} {
		if code, _, _ := fhirGet(t, root+read.path, read.accept); code != http.StatusOK {
			t.Fatalf("GET %s = %d", read.path, code)
		}
	}
	found := map[string]bool{} // action, or action and route
	for _, ev := range auditEvents(t, root, "patient_id="+testNHSNumber) {
		if slices.Contains(ev.PatientIDs, "SUR123") {
			found[ev.Action] = true
			found[ev.Action+" "+fmt.Sprint(ev.Detail["route"])] = true
		}
	}
	for _, want := range []string{gateway.ActionStore, gateway.ActionQuery,
		gateway.ActionRetrieve + " /dicomweb/studies/:study/metadata",
		gateway.ActionRetrieve + " /dicomweb/studies/:study/series/:series/instances/:instance"} {
		if !found[want] {
			t.Errorf("no %q event found by the NHS number (found %v)", want, found)
		}
	}
}
