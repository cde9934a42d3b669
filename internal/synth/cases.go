package synth

import (
	"encoding/binary"
	"math"
	"sort"
	"strings"
)

// MetadataCase is a small synthetic instance built to exercise the DICOM
// JSON model (PS3.18 F.2) rather than volume: the golden-file tests of
// WADO-RS metadata store each case and compare what the gateway answers
// with a reviewed golden file and with dcmtk's dcm2json.
type MetadataCase struct {
	Name string
	Data []byte
}

// MetadataCases returns the cases, byte-identical on every call. All
// patients are synthetic.
func MetadataCases() []MetadataCase {
	const study = UIDRoot + ".77.1"
	return []MetadataCase{
		{"ct-sequences-explicit", caseSequences(study)},
		{"mr-multiframe-implicit", caseImplicitMultiframe(study)},
		{"us-jpeg-encapsulated", caseEncapsulated(study)},
	}
}

// caseSequences: Explicit VR Little Endian, UTF-8, a person name with all
// three component groups, multi-valued numbers, binary VRs, empty values, a
// private element kept inline, a defined-length and an undefined-length
// sequence (one nested two deep) and bulk data inside a sequence item.
func caseSequences(study string) []byte {
	lut := make([]byte, 8192)
	for i := 0; i+1 < len(lut); i += 2 {
		binary.LittleEndian.PutUint16(lut[i:], uint16(i/2))
	}
	els := []el{
		s(0x00080005, "CS", "ISO_IR 192"),
		s(0x00080008, "CS", `ORIGINAL\PRIMARY\AXIAL`),
		s(0x00080016, "UI", CTImageStorage),
		s(0x00080018, "UI", UIDRoot+".77.1.1.1"),
		s(0x00080020, "DA", "20261130"),
		s(0x00080030, "TM", "101530.25"),
		s(0x00080050, "SH", "ACC-77"),
		s(0x00080060, "CS", "CT"),
		s(0x00080090, "PN", ""),
		{tag: 0x00081140, vr: "SQ", items: [][]el{
			{s(0x00081150, "UI", CTImageStorage), s(0x00081155, "UI", UIDRoot+".77.1.1.0")},
			{s(0x00081150, "UI", CTImageStorage), s(0x00081155, "UI", UIDRoot+".77.1.1.2")},
		}},
		s(0x00090010, "LO", "SYNTH PRIVATE"),
		{tag: 0x00091001, vr: "OB", value: []byte{0xDE, 0xAD, 0xBE, 0xEF}},
		s(0x00100010, "PN", "Yamada^Tarou=山田^太郎=やまだ^たろう"),
		s(0x00100020, "LO", "SYN-77"),
		s(0x00100030, "DA", "19700101"),
		s(0x00100040, "CS", "M"),
		s(0x00104000, "LT", "line one\r\nline \"two\"\\ <three>"),
		{tag: 0x00189087, vr: "FD", value: f64(1000.5)},
		s(0x0020000D, "UI", study),
		s(0x0020000E, "UI", study+".1"),
		s(0x00200011, "IS", "3"),
		s(0x00200013, "IS", "7"),
		s(0x00200032, "DS", `-125.5\-120\30.25`),
		s(0x00200037, "DS", `1\0\0\0\1\0`),
		s(0x00201041, "DS", "30.25"),
		u16(0x00280002, 1),
		s(0x00280004, "CS", "MONOCHROME2"),
		u16(0x00280010, 4),
		u16(0x00280011, 4),
		u16(0x00280100, 16),
		u16(0x00280101, 12),
		u16(0x00280102, 11),
		u16(0x00280103, 1),
		{tag: 0x00280106, vr: "SS", value: le16(uint16(0xFC00))}, // -1024
		s(0x00281050, "DS", `40\400`),
		s(0x00281051, "DS", `400\1500`),
		s(0x00281052, "DS", "-1024"),
		s(0x00281053, "DS", "1"),
		{tag: 0x00283000, vr: "SQ", undefined: true, items: [][]el{{
			{tag: 0x00283002, vr: "US", value: append(append(le16(4096), le16(0)...), le16(16)...)},
			{tag: 0x00283006, vr: "OW", value: lut},
			{tag: 0x0040A730, vr: "SQ", undefined: true, items: [][]el{{
				s(0x0040A040, "CS", "TEXT"),
				s(0x0040A160, "UT", "nested two deep"),
			}}},
		}}},
		{tag: 0x00540081, vr: "US", value: le16(1)},
		{tag: 0x00181310, vr: "US", value: append(append(append(le16(0), le16(4)...), le16(4)...), le16(0)...)},
		{tag: 0x00189089, vr: "FD", value: append(append(f64(0.5), f64(-2.25e-7)...), f64(1)...)},
		{tag: 0x7FE00010, vr: "OW", value: make([]byte, 4*4*2)},
	}
	return file(CTImageStorage, UIDRoot+".77.1.1.1", ExplicitVRLittleEndian, els, true)
}

