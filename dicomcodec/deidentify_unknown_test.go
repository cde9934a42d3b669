package dicomcodec_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/dicom-gateway/gateway/dicomcodec"
	"github.com/dicom-gateway/gateway/internal/synth"
)

const (
	drImplicit = "1.2.840.10008.1.2"
	drExplicit = "1.2.840.10008.1.2.1"
)

func drPad(v string, p byte) []byte {
	b := []byte(v)
	if len(b)%2 == 1 {
		b = append(b, p)
	}
	return b
}

// drEl encodes one element with a defined length: in Implicit VR when vr
// is "", else in Explicit VR.
func drEl(tag uint32, vr string, v []byte) []byte {
	return dicomcodec.AppendElementLE(nil, tag, vr, vr == "", v)
}

func drItem(els ...[]byte) []byte {
	body := bytes.Join(els, nil)
	b := binary.LittleEndian.AppendUint32(nil, 0xE000FFFE)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(body)))
	return append(b, body...)
}

// drPart10 wraps dataset in a preamble and file meta of transfer syntax ts.
func drPart10(ts, sop string, dataset ...[]byte) []byte {
	meta := bytes.Join([][]byte{
		drEl(0x00020001, "OB", []byte{0, 1}),
		drEl(0x00020002, "UI", drPad(synth.CTImageStorage, 0)),
		drEl(0x00020003, "UI", drPad(sop, 0)),
		drEl(0x00020010, "UI", drPad(ts, 0)),
		drEl(0x00020012, "UI", drPad("1.2.3.4", 0)),
	}, nil)
	b := make([]byte, 128)
	b = append(b, "DICM"...)
	b = append(b, drEl(0x00020000, "UL", binary.LittleEndian.AppendUint32(nil, uint32(len(meta))))...)
	b = append(b, meta...)
	return append(b, bytes.Join(dataset, nil)...)
}

