package dicomcodec_test

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/dicom-gateway/gateway/internal/testcorpus"
)

// explicitElement encodes one Explicit VR Little Endian element, padding
// the value to an even length.
func explicitElement(group, elem uint16, vr string, value []byte) []byte {
	if len(value)%2 == 1 {
		value = append(value, 0)
	}
	b := binary.LittleEndian.AppendUint16(nil, group)
	b = binary.LittleEndian.AppendUint16(b, elem)
	b = append(b, vr...)
	switch vr {
	case "OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UC", "UN", "UR", "UT", "SV", "UV":
		b = append(b, 0, 0)
		b = binary.LittleEndian.AppendUint32(b, uint32(len(value)))
	default:
		b = binary.LittleEndian.AppendUint16(b, uint16(len(value)))
	}
	return append(b, value...)
}

// implicitElement encodes one Implicit VR Little Endian element.
func implicitElement(group, elem uint16, value []byte) []byte {
	if len(value)%2 == 1 {
		value = append(value, 0)
	}
	b := binary.LittleEndian.AppendUint16(nil, group)
	b = binary.LittleEndian.AppendUint16(b, elem)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(value)))
	return append(b, value...)
}

// part10 wraps an Explicit VR Little Endian dataset in a preamble and file
// meta group.
func part10(sopClass, sop string, dataset []byte) []byte {
	var meta []byte
	meta = append(meta, explicitElement(0x0002, 0x0001, "OB", []byte{0, 1})...)
	meta = append(meta, explicitElement(0x0002, 0x0002, "UI", []byte(sopClass))...)
	meta = append(meta, explicitElement(0x0002, 0x0003, "UI", []byte(sop))...)
	meta = append(meta, explicitElement(0x0002, 0x0010, "UI", []byte("1.2.840.10008.1.2.1"))...)
	out := append(make([]byte, 128), "DICM"...)
	out = append(out, explicitElement(0x0002, 0x0000, "UL", binary.LittleEndian.AppendUint32(nil, uint32(len(meta))))...)
	out = append(out, meta...)
	return append(out, dataset...)
}