// caseImplicitMultiframe: Implicit VR Little Endian (VRs from the
// dictionary), three native frames, Latin-1 default character set, a
// retired group length, private elements, and sequences of defined and
// undefined length (nested), which a transcode to Explicit VR must rewrite.
func caseImplicitMultiframe(study string) []byte {
	els := []el{
		{tag: 0x00080000, vr: "UL", value: le32(1234)}, // retired group length; its value is never checked
		{tag: 0x00081140, vr: "SQ", items: [][]el{{
			s(0x00081150, "UI", MRImageStorage), s(0x00081155, "UI", UIDRoot+".77.1.2.0"),
		}}},
		s(0x00190010, "LO", "SYNTH PRIVATE"),
		{tag: 0x00191001, vr: "UN", value: []byte{1, 2, 3, 4}},
		{tag: 0x00400275, vr: "SQ", undefined: true, items: [][]el{{
			s(0x00400009, "SH", "SPS-1"),
			{tag: 0x00400008, vr: "SQ", items: [][]el{{
				s(0x00080100, "SH", "T2"), s(0x00080102, "SH", "99SYNTH"), s(0x00080104, "LO", "T2 weighted"),
			}}},
		}}},
		s(0x00080016, "UI", MRImageStorage),
		s(0x00080018, "UI", UIDRoot+".77.1.2.1"),
		s(0x00080060, "CS", "MR"),
		s(0x0008103E, "LO", "T2 multi-frame"),
		s(0x00100010, "PN", "Synthetic^Patient^^Dr"),
		s(0x00100020, "LO", "SYN-77"),
		s(0x0020000D, "UI", study),
		s(0x0020000E, "UI", study+".2"),
		s(0x00200011, "IS", "4"),
		s(0x00200013, "IS", "1"),
		u16(0x00280002, 1),
		s(0x00280004, "CS", "MONOCHROME2"),
		s(0x00280008, "IS", "3"),
		u16(0x00280010, 2),
		u16(0x00280011, 2),
		u16(0x00280100, 8),
		u16(0x00280101, 8),
		u16(0x00280102, 7),
		u16(0x00280103, 0),
		{tag: 0x7FE00010, vr: "OB", value: []byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}},
	}
	return file(MRImageStorage, UIDRoot+".77.1.2.1", "1.2.840.10008.1.2", els, false)
}

// caseEncapsulated: JPEG Baseline, two frames in three fragments behind a
// Basic Offset Table, colour attributes. The fragments are not real JPEG:
// metadata never decodes them.
func caseEncapsulated(study string) []byte {
	frag := func(n int, fill byte) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = fill
		}
		copy(b, []byte{0xFF, 0xD8})
		return b
	}
	f1, f2a, f2b := frag(10, 0x11), frag(6, 0x22), frag(4, 0x33)
	bot := append(le32(0), le32(uint32(8+len(f1)))...)
	els := []el{
		s(0x00080016, "UI", "1.2.840.10008.5.1.4.1.1.3.1"),
		s(0x00080018, "UI", UIDRoot+".77.1.3.1"),
		s(0x00080060, "CS", "US"),
		s(0x00100010, "PN", "Synthetic^Patient"),
		s(0x00100020, "LO", "SYN-77"),
		s(0x0020000D, "UI", study),
		s(0x0020000E, "UI", study+".3"),
		s(0x00200011, "IS", "5"),
		s(0x00200013, "IS", "1"),
		u16(0x00280002, 3),
		s(0x00280004, "CS", "YBR_FULL_422"),
		u16(0x00280006, 0),
		s(0x00280008, "IS", "2"),
		u16(0x00280010, 8),
		u16(0x00280011, 8),
		u16(0x00280100, 8),
		u16(0x00280101, 8),
		u16(0x00280102, 7),
		u16(0x00280103, 0),
		{tag: 0x7FE00010, vr: "OB", fragments: [][]byte{bot, f1, f2a, f2b}},
	}
	return file("1.2.840.10008.5.1.4.1.1.3.1", UIDRoot+".77.1.3.1", "1.2.840.10008.1.2.4.50", els, true)
}

