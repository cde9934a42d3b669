package dicomcodec_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dicom-gateway/gateway/dicomcodec"
	"github.com/dicom-gateway/gateway/internal/synth"
)

// testMapUID is a deterministic UID mapping for tests.
func testMapUID(uid string) string {
	sum := sha256.Sum256([]byte("test\x00" + uid))
	return "2.25." + new(big.Int).SetBytes(sum[:16]).String()
}

// testMapPatientID is a deterministic Patient ID pseudonym for tests.
func testMapPatientID(id string) string {
	sum := sha256.Sum256([]byte("patient\x00" + id))
	return "ANON-" + strings.ToUpper(hex.EncodeToString(sum[:6]))
}

func deidentify(t testing.TB, src []byte, o dicomcodec.DeidentifyOptions) ([]byte, error) {
	t.Helper()
	var out bytes.Buffer
	n, err := dicomcodec.Deidentify(&out, bytes.NewReader(src), o)
	if err == nil && n != int64(out.Len()) {
		t.Fatalf("Deidentify returned %d, wrote %d", n, out.Len())
	}
	return out.Bytes(), err
}

// TestDeidentifyProfile: an instance carrying every attribute of PS3.15
// Table E.1-1 comes out with each removed, emptied, replaced or kept as its
// action says, under the basic profile and under each option; no probe
// value survives the basic profile anywhere in the bytes; UIDs (file meta
// included) are mapped; the markers are set; pixel data is byte-identical;
// the output is the same on every pass.
func TestDeidentifyProfile(t *testing.T) {
	probe := synth.ProfileProbe("1.2.826.0.1.3680043.10.999.1", "1.2.826.0.1.3680043.10.999.1.1", 2)
	for _, o := range []dicomcodec.DeidentifyOptions{
		{MapUID: testMapUID},
		{MapUID: testMapUID, RetainFullDates: true},
		{MapUID: testMapUID, RetainPatientCharacteristics: true},
		{MapUID: testMapUID, MapPatientID: testMapPatientID},
	} {
		for _, in := range probe {
			src := encode(t, in)
			out, err := deidentify(t, src, o)
			if err != nil {
				t.Fatal(err)
			}
			hs, err := dicomcodec.ParseHeader(bytes.NewReader(src), dicomcodec.HeaderLimits{})
			if err != nil {
				t.Fatal(err)
			}
			ho, err := dicomcodec.ParseHeader(bytes.NewReader(out), dicomcodec.HeaderLimits{})
			if err != nil {
				t.Fatalf("de-identified instance does not parse: %v", err)
			}
			if v := synth.ProfileViolations(hs.Dataset, ho.Dataset, o); len(v) > 0 {
				t.Errorf("options %+v: %d violations, first %v", o.RetainFullDates || o.RetainPatientCharacteristics, len(v), v[:min(len(v), 10)])
			}
			if !o.RetainFullDates && !o.RetainPatientCharacteristics && bytes.Contains(out, []byte("PHI")) {
				i := bytes.Index(out, []byte("PHI"))
				t.Errorf("a probe value survived the basic profile: …%q…", out[max(0, i-16):min(len(out), i+16)])
			}
			if got, want := ho.SOPInstanceUID, testMapUID(in.SOPInstanceUID); got != want {
				t.Errorf("SOP Instance UID %s, want %s", got, want)
			}
			if !bytes.Contains(out[:512], []byte(testMapUID(in.SOPInstanceUID))) {
				t.Errorf("file meta lacks the mapped Media Storage SOP Instance UID")
			}
			d := ho.Dataset
			if d.String("00120062") != "YES" || !strings.HasPrefix(d.String("00120063"), "Basic Profile") {
				t.Errorf("Patient Identity Removed %q, method %q", d.String("00120062"), d.String("00120063"))
			}
			codes := map[string]bool{}
			for _, it := range d["00120064"].Value {
				codes[it.(dicomcodec.Dataset).String("00080100")] = true
			}
			if !codes["113100"] || codes["113106"] != o.RetainFullDates || codes["113108"] != o.RetainPatientCharacteristics {
				t.Errorf("method codes %v for options %+v", codes, o)
			}
			if !bytes.Equal(src[hs.HeaderLength:], out[ho.HeaderLength:]) {
				t.Errorf("pixel data differs")
			}
			again, err := deidentify(t, src, o)
			if err != nil || !bytes.Equal(again, out) {
				t.Errorf("a second pass gives other bytes (%v)", err)
			}
		}
	}
}