// TestStandardElementsSentAsUN: an Explicit VR file whose standard
// elements, the UIDs among them, carry VR UN (as some conversion tools
// write) is read with the dictionary's VRs (PS3.5 6.2.2): its UIDs are
// found, and its metadata has the real VRs and decoded values, a sequence
// sent as UN included; a private element stays UN.
func TestStandardElementsSentAsUN(t *testing.T) {
	const (
		class  = "1.2.840.10008.5.1.4.1.1.7"
		sop    = "1.2.826.0.1.3680043.10.99.1.1.1"
		study  = "1.2.826.0.1.3680043.10.99.1"
		series = "1.2.826.0.1.3680043.10.99.1.1"
		refSOP = "1.2.826.0.1.3680043.10.99.7"
	)
	un := func(group, elem uint16, value string) []byte {
		return explicitElement(group, elem, "UN", []byte(value))
	}
	// (0008,1140) Referenced Image Sequence sent as UN of defined length:
	// its item is Implicit VR Little Endian.
	var item []byte
	item = append(item, implicitElement(0x0008, 0x1150, []byte("1.2.840.10008.5.1.4.1.1.2"))...)
	item = append(item, implicitElement(0x0008, 0x1155, []byte(refSOP))...)
	seq := binary.LittleEndian.AppendUint32(binary.LittleEndian.AppendUint16(binary.LittleEndian.AppendUint16(nil, 0xFFFE), 0xE000), uint32(len(item)))
	seq = append(seq, item...)

	var ds []byte
	ds = append(ds, un(0x0008, 0x0005, "ISO_IR 100")...)
	ds = append(ds, un(0x0008, 0x0016, class)...)
	ds = append(ds, un(0x0008, 0x0018, sop)...)
	ds = append(ds, un(0x0008, 0x0060, "OT")...)
	ds = append(ds, explicitElement(0x0008, 0x1140, "UN", seq)...)
	ds = append(ds, un(0x0010, 0x0010, "M\xfcller^J\xfcrgen")...) // Latin-1, decoded per (0008,0005)
	ds = append(ds, explicitElement(0x0009, 0x0010, "LO", []byte("ACME 1.0"))...)
	ds = append(ds, un(0x0009, 0x1001, "secret")...)
	ds = append(ds, un(0x0020, 0x000D, study)...)
	ds = append(ds, un(0x0020, 0x000E, series)...)
	ds = append(ds, un(0x0020, 0x0013, "7")...)
	ds = append(ds, explicitElement(0x0028, 0x0010, "UN", binary.LittleEndian.AppendUint16(nil, 2))...)
	ds = append(ds, explicitElement(0x0028, 0x0011, "UN", binary.LittleEndian.AppendUint16(nil, 2))...)
	ds = append(ds, explicitElement(0x0028, 0x0100, "UN", binary.LittleEndian.AppendUint16(nil, 8))...)
	ds = append(ds, explicitElement(0x0028, 0x1050, "UN", []byte("40.5"))...)
	ds = append(ds, explicitElement(0x7FE0, 0x0010, "UN", []byte{1, 2, 3, 4})...)
	data := part10(class, sop, ds)

	h, layout, err := parseFile(t, data)
	if err != nil {
		t.Fatalf("refused: %v", err)
	}
	for _, tt := range []struct{ name, got, want string }{
		{"SOPClassUID", h.SOPClassUID, class},
		{"SOPInstanceUID", h.SOPInstanceUID, sop},
		{"StudyInstanceUID", h.StudyInstanceUID, study},
		{"SeriesInstanceUID", h.SeriesInstanceUID, series},
	} {
		if tt.got != tt.want {
			t.Errorf("%s=%q, want %q", tt.name, tt.got, tt.want)
		}
	}
	if layout == nil || layout.ValueLength != 4 {
		t.Errorf("pixel data layout %+v, want 4 bytes of native pixel data", layout)
	}
	got, err := json.Marshal(h.Dataset)
	if err != nil {
		t.Fatal(err)
	}
	var gotDS map[string]any
	if err := json.Unmarshal(got, &gotDS); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"00080005": `{"vr":"CS","Value":["ISO_IR 192"]}`,
		"00080016": `{"vr":"UI","Value":["` + class + `"]}`,
		"00080018": `{"vr":"UI","Value":["` + sop + `"]}`,
		"00080060": `{"vr":"CS","Value":["OT"]}`,
		"00081140": `{"vr":"SQ","Value":[{"00081150":{"vr":"UI","Value":["1.2.840.10008.5.1.4.1.1.2"]},"00081155":{"vr":"UI","Value":["` + refSOP + `"]}}]}`,
		"00100010": `{"vr":"PN","Value":[{"Alphabetic":"Müller^Jürgen"}]}`,
		"00091001": `{"vr":"UN","InlineBinary":"c2VjcmV0"}`,
		"0020000D": `{"vr":"UI","Value":["` + study + `"]}`,
		"0020000E": `{"vr":"UI","Value":["` + series + `"]}`,
		"00200013": `{"vr":"IS","Value":[7]}`,
		"00280010": `{"vr":"US","Value":[2]}`,
		"00281050": `{"vr":"DS","Value":[40.5]}`,
		"7FE00010": `{"vr":"OB","BulkDataURI":"bulkdata/7FE00010"}`,
	}
	for key, w := range want {
		var wantAttr any
		if err := json.Unmarshal([]byte(w), &wantAttr); err != nil {
			t.Fatal(err)
		}
		g, _ := json.Marshal(gotDS[key])
		n, _ := json.Marshal(wantAttr)
		if !bytes.Equal(g, n) {
			t.Errorf("%s = %s, want %s", key, g, n)
		}
	}
}

// TestCorpusRelabelledAsUN takes the corpus's Explicit VR Little Endian
// files, relabels every standard top-level element before Pixel Data as UN
// (in code: the corpus is not copied), and checks that each still parses to
// the same UIDs and, for every attribute, the same DICOM JSON as the
// original, except where the writer used another VR than the dictionary.
func TestCorpusRelabelledAsUN(t *testing.T) {
	tested := 0
	for _, f := range testcorpus.Files(t) {
		if f.Malformed || !strings.Contains(f.TransferSyntax, "(1.2.840.10008.1.2.1)") {
			continue
		}
		data, err := os.ReadFile(f.Path)
		if err != nil {
			t.Fatal(err)
		}
		orig, _, err := parseFile(t, data)
		if err != nil {
			t.Fatalf("%s: %v", f.Name, err)
		}
		relabelled, n, err := relabelAsUN(data, orig.HeaderLength)
		if err != nil {
			t.Logf("%s: not relabelled: %v", f.Name, err)
			continue
		}
		if n == 0 {
			continue
		}
		tested++
		t.Run(f.Name, func(t *testing.T) {
			h, _, err := parseFile(t, relabelled)
			if err != nil {
				t.Fatalf("%d elements relabelled UN: refused: %v", n, err)
			}
			if h.SOPInstanceUID != orig.SOPInstanceUID || h.SOPClassUID != orig.SOPClassUID ||
				h.StudyInstanceUID != orig.StudyInstanceUID || h.SeriesInstanceUID != orig.SeriesInstanceUID {
				t.Errorf("UIDs %q %q %q %q, want %q %q %q %q", h.SOPClassUID, h.SOPInstanceUID, h.StudyInstanceUID, h.SeriesInstanceUID,
					orig.SOPClassUID, orig.SOPInstanceUID, orig.StudyInstanceUID, orig.SeriesInstanceUID)
			}
			for key, want := range orig.Dataset {
				got, ok := h.Dataset[key]
				if !ok {
					t.Errorf("%s missing", key)
					continue
				}
				if got.VR != want.VR {
					// The writer and the dictionary disagree (e.g. a retired
					// element, US/SS): the dictionary wins, as in dcmtk.
					t.Logf("%s: VR %s, the file's own %s", key, got.VR, want.VR)
					continue
				}
				g, _ := json.Marshal(got)
				w, _ := json.Marshal(want)
				if !bytes.Equal(g, w) {
					t.Errorf("%s = %s, want %s", key, g, w)
				}
			}
		})
	}
	if tested == 0 {
		t.Fatal("no corpus file could be relabelled")
	}
}

