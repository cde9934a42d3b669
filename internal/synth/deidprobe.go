package synth

import (
	"encoding/binary"
	"fmt"
	"strconv"
	"strings"

	"github.com/dicom-gateway/gateway/dicomcodec"
)

// ProbeValue is the identifying value a ProfileProbe gives a text
// attribute: "PHI" and its tag, so a survivor is found by searching the
// output and names the attribute it came from.
func ProbeValue(tag uint32) string { return fmt.Sprintf("PHI%08X", tag) }

// probeUIDRoot prefixes the UIDs ProfileProbe makes up.
const probeUIDRoot = "1.2.826.0.1.3680043.10.999."

// ProfileProbe is a study for testing de-identification: n CT instances of
// one series, each carrying, besides the usual attributes, a value for every
// attribute of PS3.15 Table E.1-1 (dicomcodec.ConfidentialityProfile)
// except the command group, the file meta (whose Media Storage SOP
// Instance UID the meta carries), those that follow Pixel Data and the retired
// curves; two private elements (a creator and its data); and references
// that must stay coherent: a shared Frame of Reference UID and, in the
// Referenced Image Sequence of each instance, the previous instance (the
// first refers to the last). Each sequence of the table holds an item with
// a Patient's Name and a private element, to be cleaned in place.
func ProfileProbe(study, series string, n int) []Instance {
	var out []Instance
	for i := range n {
		in := Instance{
			PatientName: "Probe^Patient", PatientID: "PROBE-PID", StudyInstanceUID: study, SeriesInstanceUID: series,
			SOPInstanceUID: fmt.Sprintf("%s.%d", series, i+1), InstanceNumber: i + 1, Rows: 8, Columns: 8, PixelSeed: uint64(i + 1),
		}
		prev := fmt.Sprintf("%s.%d", series, (i+n-1)%n+1)
		for _, a := range dicomcodec.ConfidentialityProfile() {
			switch g := a.Tag >> 16; {
			case g == 0x0000, g == 0x0002, g == 0xFFFA, g == 0xFFFC, g&0xFF00 == 0x5000:
				continue
			}
			vr := dicomcodec.TagVR(fmt.Sprintf("%08X", a.Tag))
			if a.Tag>>16&0xFF00 == 0x6000 {
				vr = map[uint32]string{0x3000: "OW", 0x4000: "LT"}[a.Tag&0xFFFF]
			}
			in.Extra = append(in.Extra, Element{Tag: a.Tag, VR: vr, Value: probeValue(a.Tag, vr)})
		}
		ref := probeItem(
			Element{0x00081150, "UI", pad([]byte(CTImageStorage), 0)},
			Element{0x00081155, "UI", pad([]byte(prev), 0)},
		)
		in.Extra = append(in.Extra,
			Element{0x00080018, "UI", pad([]byte(in.SOPInstanceUID), 0)},
			Element{0x0020000D, "UI", pad([]byte(study), 0)},
			Element{0x0020000E, "UI", pad([]byte(series), 0)},
			Element{0x00200052, "UI", pad([]byte(study+".0"), 0)},
			Element{0x00081140, "SQ", ref},
			Element{0x00090010, "LO", pad([]byte("PROBE CREATOR"), ' ')},
			Element{0x00091001, "LO", pad([]byte(ProbeValue(0x00091001)), ' ')},
		)
		out = append(out, in)
	}
	return out
}

// probeValue is a value of vr that identifies its attribute.
func probeValue(tag uint32, vr string) []byte {
	switch vr {
	case "SQ":
		return probeItem(
			Element{0x00091010, "LO", pad([]byte(ProbeValue(0x00091010)), ' ')},
			Element{0x00100010, "PN", pad([]byte(ProbeValue(0x00100010)), ' ')},
		)
	case "DA":
		return []byte("20240315")
	case "TM":
		return []byte("101500")
	case "DT":
		return []byte("20240315101500")
	case "AS":
		return []byte("045Y")
	case "IS", "DS":
		return []byte("7 ")
	case "UI":
		return pad([]byte(probeUIDRoot+strconv.FormatUint(uint64(tag), 10)), 0)
	case "UR":
		return pad([]byte("http://phi.invalid/"+ProbeValue(tag)), ' ')
	case "US", "SS":
		return binary.LittleEndian.AppendUint16(nil, 7)
	case "UL", "SL", "FL", "AT", "OF", "OL":
		return binary.LittleEndian.AppendUint32(nil, 7)
	case "FD", "SV", "UV", "OD", "OV":
		return binary.LittleEndian.AppendUint64(nil, 7)
	case "OB", "OW", "UN":
		return pad([]byte(ProbeValue(tag)), 0)
	}
	return pad([]byte(ProbeValue(tag)), ' ')
}