// TestDeidentifyUndefinedLengths: sequences of undefined length are walked
// like defined ones (the Other Patient IDs Sequence, X, goes), and input
// that is not a Part 10 instance fails with ErrMalformed.
func TestDeidentifyUndefinedLengths(t *testing.T) {
	in := synth.Instance{PatientID: "PHIPID", PatientName: "PHI^NAME", StudyInstanceUID: "1.2.3", SeriesInstanceUID: "1.2.3.4", SOPInstanceUID: "1.2.3.4.5",
		OtherPatientIDs: []synth.OtherPatientID{{ID: "PHI943", Issuer: "NHS"}}, UndefinedLengthSequences: true, Rows: 4, Columns: 4}
	out, err := deidentify(t, encode(t, in), dicomcodec.DeidentifyOptions{MapUID: testMapUID})
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(out, []byte("PHI")) {
		t.Errorf("identity survived")
	}
	if _, err := deidentify(t, []byte("not dicom"), dicomcodec.DeidentifyOptions{MapUID: testMapUID}); !errors.Is(err, dicomcodec.ErrMalformed) {
		t.Errorf("non-DICOM input: %v, want ErrMalformed", err)
	}
}

// FuzzDeidentify feeds arbitrary bytes to Deidentify: it fails with one of
// the codec's data errors or succeeds, never panics; what it writes parses,
// carries no private attribute at the top level and is the same on every
// pass.
func FuzzDeidentify(f *testing.F) {
	o := dicomcodec.DeidentifyOptions{MapUID: testMapUID, MapPatientID: testMapPatientID}
	for _, in := range synth.ProfileProbe("1.2.3", "1.2.3.4", 1) {
		f.Add(encode(f, in))
	}
	f.Add(encode(f, synth.Instance{OtherPatientIDs: []synth.OtherPatientID{{ID: "1", Issuer: "NHS"}}, UndefinedLengthSequences: true, Rows: 2, Columns: 2}))
	f.Fuzz(func(t *testing.T, data []byte) {
		out, err := deidentify(t, data, o)
		if err != nil {
			if !isDataError(err) {
				t.Fatalf("error %v (%T) is not one of the codec's data errors", err, err)
			}
			return
		}
		again, _ := deidentify(t, data, o)
		if !bytes.Equal(out, again) {
			t.Fatalf("two passes differ")
		}
		h, err := dicomcodec.ParseHeader(bytes.NewReader(out), dicomcodec.HeaderLimits{})
		if err != nil {
			return // the input's own damage past what the rewriter checks
		}
		for key := range h.Dataset {
			if b, err := hex.DecodeString(key[:4]); err == nil && b[1]%2 == 1 {
				t.Fatalf("private attribute %s survived", key)
			}
		}
	})
}

// TestDeidentifyImplicitVR: the probe converted to Implicit VR Little
// Endian by DCMTK's dcmconv (VRs from the dictionary, sequences re-encoded
// by another implementation) comes out with the profile applied just the
// same, still in Implicit VR, pixel data identical.
func TestDeidentifyImplicitVR(t *testing.T) {
	dcmconv, err := exec.LookPath("dcmconv")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("dcmconv missing: apt-get install dcmtk")
		}
		t.Skip("dcmconv missing: apt-get install dcmtk")
	}
	dir := t.TempDir()
	in := synth.ProfileProbe("1.2.826.0.1.3680043.10.999.2", "1.2.826.0.1.3680043.10.999.2.1", 2)[1]
	src, dst := filepath.Join(dir, "in.dcm"), filepath.Join(dir, "implicit.dcm")
	if err := os.WriteFile(src, encode(t, in), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.CommandContext(t.Context(), dcmconv, "+ti", src, dst).CombinedOutput(); err != nil {
		t.Fatalf("dcmconv: %v\n%s", err, out)
	}
	implicit, err := os.ReadFile(dst)
	if err != nil {
		t.Fatal(err)
	}
	o := dicomcodec.DeidentifyOptions{MapUID: testMapUID}
	out, err := deidentify(t, implicit, o)
	if err != nil {
		t.Fatal(err)
	}
	hs, err := dicomcodec.ParseHeader(bytes.NewReader(implicit), dicomcodec.HeaderLimits{})
	if err != nil {
		t.Fatal(err)
	}
	ho, err := dicomcodec.ParseHeader(bytes.NewReader(out), dicomcodec.HeaderLimits{})
	if err != nil {
		t.Fatalf("de-identified instance does not parse: %v", err)
	}
	if ho.TransferSyntaxUID != "1.2.840.10008.1.2" {
		t.Errorf("transfer syntax %s, want Implicit VR LE kept", ho.TransferSyntaxUID)
	}
	if v := synth.ProfileViolations(hs.Dataset, ho.Dataset, o); len(v) > 0 {
		t.Errorf("%d violations, first %v", len(v), v[:min(len(v), 10)])
	}
	if bytes.Contains(out, []byte("PHI")) {
		t.Errorf("a probe value survived")
	}
	if !bytes.Equal(implicit[hs.HeaderLength:], out[ho.HeaderLength:]) {
		t.Errorf("pixel data differs")
	}
}

