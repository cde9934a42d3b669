package dimse

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/dicom-gateway/gateway/dicomcodec"
	"github.com/dicom-gateway/gateway/gateway"
	"github.com/dicom-gateway/gateway/internal/testcorpus"
)

// storeFiles are corpus files of several storage SOP classes in Explicit
// VR Little Endian (storescu sends them in it).
var storeFiles = []string{
	"ct_explicit_le_ge_small.dcm",
	"cr_agfa_small.dcm",
	"encapsulated_pdf_dcmtk_utf8.dcm",
	"ecg_12lead_mortara.dcm",
	"mr_enhanced_multiframe_small.dcm",
	"dx_fujifilm_for_presentation.dcm",
}

// corpusDir links the named corpus files into a fresh directory (for
// storescu +sd) and returns it.
func corpusDir(t *testing.T, names ...string) string {
	t.Helper()
	src := testcorpus.Dir(t)
	dir := t.TempDir()
	for _, n := range names {
		if err := os.Symlink(filepath.Join(src, n), filepath.Join(dir, n)); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// storedDatasets returns the dataset SHA-256 of every stored blob.
func (ts *testServer) storedDatasets(t *testing.T) []string {
	t.Helper()
	var keys []string
	if err := ts.b.Blobs.Walk(t.Context(), "studies/", func(bi gateway.BlobInfo) error {
		keys = append(keys, bi.Key)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	var sums []string
	for _, k := range keys {
		rc, err := ts.b.Blobs.Get(t.Context(), k, 0, -1)
		if err != nil {
			t.Fatal(err)
		}
		sums = append(sums, datasetSHA256(t, rc))
		rc.Close()
	}
	slices.Sort(sums)
	return sums
}

func TestEchoSCU(t *testing.T) {
	noGoroutineLeak(t)
	ts := startServer(t, nil)
	if out, err := run(t, "echoscu", "-aet", "MODALITY", "-aec", "GATEWAY", "127.0.0.1", ts.port()); err != nil {
		t.Fatalf("echoscu: %v\n%s", err, out)
	}
	// The wrong called AE title is rejected at association time.
	out, err := run(t, "echoscu", "-aet", "MODALITY", "-aec", "NOTME", "127.0.0.1", ts.port())
	if err == nil || !strings.Contains(out, "Called AE Title Not Recogni") {
		t.Errorf("echoscu to a wrong called AE: err %v, output:\n%s", err, out)
	}
}

// TestStoreSCUDirectory sends a directory of several SOP classes with
// storescu +sd, with small and large PDUs both ways, and finds every
// dataset stored byte for byte as it crossed the wire (the File Meta
// Information is the gateway's).
func TestStoreSCUDirectory(t *testing.T) {
	dir := corpusDir(t, storeFiles...)
	for _, pdu := range []uint32{4096, 131072} {
		t.Run(strconv.Itoa(int(pdu)), func(t *testing.T) {
			n := strconv.Itoa(int(pdu))
			opts := []string{"-R", "+sd", "--max-pdu", n, "--max-send-pdu", n}
			want := wireDatasets(t, opts, dir)
			noGoroutineLeak(t)
			ts := startServer(t, func(s *Server) { s.MaxPDULength = pdu })
			ts.storeSCU(t, opts, dir)
			if got := ts.storedDatasets(t); !slices.Equal(got, want) {
				t.Errorf("stored dataset SHA-256s\n%v\nsent\n%v", got, want)
			}
			if len(want) != len(storeFiles) {
				t.Errorf("%d datasets crossed the wire, want %d", len(want), len(storeFiles))
			}
			sop := "1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322" // ct_explicit_le_ge_small
			_, rec := ts.storedDatasetSHA256(t, sop)
			if rec.TransferSyntaxUID != ExplicitVRLittleEndian {
				t.Errorf("transfer syntax %s", rec.TransferSyntaxUID)
			}
			callers, sums := ts.waitAudits(t, 1)
			if len(sums) != 1 || sums[0].Stored != len(storeFiles) || sums[0].Failed != 0 || callers[0].AETitle != "MODALITY" {
				t.Errorf("audit summaries %+v by %+v", sums, callers)
			}
		})
	}
}

// TestStoreSCUCompressed sends RLE and JPEG baseline datasets in their own
// syntax (storescu -xr, -xy) and finds them stored in it, unchanged.
func TestStoreSCUCompressed(t *testing.T) {
	ts := startServer(t, nil)
	var want []string
	for _, c := range []struct{ file, propose string }{
		{"mr_rle_toshiba_small.dcm", "-xr"},
		{"sc_rgb_jpeg_baseline_dcmtk.dcm", "-xy"},
	} {
		path := filepath.Join(corpusDir(t, c.file), c.file)
		opts := []string{"-R", c.propose}
		want = append(want, wireDatasets(t, opts, path)...)
		ts.storeSCU(t, opts, path)
	}
	slices.Sort(want)
	if got := ts.storedDatasets(t); !slices.Equal(got, want) {
		t.Errorf("stored dataset SHA-256s\n%v\nsent\n%v", got, want)
	}
	var syntaxes []string
	for _, rec := range ts.records(t) {
		syntaxes = append(syntaxes, rec.TransferSyntaxUID)
	}
	slices.Sort(syntaxes)
	if want := []string{dicomcodec.TSJPEGBaseline, dicomcodec.TSRLELossless}; !slices.Equal(syntaxes, want) {
		t.Errorf("stored transfer syntaxes %v, want %v", syntaxes, want)
	}
}

// TestSenderToStoreSCP sends instances with the Sender to DCMTK's
// storescp (+B: bit-preserving) and finds each dataset there byte for byte,
// including one stored in Implicit VR LE that storescp accepts as it is.
func TestSenderToStoreSCP(t *testing.T) {
	noGoroutineLeak(t)
	ts := startServer(t, nil)
	ts.storeSCU(t, []string{"-R", "+sd"}, corpusDir(t, storeFiles...))
	ts.storeSCU(t, []string{"-R", "-xi"}, filepath.Join(corpusDir(t, "ct_implicit_le_ge_512.dcm"), "ct_implicit_le_ge_512.dcm"))
	want := ts.storedDatasets(t)
	recs := ts.records(t)

	outDir := t.TempDir()
	port := freePort(t)
	startStoreSCP(t, port, outDir)
	peer := gateway.Peer{Name: "pacs", DIMSE: &gateway.DIMSEPeer{Host: "127.0.0.1", Port: port, CalledAE: "STORESCP"}}
	if err := peer.Validate(); err != nil {
		t.Fatal(err)
	}
	snd := &Sender{Blobs: ts.b.Blobs, CallingAE: "GATEWAY", MaxPDULength: 4096}
	var results []gateway.SendResult
	if err := snd.Send(t.Context(), peer, gateway.SendHeader{}, recs, func(r []gateway.SendResult) { results = append(results, r...) }); err != nil {
		t.Fatal(err)
	}
	for _, r := range results {
		if !r.OK {
			t.Errorf("%s refused: %s", r.SOPInstanceUID, r.Reason)
		}
	}
	if len(results) != len(recs) {
		t.Fatalf("%d results for %d instances", len(results), len(recs))
	}
	if got := dirDatasets(t, outDir); !slices.Equal(got, want) {
		t.Errorf("storescp received datasets\n%v\nsent\n%v", got, want)
	}
}

// TestSenderRefusalsAreClear: a peer that is not listening is a temporary
// failure; a peer that rejects the calling AE a permanent one.
func TestSenderRefusals(t *testing.T) {
	noGoroutineLeak(t)
	ts := startServer(t, func(s *Server) {
		a, err := NewAccess([]AllowRule{{AETitle: "PACS1", Hosts: []string{"10.0.0.7"}, Roles: []gateway.Role{gateway.RoleStore}}}, false)
		if err != nil {
			t.Fatal(err)
		}
		s.Access = a
	})
	rec := &gateway.InstanceRecord{SOPInstanceUID: "1.2.3", SOPClassUID: "1.2.840.10008.5.1.4.1.1.2", TransferSyntaxUID: ExplicitVRLittleEndian,
		StudyInstanceUID: "1.2", SeriesInstanceUID: "1.2.1"}
	snd := &Sender{Blobs: ts.b.Blobs, CallingAE: "UNKNOWN"}
	host, portS, _ := strings.Cut(ts.addr, ":")
	port, _ := strconv.Atoi(portS)
	err := snd.Send(t.Context(), gateway.Peer{Name: "p", DIMSE: &gateway.DIMSEPeer{Host: host, Port: port, CalledAE: "GATEWAY"}}, gateway.SendHeader{}, []*gateway.InstanceRecord{rec}, func([]gateway.SendResult) {})
	se, ok := errors.AsType[*gateway.SendError](err)
	if !ok || se.Temporary || !strings.Contains(err.Error(), "calling AE title not recognised") {
		t.Errorf("rejected association: %v", err)
	}
	closed := freePort(t)
	err = snd.Send(t.Context(), gateway.Peer{Name: "p", DIMSE: &gateway.DIMSEPeer{Host: "127.0.0.1", Port: closed, CalledAE: "GATEWAY"}}, gateway.SendHeader{}, []*gateway.InstanceRecord{rec}, func([]gateway.SendResult) {})
	if se, ok := errors.AsType[*gateway.SendError](err); !ok || !se.Temporary {
		t.Errorf("peer not listening: %v", err)
	}
}

// onlySyntaxes is a Store that accepts only some transfer syntaxes, to play
// a peer that does not take the syntax an instance is stored in.
type onlySyntaxes struct {
	*ingestStore
	allowed []string
}

func (o onlySyntaxes) AcceptsTransferSyntax(uid string) bool { return slices.Contains(o.allowed, uid) }

// TestSenderFallback: an instance stored in Implicit VR LE goes to a peer
// that takes only Explicit VR LE transcoded (the same dataset
// TranscodeToExplicitLE makes); a JPEG instance, which the transcoder
// cannot decode, is refused for good with a reason that says why.
func TestSenderFallback(t *testing.T) {
	noGoroutineLeak(t)
	src := startServer(t, nil)
	implicit := filepath.Join(corpusDir(t, "ct_implicit_le_ge_512.dcm"), "ct_implicit_le_ge_512.dcm")
	jpeg := filepath.Join(corpusDir(t, "sc_rgb_jpeg_baseline_dcmtk.dcm"), "sc_rgb_jpeg_baseline_dcmtk.dcm")
	src.storeSCU(t, []string{"-R", "-xi"}, implicit)
	src.storeSCU(t, []string{"-R", "-xy"}, jpeg)
	recs := src.records(t)
	slices.SortFunc(recs, func(a, b *gateway.InstanceRecord) int {
		return strings.Compare(a.TransferSyntaxUID, b.TransferSyntaxUID)
	})
	if recs[0].TransferSyntaxUID != ImplicitVRLittleEndian || recs[1].TransferSyntaxUID != dicomcodec.TSJPEGBaseline {
		t.Fatalf("stored syntaxes %s, %s", recs[0].TransferSyntaxUID, recs[1].TransferSyntaxUID)
	}

	dst := startServer(t, func(s *Server) {
		s.Store = onlySyntaxes{ingestStore: s.Store.(*ingestStore), allowed: []string{ExplicitVRLittleEndian}}
	})
	host, portS, _ := strings.Cut(dst.addr, ":")
	port, _ := strconv.Atoi(portS)
	peer := gateway.Peer{Name: "explicit-only", DIMSE: &gateway.DIMSEPeer{Host: host, Port: port, CalledAE: "GATEWAY"}}
	var results []gateway.SendResult
	snd := &Sender{Blobs: src.b.Blobs}
	if err := snd.Send(t.Context(), peer, gateway.SendHeader{}, recs, func(r []gateway.SendResult) { results = append(results, r...) }); err != nil {
		t.Fatal(err)
	}
	if len(results) != 2 || !results[0].OK {
		t.Fatalf("results %+v", results)
	}
	if r := results[1]; r.OK || r.Retryable || !strings.Contains(r.Reason, "neither in the stored transfer syntax") {
		t.Errorf("JPEG to an Explicit-LE-only peer: %+v", r)
	}
	rc, err := src.b.Blobs.Get(t.Context(), recs[0].Key(), 0, -1)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	var transcoded bytes.Buffer
	if _, err := dicomcodec.TranscodeToExplicitLE(&transcoded, rc); err != nil {
		t.Fatal(err)
	}
	got, rec := dst.storedDatasetSHA256(t, recs[0].SOPInstanceUID)
	if rec.TransferSyntaxUID != ExplicitVRLittleEndian || got != datasetSHA256(t, &transcoded) {
		t.Errorf("peer holds %s in %s, not the transcoded dataset", got, rec.TransferSyntaxUID)
	}
}