// relabelAsUN rewrites the top-level Explicit VR Little Endian elements of
// a Part 10 file before headerEnd (the start of Pixel Data) with VR UN,
// except sequences, private elements and group lengths, which are copied
// unchanged; it returns the new file and how many elements it relabelled.
func relabelAsUN(data []byte, headerEnd int64) ([]byte, int, error) {
	pos := 132
	for pos+2 <= len(data) && binary.LittleEndian.Uint16(data[pos:]) == 0x0002 {
		next, err := skipExplicitElement(data, pos)
		if err != nil {
			return nil, 0, err
		}
		pos = next
	}
	out := append([]byte(nil), data[:pos]...)
	n := 0
	for int64(pos) < headerEnd {
		next, err := skipExplicitElement(data, pos)
		if err != nil {
			return nil, 0, err
		}
		group, elem, vr := binary.LittleEndian.Uint16(data[pos:]), binary.LittleEndian.Uint16(data[pos+2:]), string(data[pos+4:pos+6])
		if vr == "SQ" || vr == "UN" || group%2 == 1 || elem == 0 || binary.LittleEndian.Uint32(data[pos+8:]) == 0xFFFFFFFF && longVRName(vr) {
			out = append(out, data[pos:next]...)
		} else {
			hdr := 8
			if longVRName(vr) {
				hdr = 12
			}
			out = append(out, explicitElement(group, elem, "UN", data[pos+hdr:next])...)
			n++
		}
		pos = next
	}
	return append(out, data[pos:]...), n, nil
}

func longVRName(vr string) bool {
	switch vr {
	case "OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UC", "UN", "UR", "UT", "SV", "UV":
		return true
	}
	return false
}

var errRelabel = errors.New("cannot walk")

// skipExplicitElement returns the offset after the Explicit VR Little
// Endian element at pos, walking undefined-length sequences.
func skipExplicitElement(data []byte, pos int) (int, error) {
	if pos+8 > len(data) {
		return 0, errRelabel
	}
	vr := string(data[pos+4 : pos+6])
	if !longVRName(vr) {
		return pos + 8 + int(binary.LittleEndian.Uint16(data[pos+6:])), nil
	}
	if pos+12 > len(data) {
		return 0, errRelabel
	}
	vl := binary.LittleEndian.Uint32(data[pos+8:])
	if vl != 0xFFFFFFFF {
		return pos + 12 + int(vl), nil
	}
	if vr != "SQ" {
		return 0, errRelabel // encapsulated data or CP-246 UN: not needed before Pixel Data
	}
	pos += 12
	for pos+8 <= len(data) {
		tag := binary.LittleEndian.Uint32(data[pos:])
		ivl := binary.LittleEndian.Uint32(data[pos+4:])
		switch {
		case tag == 0xE0DDFFFE: // sequence delimiter
			return pos + 8, nil
		case tag != 0xE000FFFE:
			return 0, errRelabel
		case ivl != 0xFFFFFFFF:
			pos += 8 + int(ivl)
		default:
			pos += 8
			for {
				if pos+8 > len(data) {
					return 0, errRelabel
				}
				if binary.LittleEndian.Uint32(data[pos:]) == 0xE00DFFFE { // item delimiter
					pos += 8
					break
				}
				next, err := skipExplicitElement(data, pos)
				if err != nil {
					return 0, err
				}
				pos = next
			}
		}
	}
	return 0, errRelabel
}