// TestDeidentifyUNSequence: a sequence that reached this gateway as UN of
// defined length (its sender did not know the VR; the items are Implicit
// VR LE) is walked like any other: its identifying items are cleaned and
// its references mapped, not copied through opaque.
func TestDeidentifyUNSequence(t *testing.T) {
	var item []byte
	for _, e := range []struct {
		tag uint32
		v   string
	}{{0x00081155, "1.2.3.4.9\x00"}, {0x00100010, "PHI^UNSEQ "}} {
		item = binary.LittleEndian.AppendUint16(item, uint16(e.tag>>16))
		item = binary.LittleEndian.AppendUint16(item, uint16(e.tag))
		item = binary.LittleEndian.AppendUint32(item, uint32(len(e.v)))
		item = append(item, e.v...)
	}
	seq := binary.LittleEndian.AppendUint32(nil, 0xE000FFFE)
	seq = binary.LittleEndian.AppendUint32(seq, uint32(len(item)))
	seq = append(seq, item...)
	in := synth.Instance{PatientID: "X", StudyInstanceUID: "1.2.3", SeriesInstanceUID: "1.2.3.4", SOPInstanceUID: "1.2.3.4.5", Rows: 2, Columns: 2,
		Extra: []synth.Element{{Tag: 0x00081140, VR: "UN", Value: seq}}}
	out, err := deidentify(t, encode(t, in), dicomcodec.DeidentifyOptions{MapUID: testMapUID})
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(out, []byte("PHI")) || !bytes.Contains(out, []byte(testMapUID("1.2.3.4.9"))) {
		t.Errorf("UN sequence: name left %v, reference mapped %v", bytes.Contains(out, []byte("PHI")), bytes.Contains(out, []byte(testMapUID("1.2.3.4.9"))))
	}
}

// TestDeidentifyRemovesUNSequence: a removed attribute that is a sequence
// of undefined length encoded as UN (Implicit VR LE items inside an
// Explicit VR dataset) is skipped through its delimiters in that encoding.
func TestDeidentifyRemovesUNSequence(t *testing.T) {
	var item []byte
	item = binary.LittleEndian.AppendUint32(item, 0x00100010)
	item = binary.LittleEndian.AppendUint32(item, 10)
	item = append(item, "PHI^UNSEQ "...)
	for _, tag := range []uint32{0xE00DFFFE} {
		item = binary.LittleEndian.AppendUint32(item, tag)
		item = binary.LittleEndian.AppendUint32(item, 0)
	}
	seq := binary.LittleEndian.AppendUint32(nil, 0xE000FFFE)
	seq = binary.LittleEndian.AppendUint32(seq, 0xFFFFFFFF)
	seq = append(seq, item...)
	seq = binary.LittleEndian.AppendUint32(seq, 0xE0DDFFFE)
	seq = binary.LittleEndian.AppendUint32(seq, 0)
	// (0010,1002) Other Patient IDs Sequence, X; written with a defined
	// length by synth, so patch in the undefined one.
	in := synth.Instance{PatientID: "X", StudyInstanceUID: "1.2.3", SeriesInstanceUID: "1.2.3.4", SOPInstanceUID: "1.2.3.4.5", Rows: 2, Columns: 2,
		Extra: []synth.Element{{Tag: 0x00101002, VR: "UN", Value: seq}}}
	src := encode(t, in)
	hdr := []byte{0x10, 0x00, 0x02, 0x10, 'U', 'N', 0, 0}
	i := bytes.Index(src, hdr)
	if i < 0 {
		t.Fatal("no (0010,1002) in the instance")
	}
	binary.LittleEndian.PutUint32(src[i+8:], 0xFFFFFFFF)
	out, err := deidentify(t, src, dicomcodec.DeidentifyOptions{MapUID: testMapUID})
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(out, []byte("PHI")) {
		t.Error("the removed sequence's content survived")
	}
	if _, err := dicomcodec.ParseHeader(bytes.NewReader(out), dicomcodec.HeaderLimits{}); err != nil {
		t.Errorf("output does not parse: %v", err)
	}
}
