// Package synth writes synthetic DICOM instances (Explicit VR Little Endian,
// 16-bit greyscale, synthetic patients) as streams, so that tests,
// benchmarks, the demo and the soak can make studies of any size, up to
// gigabyte multi-frame instances, without holding pixel data in memory and
// without using real patient data.
package synth

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"sort"
	"strconv"
)

// Transfer syntax and SOP class UIDs used by the generator.
const (
	ExplicitVRLittleEndian = "1.2.840.10008.1.2.1"
	CTImageStorage         = "1.2.840.10008.5.1.4.1.1.2"
	MRImageStorage         = "1.2.840.10008.5.1.4.1.1.4"
	SecondaryCapture       = "1.2.840.10008.5.1.4.1.1.7"
	implementationUID      = "1.2.826.0.1.3680043.10.1466.1"
	// UIDRoot is the prefix of every UID the generator makes.
	UIDRoot = "1.2.826.0.1.3680043.10.1466.9"
)

// Instance describes one synthetic instance. Zero fields get defaults.
type Instance struct {
	PatientName       string // PN, e.g. "Doe^Jane"
	PatientID         string
	IssuerOfPatientID string
	// OtherPatientIDs become items of the Other Patient IDs Sequence
	// (0010,1002), e.g. the NHS number with issuer "NHS"; written with
	// undefined lengths when UndefinedLengthSequences is set.
	OtherPatientIDs          []OtherPatientID
	UndefinedLengthSequences bool
	PatientBirthDate         string // YYYYMMDD
	PatientSex               string
	StudyInstanceUID         string
	SeriesInstanceUID        string
	SOPInstanceUID           string
	SOPClassUID              string
	StudyDate                string
	StudyTime                string
	AccessionNumber          string
	StudyID                  string
	StudyDescription         string
	SeriesDescription        string
	Modality                 string
	ReferringPhysician       string
	SeriesNumber             int
	InstanceNumber           int
	Rows, Columns            int
	Frames                   int
	// PixelSeed seeds the pseudo-random pixel values, so equal seeds give
	// byte-identical instances.
	PixelSeed uint64
	// Extra are further elements of the dataset, merged in tag order; one
	// with the tag of a built-in element replaces it.
	Extra []Element
}

// Element is an extra element of an Instance (Explicit VR Little Endian,
// defined length): Value is the encoded value, of even length.
type Element struct {
	Tag   uint32
	VR    string
	Value []byte
}

// OtherPatientID is one item of the Other Patient IDs Sequence.
type OtherPatientID struct {
	ID, Issuer string
}

func (in *Instance) defaults() {
	if in.SOPClassUID == "" {
		in.SOPClassUID = CTImageStorage
	}
	if in.Modality == "" {
		in.Modality = "CT"
	}
	if in.Rows == 0 {
		in.Rows = 64
	}
	if in.Columns == 0 {
		in.Columns = 64
	}
	if in.Frames == 0 {
		in.Frames = 1
	}
	if in.SeriesNumber == 0 {
		in.SeriesNumber = 1
	}
	if in.InstanceNumber == 0 {
		in.InstanceNumber = 1
	}
}

// PixelBytes is the length of the Pixel Data value.
func (in Instance) PixelBytes() int64 {
	in.defaults()
	return int64(in.Rows) * int64(in.Columns) * int64(in.Frames) * 2
}

type element struct {
	tag   uint32
	vr    string
	value []byte
	// undefinedLength writes 0xFFFFFFFF as the length (value then ends
	// with its own delimiter).
	undefinedLength bool
}

func str(tag uint32, vr, v string) element {
	b := []byte(v)
	if len(b)%2 == 1 {
		if vr == "UI" || vr == "OB" {
			b = append(b, 0)
		} else {
			b = append(b, ' ')
		}
	}
	return element{tag: tag, vr: vr, value: b}
}

func us(tag uint32, v int) element {
	return element{tag: tag, vr: "US", value: binary.LittleEndian.AppendUint16(nil, uint16(v))}
}

