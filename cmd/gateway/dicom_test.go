package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/suyashkumar/dicom"

	"github.com/dicom-gateway/gateway/client"
	"github.com/dicom-gateway/gateway/dimse"
	"github.com/dicom-gateway/gateway/gateway"
	"github.com/dicom-gateway/gateway/internal/cluster"
	"github.com/dicom-gateway/gateway/internal/orthanctest"
	"github.com/dicom-gateway/gateway/internal/syncbuf"
	"github.com/dicom-gateway/gateway/internal/synth"
	"github.com/dicom-gateway/gateway/internal/testcorpus"
	"github.com/dicom-gateway/gateway/internal/testpki"
)

// dicomConfig is testConfig with the DIMSE listener on a free loopback port.
func dicomConfig(t testing.TB, extra ...string) *Config {
	t.Helper()
	args := append([]string{"--listen", "127.0.0.1:0", "--data-dir", t.TempDir(), "--name", "hampshire",
		"--dicom-listen", "127.0.0.1:0", "--dicom-ae-title", "HAMPSHIRE"}, extra...)
	cfg, err := parseServeConfig(args, func(string) string { return "" }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// freePort returns a loopback TCP port free a moment ago, for a listener
// that must be named before it starts (a peer's port in a configuration).
func freePort(t *testing.T) int {
	t.Helper()
	port, err := cluster.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	return port
}

// needTool returns the path of a DCMTK tool, skipping the test when it is
// missing (failing it under CI=true).
func needTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s missing: apt-get install dcmtk", name)
		}
		t.Skipf("%s missing: apt-get install dcmtk", name)
	}
	return p
}

func dcmtk(t *testing.T, name string, args ...string) string {
	t.Helper()
	p := needTool(t, name)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, p, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
	return string(out)
}

func datasetSum(t *testing.T, r io.Reader) string {
	t.Helper()
	ds, err := dimse.SkipFileMeta(r)
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	if _, err := io.Copy(h, ds); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func fileDatasetSum(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	return datasetSum(t, f)
}

// wadoInstance retrieves one instance with WADO-RS and returns its Part 10
// bytes.
func wadoInstance(t *testing.T, base, study, series, sop string) []byte {
	t.Helper()
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, base+"/dicomweb/studies/"+study+"/series/"+series+"/instances/"+sop, nil)
	req.Header.Set("Accept", `multipart/related; type="application/dicom"; transfer-syntax=*`)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("WADO-RS %s: %d", sop, resp.StatusCode)
	}
	_, params, err := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if err != nil {
		t.Fatal(err)
	}
	part, err := multipart.NewReader(resp.Body, params["boundary"]).NextPart()
	if err != nil {
		t.Fatal(err)
	}
	data, err := io.ReadAll(part)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// storeLocal stores one instance through the gateway's store service, as
// STOW-RS would.
func storeLocal(t *testing.T, m *Main, r io.Reader) {
	t.Helper()
	b, err := m.Services.Store.Begin(t.Context(), gateway.StoreRequest{Caller: gateway.Caller{Principal: gateway.Principal{Name: "test"}, Route: "test"}})
	if err != nil {
		t.Fatal(err)
	}
	_, failure, err := b.Store(1, r, "", "")
	if err != nil || failure != nil {
		t.Fatalf("store: %v %+v", err, failure)
	}
	if err := b.Close(b.Wait(), http.StatusOK, nil); err != nil {
		t.Fatal(err)
	}
}