func pad(b []byte, with byte) []byte {
	if len(b)%2 == 1 {
		b = append(b, with)
	}
	return b
}

// probeItem is a sequence value of one item of defined length.
func probeItem(els ...Element) []byte {
	var it []byte
	for _, e := range els {
		it = appendElement(it, element{tag: e.Tag, vr: e.VR, value: e.Value})
	}
	b := binary.LittleEndian.AppendUint32(nil, 0xE000FFFE)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(it)))
	return append(b, it...)
}

// ProfileViolations compares an instance's header before (orig) and after
// (got) de-identification under o, attribute by attribute, items of
// sequences included, and describes every departure from the profile: an
// attribute X that is present, Z that is not empty, D that is empty or
// kept, U whose UIDs are not o.MapUID of the originals, K that changed, a
// private attribute that survived. Nil means the profile held.
func ProfileViolations(orig, got dicomcodec.Dataset, o dicomcodec.DeidentifyOptions) []string {
	var v []string
	profileWalk(orig, got, o, "", &v)
	return v
}

func profileWalk(orig, got dicomcodec.Dataset, o dicomcodec.DeidentifyOptions, path string, v *[]string) {
	for key := range got {
		if t, err := strconv.ParseUint(key, 16, 32); err == nil && (t>>16)%2 == 1 {
			*v = append(*v, fmt.Sprintf("%s%s: private attribute survived", path, key))
		}
	}
	for key, a := range orig {
		t, err := strconv.ParseUint(key, 16, 32)
		if err != nil || (t>>16)%2 == 1 || t == 0x7FE00010 {
			continue
		}
		g, present := got[key]
		name := path + key
		act := o.Action(uint32(t))
		switch {
		case act == 'X':
			if present {
				*v = append(*v, name+": X, present")
			}
		case act == 'Z':
			if !present || len(g.Value) > 0 || g.InlineBinary != "" || g.BulkDataURI != "" {
				*v = append(*v, fmt.Sprintf("%s: Z, present %v value %v", name, present, g.Value))
			}
		case a.VR == "SQ":
			if !present || len(g.Value) != len(a.Value) {
				*v = append(*v, fmt.Sprintf("%s: sequence %c, present %v, %d items of %d", name, act, present, len(g.Value), len(a.Value)))
				continue
			}
			for i := range a.Value {
				oi, _ := a.Value[i].(dicomcodec.Dataset)
				gi, _ := g.Value[i].(dicomcodec.Dataset)
				profileWalk(oi, gi, o, fmt.Sprintf("%s[%d].", name, i), v)
			}
		case act == 'U' && a.VR == "UI", act == 'D' && a.VR == "UI":
			want := make([]any, len(a.Value))
			for i, x := range a.Value {
				if want[i] = fmt.Sprint(x); !dicomcodec.IsWellKnownUID(want[i].(string)) {
					want[i] = o.MapUID(want[i].(string))
				}
			}
			if !present || fmt.Sprint(g.Value) != fmt.Sprint(want) {
				*v = append(*v, fmt.Sprintf("%s: U, got %v want %v", name, g.Value, want))
			}
		case t == 0x00100020 && o.MapPatientID != nil && len(a.Value) > 0:
			vals := make([]string, len(a.Value))
			for i, x := range a.Value {
				vals[i], _ = x.(string)
			}
			if want := o.MapPatientID(strings.Join(vals, `\`)); !present || fmt.Sprint(g.Value) != fmt.Sprint([]any{want}) {
				*v = append(*v, fmt.Sprintf("%s: Patient ID %v, want its pseudonym %s", name, g.Value, want))
			}
		case act == 'D', act == 'U':
			if !present || (len(g.Value) == 0 && g.InlineBinary == "") || (len(a.Value) > 0 && fmt.Sprint(g.Value) == fmt.Sprint(a.Value)) ||
				(a.InlineBinary != "" && g.InlineBinary == a.InlineBinary) {
				*v = append(*v, fmt.Sprintf("%s: D, present %v value %v (was %v)", name, present, g.Value, a.Value))
			}
		default: // K
			if !present || fmt.Sprint(g.Value) != fmt.Sprint(a.Value) || g.InlineBinary != a.InlineBinary {
				*v = append(*v, fmt.Sprintf("%s: K, present %v value %v (was %v)", name, present, g.Value, a.Value))
			}
		}
	}
}