func (in Instance) dataset() []element {
	in.defaults()
	els := []element{
		str(0x00080005, "CS", "ISO_IR 192"),
		str(0x00080016, "UI", in.SOPClassUID),
		str(0x00080018, "UI", in.SOPInstanceUID),
		str(0x00080020, "DA", in.StudyDate),
		str(0x00080030, "TM", in.StudyTime),
		str(0x00080050, "SH", in.AccessionNumber),
		str(0x00080060, "CS", in.Modality),
		str(0x00080090, "PN", in.ReferringPhysician),
		str(0x00081030, "LO", in.StudyDescription),
		str(0x0008103E, "LO", in.SeriesDescription),
		str(0x00100010, "PN", in.PatientName),
		str(0x00100020, "LO", in.PatientID),
		str(0x00100030, "DA", in.PatientBirthDate),
		str(0x00100040, "CS", in.PatientSex),
		str(0x0020000D, "UI", in.StudyInstanceUID),
		str(0x0020000E, "UI", in.SeriesInstanceUID),
		str(0x00200010, "SH", in.StudyID),
		str(0x00200011, "IS", strconv.Itoa(in.SeriesNumber)),
		str(0x00200013, "IS", strconv.Itoa(in.InstanceNumber)),
		str(0x00280002, "US", ""), // replaced below
		str(0x00280004, "CS", "MONOCHROME2"),
		str(0x00280010, "US", ""),
		str(0x00280011, "US", ""),
		str(0x00280100, "US", ""),
		str(0x00280101, "US", ""),
		str(0x00280102, "US", ""),
		str(0x00280103, "US", ""),
		str(0x00281050, "DS", "40"),
		str(0x00281051, "DS", "400"),
		str(0x00281052, "DS", "-1024"),
		str(0x00281053, "DS", "1"),
	}
	if in.Frames > 1 {
		els = append(els, str(0x00280008, "IS", strconv.Itoa(in.Frames)))
	}
	if in.IssuerOfPatientID != "" {
		els = append(els, str(0x00100021, "LO", in.IssuerOfPatientID))
	}
	if len(in.OtherPatientIDs) > 0 {
		els = append(els, in.otherPatientIDs())
	}
	ints := map[uint32]int{0x00280002: 1, 0x00280010: in.Rows, 0x00280011: in.Columns, 0x00280100: 16, 0x00280101: 12, 0x00280102: 11, 0x00280103: 0}
	for i, e := range els {
		if v, ok := ints[e.tag]; ok {
			els[i] = us(e.tag, v)
		}
	}
	for _, x := range in.Extra {
		e := element{tag: x.Tag, vr: x.VR, value: x.Value}
		if i := slices.IndexFunc(els, func(o element) bool { return o.tag == x.Tag }); i >= 0 {
			els[i] = e
		} else {
			els = append(els, e)
		}
	}
	sort.Slice(els, func(i, j int) bool { return els[i].tag < els[j].tag })
	return els
}

// otherPatientIDs encodes the Other Patient IDs Sequence: each item holds
// Patient ID, Issuer of Patient ID and Type of Patient ID (TEXT).
func (in Instance) otherPatientIDs() element {
	var seq []byte
	for _, o := range in.OtherPatientIDs {
		var item []byte
		for _, e := range []element{str(0x00100020, "LO", o.ID), str(0x00100021, "LO", o.Issuer), str(0x00100022, "CS", "TEXT")} {
			item = appendElement(item, e)
		}
		seq = binary.LittleEndian.AppendUint32(seq, 0xE000FFFE)
		if in.UndefinedLengthSequences {
			seq = binary.LittleEndian.AppendUint32(seq, 0xFFFFFFFF)
			seq = append(seq, item...)
			seq = binary.LittleEndian.AppendUint32(seq, 0xE00DFFFE)
			seq = binary.LittleEndian.AppendUint32(seq, 0)
			continue
		}
		seq = binary.LittleEndian.AppendUint32(seq, uint32(len(item)))
		seq = append(seq, item...)
	}
	if in.UndefinedLengthSequences {
		seq = binary.LittleEndian.AppendUint32(seq, 0xE0DDFFFE)
		seq = binary.LittleEndian.AppendUint32(seq, 0)
		return element{0x00101002, "SQ", seq, true}
	}
	return element{0x00101002, "SQ", seq, false}
}