// TestDicomListenStoreSCU: storescu sends corpus files to gateway serve
// --dicom-listen; QIDO-RS finds the study, WADO-RS returns the dataset
// byte for byte with the calling AE title as Source AE, and the audit log
// names the calling AE title as the actor.
func TestDicomListenStoreSCU(t *testing.T) {
	m := MustRunMain(t, dicomConfig(t), nil)
	base := "http://" + m.Addr
	_, port, _ := net.SplitHostPort(m.DicomAddr)
	dcmtk(t, "echoscu", "-aet", "MODALITY", "-aec", "HAMPSHIRE", "127.0.0.1", port)
	src := testcorpus.Dir(t)
	file := filepath.Join(src, "ct_explicit_le_ge_small.dcm")
	dcmtk(t, "storescu", "-aet", "MODALITY", "-aec", "HAMPSHIRE", "-R", "127.0.0.1", port, file)

	const (
		study  = "1.3.6.1.4.1.5962.1.2.1.20040119072730.12322"
		series = "1.3.6.1.4.1.5962.1.3.1.1.20040119072730.12322"
		sop    = "1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322"
	)
	code, body := get(t, base+"/dicomweb/studies?StudyInstanceUID="+study)
	if code != http.StatusOK || !strings.Contains(body, study) {
		t.Fatalf("QIDO-RS: %d %s", code, body)
	}
	data := wadoInstance(t, base, study, series, sop)
	// DCMTK re-serialises what it sends (lengths, padding), so the
	// reference is the dataset as it crossed the wire, kept bit for bit by
	// storescp +B.
	wire := t.TempDir()
	scp := startStoreSCP(t, wire)
	dcmtk(t, "storescu", "-aec", "PACS", "-R", "127.0.0.1", strconv.Itoa(scp), file)
	sent, _ := os.ReadDir(wire)
	if len(sent) != 1 {
		t.Fatalf("storescp kept %d files", len(sent))
	}
	if got, want := datasetSum(t, bytes.NewReader(data)), fileDatasetSum(t, filepath.Join(wire, sent[0].Name())); got != want {
		t.Errorf("WADO-RS dataset SHA-256 %s, sent %s", got, want)
	}
	if !bytes.Contains(data[:512], []byte("MODALITY")) {
		t.Error("File Meta Information does not carry the calling AE title as Source AE")
	}
	// The association is audited once the gateway has seen storescu close
	// it, which may be just after storescu exits.
	for range 250 {
		if code, body = get(t, base+"/api/v1/audit?actor=MODALITY&action=store"); strings.Contains(body, study) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if code != http.StatusOK || !strings.Contains(body, `"route":"DIMSE C-STORE HAMPSHIRE"`) || !strings.Contains(body, study) || !strings.Contains(body, `"method":"dimse"`) {
		t.Errorf("audit: %d %s", code, body)
	}
}

// startStoreSCP runs DCMTK's storescp (+B: datasets written exactly as
// received) on a free port and returns the port.
func startStoreSCP(t *testing.T, dir string) int {
	t.Helper()
	port := freePort(t)
	startStoreSCPOn(t, dir, port)
	return port
}

// startStoreSCPOn is startStoreSCP on a given port, with extra storescp
// options.
func startStoreSCPOn(t *testing.T, dir string, port int, extra ...string) {
	t.Helper()
	p, err := exec.LookPath("storescp")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("storescp missing: apt-get install dcmtk")
		}
		t.Skip("storescp missing: apt-get install dcmtk")
	}
	cmd := exec.Command(p, append(append([]string{"+B", "+xa", "-aet", "PACS", "-od", dir}, extra...), strconv.Itoa(port))...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	for i := 0; ; i++ {
		cl, err := dimse.Dial(t.Context(), "127.0.0.1:"+strconv.Itoa(port), dimse.DialOptions{CallingAE: "PROBE", CalledAE: "PACS",
			Contexts: []dimse.PresentationContext{{AbstractSyntax: dimse.VerificationSOPClass, TransferSyntax: []string{dimse.ImplicitVRLittleEndian}}}})
		if err == nil {
			_ = cl.Release()
			return
		}
		if i == 200 {
			t.Fatalf("storescp not answering: %v", err)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// waitTransfer polls the admin API until the transfer ends.
func waitTransfer(t *testing.T, base, id string) map[string]any {
	t.Helper()
	for range 600 {
		_, body := get(t, base+"/api/v1/transfers/"+id)
		var tr map[string]any
		if err := json.Unmarshal([]byte(body), &tr); err != nil {
			t.Fatalf("transfer %s: %s", id, body)
		}
		switch tr["state"] {
		case "completed", "failed", "cancelled":
			return tr
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("transfer %s did not end", id)
	return nil
}

func createTransfer(t *testing.T, base, study, dest string) string {
	t.Helper()
	resp, err := http.Post(base+"/api/v1/transfers", "application/json",
		strings.NewReader(`{"study_uid":"`+study+`","destination":"`+dest+`"}`))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var tr struct{ ID string }
	if err := json.NewDecoder(resp.Body).Decode(&tr); err != nil || resp.StatusCode != http.StatusAccepted {
		t.Fatalf("create transfer: %d %v", resp.StatusCode, err)
	}
	return tr.ID
}

// TestDicomTransferToStoreSCP: a peer with dimse: receives a study through
// the transfer queue by C-STORE, each dataset arriving byte for byte. The
// peer is down at first: the attempt fails as temporary and the queue
// retries it once the peer is up.
func TestDicomTransferToStoreSCP(t *testing.T) {
	out := t.TempDir()
	port := freePort(t)
	cfg := dicomConfig(t)
	cfg.File.Peers = []gateway.Peer{{Name: "pacs", DIMSE: &gateway.DIMSEPeer{Host: "127.0.0.1", Port: port, CalledAE: "PACS"}}}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	m := MustRunMain(t, cfg, nil)
	base := "http://" + m.Addr
	insts := synth.Study(synth.StudySpec{Seed: 1901, InstancesPerSeries: 5})
	want := map[string]bool{}
	for _, in := range insts {
		var b bytes.Buffer
		in.WriteTo(&b)
		want[datasetSum(t, bytes.NewReader(b.Bytes()))] = true
		storeLocal(t, m, &b)
	}
	id := createTransfer(t, base, insts[0].StudyInstanceUID, "pacs")
	for i := 0; ; i++ {
		_, body := get(t, base+"/api/v1/transfers/"+id)
		var tr map[string]any
		json.Unmarshal([]byte(body), &tr)
		if tr["last_error"] != nil && tr["last_error"] != "" {
			if tr["state"] != "queued" && tr["state"] != "running" {
				t.Fatalf("peer down: transfer %v, want it queued for a retry", tr)
			}
			break
		}
		if i == 600 {
			t.Fatalf("no failed attempt recorded while the peer is down: %v", tr)
		}
		time.Sleep(20 * time.Millisecond)
	}
	startStoreSCPOn(t, out, port)
	tr := waitTransfer(t, base, id)
	if tr["state"] != "completed" || tr["instances_sent"] != float64(len(insts)) {
		t.Fatalf("transfer %v", tr)
	}
	entries, _ := os.ReadDir(out)
	if len(entries) != len(insts) {
		t.Fatalf("storescp received %d files, want %d", len(entries), len(insts))
	}
	for _, e := range entries {
		if !want[fileDatasetSum(t, filepath.Join(out, e.Name()))] {
			t.Errorf("%s differs from every dataset sent", e.Name())
		}
	}
}

// TestDicomOrthancBothWays: Orthanc sends a study to the gateway by C-STORE
// (REST /modalities/{name}/store), and the gateway delivers another study
// to Orthanc by C-STORE through a transfer; each side then holds the
// dataset byte for byte.
func TestDicomOrthancBothWays(t *testing.T) {
	gwPort := freePort(t)
	o := orthanctest.Start(t, orthanctest.Options{DICOM: &orthanctest.DICOMOptions{
		AETitle:    "ORTHANC",
		Modalities: map[string]orthanctest.Modality{"hampshire": {AETitle: "HAMPSHIRE", Host: "127.0.0.1", Port: gwPort}},
	}})
	cfg := dicomConfig(t)
	cfg.DicomListen = "127.0.0.1:" + strconv.Itoa(gwPort)
	cfg.File.Peers = []gateway.Peer{
		{Name: "orthanc", DIMSE: &gateway.DIMSEPeer{Host: "127.0.0.1", Port: o.DICOMPort, CalledAE: "ORTHANC"}},
		{Name: "orthanc-commit", DIMSE: &gateway.DIMSEPeer{Host: "127.0.0.1", Port: o.DICOMPort, CalledAE: "ORTHANC", StorageCommitment: true, CommitmentTimeout: time.Minute}},
	}
	m := MustRunMain(t, cfg, nil)
	base := "http://" + m.Addr

	// Orthanc → gateway.
	in := synth.Study(synth.StudySpec{Seed: 1902})[0]
	var b bytes.Buffer
	in.WriteTo(&b)
	id := o.Upload(t, b.Bytes())
	var job map[string]any
	if status := o.JSON(t, http.MethodPost, "/modalities/hampshire/store", map[string]any{"Resources": []string{id}, "Synchronous": true}, &job); status != http.StatusOK {
		t.Fatalf("Orthanc C-STORE to the gateway: %d %v", status, job)
	}
	got := wadoInstance(t, base, in.StudyInstanceUID, in.SeriesInstanceUID, in.SOPInstanceUID)
	if datasetSum(t, bytes.NewReader(got)) != datasetSum(t, bytes.NewReader(o.File(t, in.SOPInstanceUID))) {
		t.Error("the gateway's dataset differs from Orthanc's")
	}
	if !bytes.Contains(got[:512], []byte("ORTHANC")) {
		t.Error("Source AE is not Orthanc's calling AE title")
	}

	// Gateway → Orthanc.
	out := synth.Study(synth.StudySpec{Seed: 1903, InstancesPerSeries: 3})
	for _, x := range out {
		var b bytes.Buffer
		x.WriteTo(&b)
		storeLocal(t, m, &b)
	}
	tr := waitTransfer(t, base, createTransfer(t, base, out[0].StudyInstanceUID, "orthanc"))
	if tr["state"] != "completed" {
		t.Fatalf("transfer to Orthanc: %v", tr)
	}
	for _, x := range out {
		var b bytes.Buffer
		x.WriteTo(&b)
		stored := o.File(t, x.SOPInstanceUID)
		if stored == nil {
			t.Fatalf("Orthanc does not hold %s", x.SOPInstanceUID)
		}
		if datasetSum(t, bytes.NewReader(stored)) != datasetSum(t, &b) {
			t.Errorf("Orthanc's dataset of %s differs from the one sent", x.SOPInstanceUID)
		}
	}

	// Gateway → Orthanc with storage commitment: Orthanc reports on an
	// association of its own to --dicom-listen; the transfer completes
	// with every instance committed.
	committed := synth.Study(synth.StudySpec{Seed: 1906, InstancesPerSeries: 3})
	for _, x := range committed {
		storeLocal(t, m, x.Reader())
	}
	tr = waitTransfer(t, base, createTransfer(t, base, committed[0].StudyInstanceUID, "orthanc-commit"))
	if tr["state"] != "completed" || !strings.HasPrefix(fmt.Sprint(tr["verification"]), "storage commitment: 3/3 instances committed") {
		t.Fatalf("transfer with storage commitment: %v", tr)
	}
}

// TestDicomConfig: the dicom: section and a dimse: peer parse from the
// YAML of DESIGN.md; mistakes are refused with the key to fix.
func TestDicomConfig(t *testing.T) {
	dir := t.TempDir()
	write := func(body string) string {
		p := filepath.Join(dir, strconv.Itoa(len(body))+".yaml")
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := write(`
dicom:
  allow:
    - {ae_title: PACS1, hosts: [10.0.0.7, 10.1.0.0/16], roles: [store]}
  max_associations: 8
  max_pdu_length: 65536
peers:
  - name: pacs
    dimse: {host: 10.0.0.9, port: 104, called_ae: PACS, storage_commitment: true, commitment_timeout: 90s}
`)
	cfg, err := parseServeConfig([]string{"--config", good, "--dicom-listen", "0.0.0.0:11112", "--dicom-ae-title", "GATEWAY"}, func(string) string { return "" }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if a := cfg.File.Dicom.Allow; len(a) != 1 || a[0].AETitle != "PACS1" || len(a[0].Hosts) != 2 || a[0].Roles[0] != gateway.RoleStore {
		t.Errorf("dicom.allow = %+v", a)
	}
	if d := cfg.File.Peers[0].DIMSE; d == nil || d.Host != "10.0.0.9" || d.Port != 104 || d.CalledAE != "PACS" || !d.StorageCommitment || d.CommitmentTimeout != 90*time.Second {
		t.Errorf("peer dimse = %+v", d)
	}
	// GATEWAY_DICOM_LISTEN is read like every other flag.
	cfg, err = parseServeConfig(nil, func(k string) string {
		if k == "GATEWAY_DICOM_LISTEN" {
			return "127.0.0.1:11112"
		}
		return ""
	}, io.Discard)
	if err != nil || cfg.DicomListen != "127.0.0.1:11112" || cfg.DicomAETitle != "GATEWAY" {
		t.Errorf("GATEWAY_DICOM_LISTEN: %v %+v", err, cfg)
	}
	for name, c := range map[string]struct {
		yaml string
		args []string
	}{
		"other machines without an allow list": {"", []string{"--dicom-listen", "0.0.0.0:11112"}},
		"AE title too long":                    {"", []string{"--dicom-ae-title", "AN_AE_TITLE_OVER_16"}},
		"host name in hosts":                   {"dicom:\n  allow:\n    - {ae_title: A, hosts: [pacs.example.org], roles: [store]}\n", nil},
		"unknown role":                         {"dicom:\n  allow:\n    - {ae_title: A, hosts: [10.0.0.1], roles: [push]}\n", nil},
		"no hosts":                             {"dicom:\n  allow:\n    - {ae_title: A, roles: [store]}\n", nil},
		"dimse peer without port":              {"peers:\n  - name: p\n    dimse: {host: h, called_ae: P}\n", nil},
		"dimse peer with a url too":            {"peers:\n  - name: p\n    url: http://127.0.0.1:1/dicomweb\n    dimse: {host: h, port: 104, called_ae: P}\n", nil},
		"tiny max_pdu_length":                  {"dicom:\n  max_pdu_length: 100\n", nil},
		"TLS port without certificates":        {"", []string{"--dicom-tls-listen", "127.0.0.1:2762"}},
		"a certificate without the TLS port":   {"dicom:\n  allow:\n    - {ae_title: A, hosts: [10.0.0.1], roles: [store], certificate: {subject_cn: a}}\n", []string{"--dicom-listen", "0.0.0.0:11112"}},
		"a certificate naming two things":      {"dicom:\n  allow:\n    - {ae_title: A, hosts: [10.0.0.1], roles: [store], certificate: {subject_cn: a, san_dns: a}}\n", nil},
		"insecure_skip_verify on a dimse peer": {"peers:\n  - name: p\n    dimse: {host: h, port: 104, called_ae: P, tls: true}\n    tls: {insecure_skip_verify: true}\n", nil},
		"tls settings without dimse.tls":       {"peers:\n  - name: p\n    dimse: {host: h, port: 104, called_ae: P}\n    tls: {ca_file: /etc/ca.pem}\n", nil},
	} {
		args := c.args
		if c.yaml != "" {
			args = append(args, "--config", write(c.yaml))
		}
		if _, err := parseServeConfig(args, func(string) string { return "" }, io.Discard); err == nil {
			t.Errorf("%s: accepted, want an error", name)
		}
	}
}

// findResponses runs findscu with keys against the gateway, extracting
// each match to a file, and returns the matches as tag → value.
func findResponses(t *testing.T, port string, keys ...string) []map[string]string {
	t.Helper()
	dir := t.TempDir()
	args := []string{"-S", "-aet", "VIEWER", "-aec", "HAMPSHIRE", "-X", "-od", dir}
	for _, k := range keys {
		args = append(args, "-k", k)
	}
	dcmtk(t, "findscu", append(args, "127.0.0.1", port)...)
	entries, _ := os.ReadDir(dir)
	var out []map[string]string
	for _, e := range entries {
		ds, err := dicom.ParseFile(filepath.Join(dir, e.Name()), nil)
		if err != nil {
			t.Fatal(err)
		}
		m := map[string]string{}
		for _, el := range ds.Elements {
			if el.Tag.Group == 0x0002 {
				continue
			}
			m[fmt.Sprintf("%04X%04X", el.Tag.Group, el.Tag.Element)] = strings.Trim(fmt.Sprint(el.Value.GetValue()), "[]")
		}
		out = append(out, m)
	}
	return out
}

// TestDicomFindSCU: findscu queries the index at STUDY, SERIES and IMAGE
// level with the matching rules QIDO-RS applies, and the query is audited
// with the calling AE title as actor and without the key values.
func TestDicomFindSCU(t *testing.T) {
	m := MustRunMain(t, dicomConfig(t), nil)
	_, port, _ := net.SplitHostPort(m.DicomAddr)
	a := synth.Study(synth.StudySpec{Seed: 1904, Series: 2, InstancesPerSeries: 2})
	b := synth.Study(synth.StudySpec{Seed: 1905, Patient: 1})
	for _, in := range append(a, b...) {
		storeLocal(t, m, in.Reader())
	}
	studies := findResponses(t, port, "QueryRetrieveLevel=STUDY", "PatientID="+a[0].PatientID, "StudyInstanceUID", "PatientName", "NumberOfStudyRelatedInstances")
	if len(studies) != 1 || studies[0]["0020000D"] != a[0].StudyInstanceUID || studies[0]["00201208"] != "4" || studies[0]["00100010"] == "" {
		t.Fatalf("study level by PatientID: %v", studies)
	}
	all := findResponses(t, port, "QueryRetrieveLevel=STUDY", "StudyInstanceUID")
	if len(all) != 2 {
		t.Errorf("universal study query: %d matches, want 2", len(all))
	}
	series := findResponses(t, port, "QueryRetrieveLevel=SERIES", "StudyInstanceUID="+a[0].StudyInstanceUID, "SeriesInstanceUID", "Modality")
	if len(series) != 2 || series[0]["00080060"] != "CT" {
		t.Errorf("series level: %v", series)
	}
	images := findResponses(t, port, "QueryRetrieveLevel=IMAGE", "StudyInstanceUID="+a[0].StudyInstanceUID, "SeriesInstanceUID="+a[0].SeriesInstanceUID, "SOPInstanceUID")
	if len(images) != 2 {
		t.Errorf("image level: %v", images)
	}
	// A SERIES query names its study (hierarchical query): without one it
	// is refused, not answered with the series of every study.
	out := dcmtk(t, "findscu", "-v", "-S", "-aet", "VIEWER", "-aec", "HAMPSHIRE", "-k", "QueryRetrieveLevel=SERIES", "-k", "Modality=CT", "-k", "SeriesInstanceUID", "127.0.0.1", port)
	if !strings.Contains(out, "Final Find Response (Error: DataSetDoesNotMatchSOPClass)") || strings.Contains(out, "Find Response: 1") {
		t.Errorf("SERIES query without a study: want A900 and no match, findscu said:\n%s", out)
	}
	wild := findResponses(t, port, "QueryRetrieveLevel=STUDY", "PatientName="+strings.SplitN(a[0].PatientName, "^", 2)[0][:3]+"*", "StudyInstanceUID")
	if len(wild) != 1 || wild[0]["0020000D"] != a[0].StudyInstanceUID {
		t.Errorf("wildcard on PatientName: %v", wild)
	}
	_, body := get(t, "http://"+m.Addr+"/api/v1/audit?actor=VIEWER&action=query")
	if !strings.Contains(body, `"route":"DIMSE C-FIND HAMPSHIRE"`) || strings.Contains(body, a[0].PatientName) || !strings.Contains(body, `"00100020"`) {
		t.Errorf("audit of C-FIND: %s", body)
	}
}

// TestDicomMoveRefusals: C-MOVE sends stored bytes, so a destination peer
// set up to receive de-identified (or coerced) instances is refused (the
// instances would leave identifiable), and a caller with role read alone
// may move only to itself (its own AE title, or a peer at its own
// address): pushing a study to another system needs role transfer, as
// creating a transfer over HTTP does. Before, both moves were carried out.
func TestDicomMoveRefusals(t *testing.T) {
	movescu := needTool(t, "movescu")
	keyFile := filepath.Join(t.TempDir(), "deid.key")
	if err := os.WriteFile(keyFile, []byte(strings.Repeat("5a", 32)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	key, err := loadDeidentifyKey(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	cfg := dicomConfig(t)
	cfg.DeidentifyKey = key
	cfg.File.Dicom.Allow = []dimse.AllowRule{{AETitle: "VIEWER", Hosts: []string{"127.0.0.1"}, Roles: []gateway.Role{gateway.RoleRead}}}
	cfg.File.Peers = []gateway.Peer{
		{Name: "research", Deidentify: &gateway.DeidentifyRule{Profile: "basic"}, DIMSE: &gateway.DIMSEPeer{Host: "127.0.0.1", Port: 1, CalledAE: "RESEARCH"}},
		{Name: "surrey", DIMSE: &gateway.DIMSEPeer{Host: "127.0.0.2", Port: 1, CalledAE: "SURREY"}},
		{Name: "viewer", DIMSE: &gateway.DIMSEPeer{Host: "127.0.0.2", Port: 1, CalledAE: "VIEWER"}},
		{Name: "viewer-store", DIMSE: &gateway.DIMSEPeer{Host: "127.0.0.1", Port: 1, CalledAE: "VIEWER_STORE"}},
	}
	m := MustRunMain(t, cfg, nil)
	_, port, _ := net.SplitHostPort(m.DicomAddr)
	in := synth.Study(synth.StudySpec{Seed: 4242})[0]
	var b bytes.Buffer
	in.WriteTo(&b)
	storeLocal(t, m, &b)
	move := func(calling, dest string) string {
		out, _ := exec.CommandContext(t.Context(), movescu, "-S", "-d", "-aet", calling, "-aec", "HAMPSHIRE", "-aem", dest,
			"-k", "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID="+in.StudyInstanceUID, "127.0.0.1", port).CombinedOutput()
		return strings.ToLower(string(out))
	}
	// PACS1 is admitted from loopback with every role (no auth configured).
	if out := move("PACS1", "RESEARCH"); !strings.Contains(out, "unabletoprocess") || !strings.Contains(out, "de-identified") {
		t.Errorf("move to the de-identifying peer: want Unable to process (C001) naming de-identification:\n%s", out)
	}
	if out := move("VIEWER", "SURREY"); !strings.Contains(out, "unabletoprocess") || !strings.Contains(out, "needs role transfer") {
		t.Errorf("role read moving to another AE: want Unable to process (C001) naming role transfer:\n%s", out)
	}
	// Role read to itself is a retrieve: carried out (the sub-operation
	// fails, nobody listens on port 1), to its own AE title or to another
	// AE title at its own address.
	// The final response of the failed move names the instance in its
	// Failed SOP Instance UID List (PS3.4 C.4.2.1.3.2).
	for _, dest := range []string{"VIEWER", "VIEWER_STORE"} {
		if out := move("VIEWER", dest); strings.Contains(out, "unabletoprocess") || !strings.Contains(out, "final move response") {
			t.Errorf("role read moving to itself (%s) was refused:\n%s", dest, out)
		} else if !strings.Contains(out, "(0008,0058) ui ["+in.SOPInstanceUID+"]") {
			t.Errorf("the failed move to %s does not name the instance in its Failed SOP Instance UID List:\n%s", dest, out)
		}
	}
}

// TestDicomMoveCountsWarnings: a sub-operation the destination stores with
// a warning status counts as a warning, not as completed, and the final
// response is B000 (one or more failures or warnings), without a Failed
// SOP Instance UID List since nothing failed. The destination is a second
// gateway: it answers B007 for an instance whose UID has a leading zero
// component, which it stores with a warning.
func TestDicomMoveCountsWarnings(t *testing.T) {
	movescu := needTool(t, "movescu")
	surreyPort := freePort(t)
	MustRunMain(t, dicomConfig(t, "--name", "surrey", "--dicom-ae-title", "SURREY", "--dicom-listen", "127.0.0.1:"+strconv.Itoa(surreyPort)), nil)
	cfg := dicomConfig(t)
	cfg.File.Peers = []gateway.Peer{{Name: "surrey", DIMSE: &gateway.DIMSEPeer{Host: "127.0.0.1", Port: surreyPort, CalledAE: "SURREY"}}}
	m := MustRunMain(t, cfg, nil)
	_, port, _ := net.SplitHostPort(m.DicomAddr)
	in := synth.Study(synth.StudySpec{Seed: 4243})[0]
	in.SOPInstanceUID += ".01"
	var b bytes.Buffer
	in.WriteTo(&b)
	storeLocal(t, m, &b)
	out, _ := exec.CommandContext(t.Context(), movescu, "-S", "-d", "-aet", "PACS1", "-aec", "HAMPSHIRE", "-aem", "SURREY",
		"-k", "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID="+in.StudyInstanceUID, "127.0.0.1", port).CombinedOutput()
	final := strings.ToLower(string(out))
	if i := strings.LastIndex(final, "final move response"); i >= 0 {
		final = final[i:]
	}
	for _, want := range []string{"0xb000", "completed suboperations       : 0", "failed suboperations          : 0", "warning suboperations         : 1"} {
		if !strings.Contains(final, want) {
			t.Errorf("final move response lacks %q:\n%s", want, final)
		}
	}
	if strings.Contains(final, "(0008,0058)") {
		t.Errorf("a Failed SOP Instance UID List without a failure:\n%s", final)
	}
	// A transfer to the same peer keeps the warning on the sent instance.
	hc := client.New("http://" + m.Addr)
	tr, err := cluster.CreateTransfer(t.Context(), hc, in.StudyInstanceUID, "surrey")
	if err != nil {
		t.Fatal(err)
	}
	tr = awaitTransfer(t, hc, tr.ID)
	if tr.State != gateway.StateCompleted || len(tr.Instances) != 1 || !strings.Contains(tr.Instances[0].Reason, "B007") {
		t.Errorf("transfer %s, instances %+v; want completed with the C-STORE warning B007 on the instance", tr.State, tr.Instances)
	}
}

// TestDicomMoveCancel: a C-CANCEL-RQ from the caller (movescu --cancel 1)
// stops a C-MOVE's sub-operations: the final response is Cancel (FE00)
// with the sub-operations not completed counted as remaining, and the
// destination (storescp taking a second per instance) receives only part
// of the study. A caller that hangs up mid-move stops it too. Before,
// both moves sent every instance.
func TestDicomMoveCancel(t *testing.T) {
	movescu := needTool(t, "movescu")
	const n = 8
	dest := t.TempDir()
	destPort := freePort(t)
	startStoreSCPOn(t, dest, destPort, "--sleep-during", "1")
	var logs syncbuf.Buffer
	cfg := dicomConfig(t)
	cfg.File.Peers = []gateway.Peer{{Name: "slow", DIMSE: &gateway.DIMSEPeer{Host: "127.0.0.1", Port: destPort, CalledAE: "PACS"}}}
	m := MustRunMain(t, cfg, &logs)
	_, port, _ := net.SplitHostPort(m.DicomAddr)
	store := func(seed uint64) (study string, sops []string) {
		for _, in := range synth.Study(synth.StudySpec{Seed: seed, InstancesPerSeries: n}) {
			var b bytes.Buffer
			in.WriteTo(&b)
			storeLocal(t, m, &b)
			study, sops = in.StudyInstanceUID, append(sops, in.SOPInstanceUID)
		}
		return study, sops
	}
	// received counts the instances of sops that storescp has written.
	received := func(sops []string) int {
		entries, err := os.ReadDir(dest)
		if err != nil {
			t.Fatal(err)
		}
		got := 0
		for _, e := range entries {
			for _, sop := range sops {
				if strings.HasSuffix(e.Name(), sop) {
					got++
				}
			}
		}
		return got
	}
	moveArgs := func(study string, extra ...string) []string {
		return append(append([]string{"-S", "-d", "-aet", "PACS1", "-aec", "HAMPSHIRE", "-aem", "PACS"}, extra...),
			"-k", "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID="+study, "127.0.0.1", port)
	}

	study, sops := store(4245)
	out, _ := exec.CommandContext(t.Context(), movescu, moveArgs(study, "--cancel", "1")...).CombinedOutput()
	final := strings.ToLower(string(out))
	if i := strings.LastIndex(final, "final move response"); i >= 0 {
		final = final[i:]
	} else {
		t.Fatalf("no final move response:\n%s", out)
	}
	if !strings.Contains(final, "0xfe00") {
		t.Errorf("final response of the cancelled move is not Cancel (FE00):\n%s", final)
	}
	counts := map[string]int{}
	for _, name := range []string{"remaining", "completed", "failed", "warning"} {
		m := regexp.MustCompile(name + ` suboperations\s*:\s*(\d+)`).FindStringSubmatch(final)
		if m == nil {
			t.Fatalf("final response lacks the %s count:\n%s", name, final)
		}
		counts[name], _ = strconv.Atoi(m[1])
	}
	if counts["remaining"] == 0 || counts["remaining"]+counts["completed"]+counts["failed"]+counts["warning"] != n {
		t.Errorf("counts %v: want some remaining, all %d accounted for", counts, n)
	}
	if got := received(sops); got >= n || got < counts["completed"] {
		t.Errorf("the destination received %d of %d instances, %d completed", got, n, counts["completed"])
	}

	// The caller hangs up once the first instance has arrived.
	study, sops = store(4246)
	cmd := exec.CommandContext(t.Context(), movescu, moveArgs(study)...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	for i := 0; received(sops) == 0; i++ {
		if i == 600 {
			t.Fatal("no instance of the second move arrived")
		}
		time.Sleep(50 * time.Millisecond)
	}
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	for i := 0; !strings.Contains(logs.String(), "C-MOVE stopped: the caller went away"); i++ {
		if i == 600 {
			t.Fatalf("the move went on after its caller hung up; log:\n%s", logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if got := received(sops); got >= n {
		t.Errorf("the destination received all %d instances of a move whose caller hung up", got)
	}
}

// TestDicomMoveSCU: movescu retrieves a study and then one series from the
// gateway to itself (its Move Destination is a DIMSE peer of the
// configuration); the instances arrive byte for byte (movescu +B), an
// unknown destination is refused with A801, and the move is audited as a
// retrieve by the calling AE title.
func TestDicomMoveSCU(t *testing.T) {
	movescu := needTool(t, "movescu")
	viewerPort := freePort(t)
	cfg := dicomConfig(t)
	cfg.File.Peers = []gateway.Peer{{Name: "viewer", DIMSE: &gateway.DIMSEPeer{Host: "127.0.0.1", Port: viewerPort, CalledAE: "VIEWER"}}}
	m := MustRunMain(t, cfg, nil)
	_, port, _ := net.SplitHostPort(m.DicomAddr)
	insts := synth.Study(synth.StudySpec{Seed: 1907, Series: 2, InstancesPerSeries: 3})
	want := map[string]string{}
	for _, in := range insts {
		var b bytes.Buffer
		in.WriteTo(&b)
		want[in.SOPInstanceUID] = datasetSum(t, bytes.NewReader(b.Bytes()))
		storeLocal(t, m, &b)
	}
	move := func(keys ...string) []os.DirEntry {
		dir := t.TempDir()
		args := []string{"-S", "+B", "-aet", "VIEWER", "-aec", "HAMPSHIRE", "-aem", "VIEWER", "+P", strconv.Itoa(viewerPort), "-od", dir}
		for _, k := range keys {
			args = append(args, "-k", k)
		}
		// With +B movescu writes into its working directory, not -od.
		cmd := exec.CommandContext(t.Context(), movescu, append(args, "127.0.0.1", port)...)
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("movescu: %v\n%s", err, out)
		}
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			sop := strings.TrimPrefix(strings.TrimSuffix(e.Name(), ".dcm"), "CT.")
			if want[sop] == "" || fileDatasetSum(t, filepath.Join(dir, e.Name())) != want[sop] {
				t.Errorf("received %s: not an instance of the study as stored", e.Name())
			}
		}
		return entries
	}
	if got := move("QueryRetrieveLevel=STUDY", "StudyInstanceUID="+insts[0].StudyInstanceUID); len(got) != len(insts) {
		t.Errorf("study move: %d instances arrived, want %d", len(got), len(insts))
	}
	if got := move("QueryRetrieveLevel=SERIES", "StudyInstanceUID="+insts[0].StudyInstanceUID, "SeriesInstanceUID="+insts[0].SeriesInstanceUID); len(got) != 3 {
		t.Errorf("series move: %d instances arrived, want 3", len(got))
	}
	// An unknown Move Destination is refused with A801.
	out, err := exec.CommandContext(t.Context(), movescu, "-S", "-aet", "VIEWER", "-aec", "HAMPSHIRE", "-aem", "NOBODY", "-k", "QueryRetrieveLevel=STUDY",
		"-k", "StudyInstanceUID="+insts[0].StudyInstanceUID, "127.0.0.1", port).CombinedOutput()
	if !strings.Contains(string(out), "MoveDestinationUnknown") {
		t.Errorf("unknown move destination: %v\n%s", err, out)
	}
	_, body := get(t, "http://"+m.Addr+"/api/v1/audit?actor=VIEWER&action=retrieve")
	if !strings.Contains(body, `"route":"DIMSE C-MOVE HAMPSHIRE"`) || !strings.Contains(body, insts[0].StudyInstanceUID) {
		t.Errorf("audit of C-MOVE: %s", body)
	}
}

// TestDicomTLSListen: gateway serve --dicom-tls-listen takes echoscu and
// storescu over TLS with a client certificate of the configured CA, and
// refuses a caller whose certificate another CA issued, and one whose
// certificate of the right CA does not carry the name the AE title's
// allow rule ties it to.
func TestDicomTLSListen(t *testing.T) {
	ca := testpki.NewCA(t, "centre-ca")
	server := ca.Server(t, "gateway")
	client := ca.Client(t, "MODALITY")
	stranger := testpki.NewCA(t, "other-ca").Client(t, "MODALITY")
	colleague := ca.Client(t, "WORKSTATION")
	cfgFile := filepath.Join(t.TempDir(), "gateway.yaml")
	yaml := "tls: {cert_file: " + server.CertFile + ", key_file: " + server.KeyFile + "}\n" +
		"dicom: {tls_client_ca_file: " + ca.File + ", allow: [{ae_title: MODALITY, hosts: [127.0.0.1], roles: [store], certificate: {subject_cn: MODALITY}}]}\n" +
		"auth: {tokens: [{name: admin, sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08, roles: [admin]}]}\n"
	if err := os.WriteFile(cfgFile, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := dicomConfig(t, "--config", cfgFile, "--dicom-tls-listen", "127.0.0.1:0")
	m := MustRunMain(t, cfg, nil)
	_, port, _ := net.SplitHostPort(m.DicomTLSAddr)
	dcmtk(t, "echoscu", "-aet", "MODALITY", "-aec", "HAMPSHIRE", "+tls", client.KeyFile, client.CertFile, "+cf", ca.File, "127.0.0.1", port)
	file := filepath.Join(testcorpus.Dir(t), "ct_explicit_le_ge_small.dcm")
	dcmtk(t, "storescu", "-aet", "MODALITY", "-aec", "HAMPSHIRE", "-R", "+tls", client.KeyFile, client.CertFile, "+cf", ca.File, "127.0.0.1", port, file)
	if _, err := m.Backends.Index.GetInstance(t.Context(), "1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322"); err != nil {
		t.Errorf("not stored over TLS: %v", err)
	}
	out, err := exec.CommandContext(t.Context(), needTool(t, "echoscu"), "-aet", "MODALITY", "-aec", "HAMPSHIRE",
		"+tls", stranger.KeyFile, stranger.CertFile, "+cf", ca.File, "127.0.0.1", port).CombinedOutput()
	if err == nil {
		t.Errorf("a certificate of another CA was accepted:\n%s", out)
	}
	out, err = exec.CommandContext(t.Context(), needTool(t, "echoscu"), "-aet", "MODALITY", "-aec", "HAMPSHIRE",
		"+tls", colleague.KeyFile, colleague.CertFile, "+cf", ca.File, "127.0.0.1", port).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "Association Rejected") {
		t.Errorf("another certificate of the CA claimed the AE title tied to MODALITY's: %v\n%s", err, out)
	}
}