// el is one element of a case: a value, sequence items, or encapsulated
// fragments (the first being the Basic Offset Table).
type el struct {
	tag       uint32
	vr        string
	value     []byte
	items     [][]el
	undefined bool // sequence of undefined length, with delimiters
	fragments [][]byte
}

func s(tag uint32, vr, v string) el { return el{tag: tag, vr: vr, value: []byte(v)} }
func u16(tag uint32, v uint16) el   { return el{tag: tag, vr: "US", value: le16(v)} }
func le16(v uint16) []byte          { return binary.LittleEndian.AppendUint16(nil, v) }
func le32(v uint32) []byte          { return binary.LittleEndian.AppendUint32(nil, v) }
func f64(v float64) []byte          { return binary.LittleEndian.AppendUint64(nil, math.Float64bits(v)) }

// file encodes a Part 10 file: preamble, explicit meta information, then
// els (sorted by tag) in the given syntax.
func file(class, sop, syntax string, els []el, explicit bool) []byte {
	var meta []byte
	for _, e := range []el{
		{tag: 0x00020001, vr: "OB", value: []byte{0, 1}},
		s(0x00020002, "UI", class),
		s(0x00020003, "UI", sop),
		s(0x00020010, "UI", syntax),
		s(0x00020012, "UI", implementationUID),
		s(0x00020013, "SH", "SYNTH_1"),
	} {
		meta = appendEl(meta, e, true)
	}
	b := make([]byte, 128, 4096)
	b = append(b, "DICM"...)
	b = appendEl(b, el{tag: 0x00020000, vr: "UL", value: le32(uint32(len(meta)))}, true)
	b = append(b, meta...)
	sort.SliceStable(els, func(i, j int) bool { return els[i].tag < els[j].tag })
	for _, e := range els {
		b = appendEl(b, e, explicit)
	}
	return b
}

func appendTag(b []byte, tag uint32) []byte {
	b = binary.LittleEndian.AppendUint16(b, uint16(tag>>16))
	return binary.LittleEndian.AppendUint16(b, uint16(tag))
}

// appendEl writes e, padding odd values (UI with NUL, binary with 0, text
// with a space) as PS3.5 6.2 requires.
func appendEl(b []byte, e el, explicit bool) []byte {
	v := e.value
	if len(v)%2 == 1 {
		pad := byte(' ')
		if e.vr == "UI" || e.vr == "OB" || e.vr == "UN" {
			pad = 0
		}
		v = append(v[:len(v):len(v)], pad)
	}
	var body []byte
	undefined := false
	switch {
	case e.items != nil:
		undefined = e.undefined
		for _, item := range e.items {
			var ib []byte
			sort.SliceStable(item, func(i, j int) bool { return item[i].tag < item[j].tag })
			for _, ie := range item {
				ib = appendEl(ib, ie, explicit)
			}
			body = appendTag(body, 0xFFFEE000)
			if undefined {
				body = binary.LittleEndian.AppendUint32(body, 0xFFFFFFFF)
				body = append(body, ib...)
				body = appendTag(body, 0xFFFEE00D)
				body = binary.LittleEndian.AppendUint32(body, 0)
			} else {
				body = binary.LittleEndian.AppendUint32(body, uint32(len(ib)))
				body = append(body, ib...)
			}
		}
		if undefined {
			body = appendTag(body, 0xFFFEE0DD)
			body = binary.LittleEndian.AppendUint32(body, 0)
		}
	case e.fragments != nil:
		undefined = true
		for _, f := range e.fragments {
			body = appendTag(body, 0xFFFEE000)
			body = binary.LittleEndian.AppendUint32(body, uint32(len(f)))
			body = append(body, f...)
		}
		body = appendTag(body, 0xFFFEE0DD)
		body = binary.LittleEndian.AppendUint32(body, 0)
	default:
		body = v
	}
	length := uint32(len(body))
	if undefined {
		length = 0xFFFFFFFF
	}
	b = appendTag(b, e.tag)
	switch {
	case !explicit:
		b = binary.LittleEndian.AppendUint32(b, length)
	case longForm(e.vr) || strings.Contains("OB OW SQ UT UN", e.vr):
		b = append(b, e.vr...)
		b = append(b, 0, 0)
		b = binary.LittleEndian.AppendUint32(b, length)
	default:
		b = append(b, e.vr...)
		b = binary.LittleEndian.AppendUint16(b, uint16(length))
	}
	return append(b, body...)
}