func drDeid(t *testing.T, src []byte) []byte {
	t.Helper()
	out, err := deidentify(t, src, dicomcodec.DeidentifyOptions{MapUID: testMapUID})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestDeidentifyUnknownAttributesRemoved: an attribute the dictionary does
// not know (newer than it; here a made-up (0040,F0F0)) cannot be
// inspected, so it is removed, whether it comes in Implicit VR or as UN of
// defined length holding a sequence whose items name the patient. Before,
// its bytes were copied through and the names in its items with them. The
// Person Names to Use Sequence and Name to Use (0010,0011), (0010,0012),
// newer rows of Table E.1-1, are removed even as explicit SQ and LO.
func TestDeidentifyUnknownAttributesRemoved(t *testing.T) {
	item := func(vr string) []byte {
		if vr == "" {
			return drItem(drEl(0x00100010, "", drPad("PHI^NESTEDNAME", ' ')), drEl(0x00100020, "", drPad("PHINESTEDPID", ' ')))
		}
		return drItem(drEl(0x00100010, "PN", drPad("PHI^NESTEDNAME", ' ')), drEl(0x00100020, "LO", drPad("PHINESTEDPID", ' ')))
	}
	sop := "1.2.3.4.5.6"
	for name, src := range map[string][]byte{
		"implicit unknown sequence": drPart10(drImplicit, sop,
			drEl(0x00080016, "", drPad(synth.CTImageStorage, 0)), drEl(0x00080018, "", drPad(sop, 0)),
			drEl(0x0040F0F0, "", item(""))),
		"explicit UN unknown sequence": drPart10(drExplicit, sop,
			drEl(0x00080016, "UI", drPad(synth.CTImageStorage, 0)), drEl(0x00080018, "UI", drPad(sop, 0)),
			drEl(0x0040F0F0, "UN", item(""))),
		"Person Names to Use Sequence": drPart10(drExplicit, sop,
			drEl(0x00080016, "UI", drPad(synth.CTImageStorage, 0)), drEl(0x00080018, "UI", drPad(sop, 0)),
			drEl(0x00100011, "SQ", drItem(drEl(0x00100012, "LO", drPad("PHI^NESTEDNAME", ' '))))),
		"Name to Use": drPart10(drExplicit, sop,
			drEl(0x00080016, "UI", drPad(synth.CTImageStorage, 0)), drEl(0x00080018, "UI", drPad(sop, 0)),
			drEl(0x00100012, "LO", drPad("PHI^NESTEDNAME", ' '))),
	} {
		out := drDeid(t, src)
		for _, phi := range []string{"PHI^NESTEDNAME", "PHINESTEDPID"} {
			if bytes.Contains(out, []byte(phi)) {
				t.Errorf("%s: %s survived de-identification", name, phi)
			}
		}
		if _, err := dicomcodec.ParseHeader(bytes.NewReader(out), dicomcodec.HeaderLimits{}); err != nil {
			t.Errorf("%s: the de-identified instance does not parse: %v", name, err)
		}
	}
}

// TestDeidentifyRefusesBurnedInAnnotation: the Basic Profile cleans
// attributes, not pixels; an instance whose Burned In Annotation is YES
// carries identifying text in its pixels and is refused. NO is kept.
func TestDeidentifyRefusesBurnedInAnnotation(t *testing.T) {
	for value, refused := range map[string]bool{"YES ": true, "NO": false} {
		in := synth.Instance{PatientID: "P", StudyInstanceUID: "1.2.3", SeriesInstanceUID: "1.2.3.4", SOPInstanceUID: "1.2.3.4.9", Rows: 2, Columns: 2,
			Extra: []synth.Element{{Tag: 0x00280301, VR: "CS", Value: []byte(value)}}}
		out, err := deidentify(t, encode(t, in), dicomcodec.DeidentifyOptions{MapUID: testMapUID})
		if refused {
			if !errors.Is(err, dicomcodec.ErrBurnedInAnnotation) || !errors.Is(err, dicomcodec.ErrInvalidInput) {
				t.Errorf("Burned In Annotation %q: err = %v, want ErrBurnedInAnnotation", value, err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("Burned In Annotation %q: %v", value, err)
		}
		h, err := dicomcodec.ParseHeader(bytes.NewReader(out), dicomcodec.HeaderLimits{})
		if err != nil || h.Dataset.String("00280301") != "NO" {
			t.Errorf("Burned In Annotation NO: %v, value %q", err, h.Dataset.String("00280301"))
		}
	}
}

// TestDeidentifyUIDSentAsUN: a UID whose sender wrote it as UN is mapped as
// the UI the dictionary says it is. Before, it became two NUL bytes and the
// reference no longer resolved.
func TestDeidentifyUIDSentAsUN(t *testing.T) {
	sop, ref := "1.2.3.4.5.10", "1.2.3.4.5.11"
	src := drPart10(drExplicit, sop,
		drEl(0x00080016, "UI", drPad(synth.CTImageStorage, 0)),
		drEl(0x00080018, "UI", drPad(sop, 0)),
		drEl(0x00081140, "SQ", drItem(
			drEl(0x00081150, "UI", drPad(synth.CTImageStorage, 0)),
			drEl(0x00081155, "UN", drPad(ref, 0)),
		)),
	)
	out := drDeid(t, src)
	if !bytes.Contains(out, []byte(testMapUID(ref))) || strings.Contains(string(out), ref) {
		t.Errorf("Referenced SOP Instance UID sent as UN: mapped %v, original left %v", bytes.Contains(out, []byte(testMapUID(ref))), strings.Contains(string(out), ref))
	}
}

// TestDeidentifyDropsMetaAETitles: the file meta's Source AE Title and
// Source Presentation Address name a machine of the centre (Station AE
// Title is X in the dataset); only the meta elements the file needs stay.
func TestDeidentifyDropsMetaAETitles(t *testing.T) {
	sop := "1.2.3.4.5.30"
	src := drPart10(drExplicit, sop, drEl(0x00080018, "UI", drPad(sop, 0)))
	meta := append(drEl(0x00020016, "AE", drPad("HAMPSHIRE_CT3", ' ')), drEl(0x00020026, "UR", drPad("dicom://ct3.hampshire.example:104", ' '))...)
	i := bytes.Index(src, []byte{0x08, 0x00, 0x18, 0x00}) // the first dataset element
	src = append(src[:i:i], append(meta, src[i:]...)...)
	gl := binary.LittleEndian.Uint32(src[140:144])
	binary.LittleEndian.PutUint32(src[140:144], gl+uint32(len(meta)))
	out := drDeid(t, src)
	if bytes.Contains(out, []byte("HAMPSHIRE_CT3")) || bytes.Contains(out, []byte("hampshire.example")) {
		t.Errorf("Source AE Title (0002,0016) or Source Presentation Address (0002,0026) left in the de-identified file meta")
	}
	if _, err := dicomcodec.ParseHeader(bytes.NewReader(out), dicomcodec.HeaderLimits{}); err != nil {
		t.Errorf("the de-identified instance does not parse: %v", err)
	}
}

// TestDeidentifyMapsUnlistedInstanceUIDs: UI attributes that Table E.1-1
// does not list but that identify instances (Multi-frame Source SOP
// Instance UID, SOP Instance UID of Concatenation Source, Referenced
// Fiducial UID) are mapped like its U rows, so the source's UIDs do not
// reach the peer; those naming a class or software (SOP Class UID,
// Referenced SOP Class UID, Creator-Version UID) are kept, and so is a
// UID the standard registers (a standard color palette instance). Before,
// every unlisted UI attribute was kept as it came. A SOP Instance UID a
// device made under the standard's root without registration is mapped,
// in the dataset and in the file meta alike.
func TestDeidentifyMapsUnlistedInstanceUIDs(t *testing.T) {
	sop := "1.2.840.10008.999.1.7"
	mapped := map[uint32]string{0x00080018: sop, 0x00081167: "1.2.3.4.5.41", 0x00200242: "1.2.3.4.5.42", 0x0070031B: "1.2.3.4.5.43", 0x00081155: "1.2.3.4.5.44"}
	kept := map[uint32]string{0x00080016: synth.CTImageStorage, 0x00081150: synth.MRImageStorage, 0x00089123: "1.2.3.99.7", 0x00280304: "1.2.840.10008.1.5.1"}
	el := func(tag uint32, v string) []byte { return drEl(tag, "UI", drPad(v, 0)) }
	src := drPart10(drExplicit, sop,
		el(0x00080016, kept[0x00080016]),
		el(0x00080018, sop),
		drEl(0x00081140, "SQ", drItem(el(0x00081150, kept[0x00081150]), el(0x00081155, mapped[0x00081155]))),
		el(0x00081167, mapped[0x00081167]),
		el(0x00089123, kept[0x00089123]),
		el(0x00200242, mapped[0x00200242]),
		el(0x00280304, kept[0x00280304]),
		el(0x0070031B, mapped[0x0070031B]),
	)
	out := drDeid(t, src)
	for tag, uid := range mapped {
		if bytes.Contains(out, []byte(uid)) || !bytes.Contains(out, []byte(testMapUID(uid))) {
			t.Errorf("(%04X,%04X) %s: original left %v, mapped present %v", tag>>16, tag&0xFFFF, uid, bytes.Contains(out, []byte(uid)), bytes.Contains(out, []byte(testMapUID(uid))))
		}
	}
	for tag, uid := range kept {
		if !bytes.Contains(out, []byte(uid)) {
			t.Errorf("(%04X,%04X) %s was not kept", tag>>16, tag&0xFFFF, uid)
		}
	}
	if _, err := dicomcodec.ParseHeader(bytes.NewReader(out), dicomcodec.HeaderLimits{}); err != nil {
		t.Errorf("the de-identified instance does not parse: %v", err)
	}
}

// TestDeidentifyPatientPseudonym: with MapPatientID, each Patient ID
// becomes its pseudonym, the same for one patient's instances and distinct
// for two patients, at the top level and inside a sequence item; an empty
// Patient ID and an instance de-identified without MapPatientID get the
// dummy value. Before, every patient became ANONYMIZED, one patient at the
// destination.
func TestDeidentifyPatientPseudonym(t *testing.T) {
	instance := func(sop, pid string) []byte {
		return drPart10(drExplicit, sop,
			drEl(0x00080018, "UI", drPad(sop, 0)),
			drEl(0x00081140, "SQ", drItem(drEl(0x00100020, "LO", drPad(pid, ' ')))),
			drEl(0x00100020, "LO", drPad(pid, ' ')),
		)
	}
	patientIDs := func(out []byte) []string {
		t.Helper()
		h, err := dicomcodec.ParseHeader(bytes.NewReader(out), dicomcodec.HeaderLimits{})
		if err != nil {
			t.Fatalf("the de-identified instance does not parse: %v", err)
		}
		ids := []string{h.Dataset.String("00100020")}
		if items := h.Dataset["00081140"].Value; len(items) == 1 {
			ids = append(ids, items[0].(dicomcodec.Dataset).String("00100020"))
		}
		return ids
	}
	o := dicomcodec.DeidentifyOptions{MapUID: testMapUID, MapPatientID: testMapPatientID}
	pseudonym := func(sop, pid string) []string {
		t.Helper()
		out, err := deidentify(t, instance(sop, pid), o)
		if err != nil {
			t.Fatal(err)
		}
		if pid != "" && bytes.Contains(out, []byte(pid)) {
			t.Errorf("Patient ID %s left in the output", pid)
		}
		return patientIDs(out)
	}
	a1, a2, b := pseudonym("1.2.3.4.5.50", "PID-A1"), pseudonym("1.2.3.4.5.51", "PID-A1"), pseudonym("1.2.3.4.5.52", "PID-B2")
	want := testMapPatientID("PID-A1")
	if a1[0] != want || a1[1] != want || a2[0] != want {
		t.Errorf("one patient's instances: %v and %v, want %s everywhere", a1, a2, want)
	}
	if b[0] != testMapPatientID("PID-B2") || b[0] == a1[0] {
		t.Errorf("a second patient: %v, want %s (not the first's %s)", b, testMapPatientID("PID-B2"), a1[0])
	}
	if empty := pseudonym("1.2.3.4.5.53", ""); empty[0] != "ANONYMIZED" {
		t.Errorf("an empty Patient ID became %q, want the dummy ANONYMIZED", empty[0])
	}
	if ids := patientIDs(drDeid(t, instance("1.2.3.4.5.54", "PID-A1"))); ids[0] != "ANONYMIZED" {
		t.Errorf("without MapPatientID: %q, want ANONYMIZED", ids[0])
	}
}

// failingReader yields its data, then err.
type failingReader struct {
	data []byte
	err  error
}

func (f *failingReader) Read(p []byte) (int, error) {
	if len(f.data) == 0 {
		return 0, f.err
	}
	n := copy(p, f.data)
	f.data = f.data[n:]
	return n, nil
}

// TestDeidentifyReadErrorIsNotMalformed: a storage read that fails midway
// (a reset connection) is returned as that error, not as a malformed
// instance: the transfer retries it rather than withholding the instance
// for good. A source that merely ends early is malformed.
func TestDeidentifyReadErrorIsNotMalformed(t *testing.T) {
	sop := "1.2.3.4.5.60"
	src := drPart10(drExplicit, sop, drEl(0x00080018, "UI", drPad(sop, 0)), drEl(0x00100010, "PN", drPad("PHI^NAME", ' ')))
	reset := errors.New("connection reset by peer")
	for _, cut := range []int{100, 140, len(src) - 4} {
		_, err := dicomcodec.Deidentify(io.Discard, &failingReader{data: src[:cut], err: reset}, dicomcodec.DeidentifyOptions{MapUID: testMapUID})
		if !errors.Is(err, reset) || errors.Is(err, dicomcodec.ErrMalformed) {
			t.Errorf("read error after %d bytes: %v; want the read error, not ErrMalformed", cut, err)
		}
		if _, err := dicomcodec.Deidentify(io.Discard, bytes.NewReader(src[:cut]), dicomcodec.DeidentifyOptions{MapUID: testMapUID}); !errors.Is(err, dicomcodec.ErrMalformed) {
			t.Errorf("a source that ends after %d bytes: %v; want ErrMalformed", cut, err)
		}
	}
}