func longForm(vr string) bool {
	switch vr {
	case "OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UC", "UN", "UR", "UT", "SV", "UV":
		return true
	}
	return false
}

func appendElement(b []byte, e element) []byte {
	b = binary.LittleEndian.AppendUint16(b, uint16(e.tag>>16))
	b = binary.LittleEndian.AppendUint16(b, uint16(e.tag))
	b = append(b, e.vr...)
	if longForm(e.vr) {
		b = append(b, 0, 0)
		if e.undefinedLength {
			b = binary.LittleEndian.AppendUint32(b, 0xFFFFFFFF)
		} else {
			b = binary.LittleEndian.AppendUint32(b, uint32(len(e.value)))
		}
	} else {
		b = binary.LittleEndian.AppendUint16(b, uint16(len(e.value)))
	}
	return append(b, e.value...)
}

// Header returns every byte of the instance before the Pixel Data value:
// preamble, meta information, dataset and the Pixel Data element header.
func (in Instance) Header() []byte {
	in.defaults()
	var meta []byte
	for _, e := range []element{
		{tag: 0x00020001, vr: "OB", value: []byte{0, 1}},
		str(0x00020002, "UI", in.SOPClassUID),
		str(0x00020003, "UI", in.SOPInstanceUID),
		str(0x00020010, "UI", ExplicitVRLittleEndian),
		str(0x00020012, "UI", implementationUID),
		str(0x00020013, "SH", "SYNTH_1"),
	} {
		meta = appendElement(meta, e)
	}
	b := make([]byte, 128, 1024)
	b = append(b, "DICM"...)
	b = appendElement(b, element{tag: 0x00020000, vr: "UL", value: binary.LittleEndian.AppendUint32(nil, uint32(len(meta)))})
	b = append(b, meta...)
	for _, e := range in.dataset() {
		b = appendElement(b, e)
	}
	// Pixel Data: OW, long form, value streamed by WriteTo.
	b = binary.LittleEndian.AppendUint16(b, 0x7FE0)
	b = binary.LittleEndian.AppendUint16(b, 0x0010)
	b = append(b, "OW\x00\x00"...)
	return binary.LittleEndian.AppendUint32(b, uint32(in.PixelBytes()))
}

// Size is the total length in bytes of the encoded instance.
func (in Instance) Size() int64 { return int64(len(in.Header())) + in.PixelBytes() }

// WriteTo streams the encoded instance to w with constant memory.
func (in Instance) WriteTo(w io.Writer) (int64, error) {
	in.defaults()
	if in.PixelBytes() > 0xFFFFFFF0 {
		return 0, fmt.Errorf("synth: pixel data of %d bytes does not fit a 32-bit length", in.PixelBytes())
	}
	bw := bufio.NewWriterSize(w, 64<<10)
	n, err := bw.Write(in.Header())
	total := int64(n)
	if err != nil {
		return total, err
	}
	rng := rand.New(rand.NewPCG(in.PixelSeed, in.PixelSeed^0x9e3779b97f4a7c15))
	buf := make([]byte, 64<<10)
	for left := in.PixelBytes(); left > 0; {
		chunk := min(left, int64(len(buf)))
		for i := int64(0); i+1 < chunk; i += 2 {
			binary.LittleEndian.PutUint16(buf[i:], uint16(rng.IntN(4096)))
		}
		n, err := bw.Write(buf[:chunk])
		total += int64(n)
		if err != nil {
			return total, err
		}
		left -= chunk
	}
	return total, bw.Flush()
}

// Reader returns the encoded instance as a stream (a goroutine writes it into
// a pipe; it ends when the reader is drained or closed).
func (in Instance) Reader() io.ReadCloser {
	pr, pw := io.Pipe()
	go func() {
		_, err := in.WriteTo(pw)
		pw.CloseWithError(err)
	}()
	return pr
}
