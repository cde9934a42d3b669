package dicomcodec

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/suyashkumar/dicom/pkg/uid"
)

// ProfileAttribute is one row of PS3.15 Table E.1-1: an attribute and what
// the Basic Application Level Confidentiality Profile does with it. Actions
// are the table's codes: D (replace with a dummy value), Z (empty), X
// (remove), K (keep; a sequence's items are cleaned), C (clean), U (replace
// the UID), and the compound X/Z, X/D, Z/D, X/Z/D, X/Z/U* (the second
// applies where the first would break the IOD).
type ProfileAttribute struct {
	Tag  uint32
	Name string
	// Basic is the Basic Profile action; FullDates and
	// PatientCharacteristics the action under the Retain Longitudinal
	// Temporal Information with Full Dates and the Retain Patient
	// Characteristics options, "" where the option does not change it.
	Basic, FullDates, PatientCharacteristics string
}

// ConfidentialityProfile returns Table E.1-1 (PS3.15 2024b) as the
// rewriter applies it, without the private-attribute row (every private
// attribute is removed).
func ConfidentialityProfile() []ProfileAttribute { return slices.Clone(confidentialityProfile[:]) }

var profileByTag = func() map[uint32]ProfileAttribute {
	m := make(map[uint32]ProfileAttribute, len(confidentialityProfile))
	for _, a := range confidentialityProfile {
		m[a.Tag] = a
	}
	return m
}()

// DeidentifyOptions select the profile's options and the UID mapping.
type DeidentifyOptions struct {
	// RetainFullDates keeps dates and times (Retain Longitudinal Temporal
	// Information with Full Dates Option, code 113106).
	RetainFullDates bool
	// RetainPatientCharacteristics keeps sex, age, size, weight and the
	// like (Retain Patient Characteristics Option, code 113108).
	RetainPatientCharacteristics bool
	// MapUID returns the replacement of a UID (action U). It must be
	// deterministic, so references between instances stay coherent, and
	// return a valid UID. UIDs the standard registers (IsWellKnownUID:
	// classes, transfer syntaxes, well-known instances and frames of
	// reference) are never passed to it: they name no patient's data.
	MapUID func(uid string) string
	// MapPatientID, when set, returns the pseudonym of a Patient ID
	// (0010,0020) at any depth: deterministic and keyed, so the studies of
	// one patient stay one patient at the destination and those of two
	// patients stay two. Without it every Patient ID becomes the same dummy
	// value, which files every de-identified patient as one.
	MapPatientID func(id string) string
	// RemovedUnknown, when set, is called with the tag of each attribute
	// removed because the dictionary does not know it (newer than the
	// dictionary): such removals are safe but may drop what a newer IOD
	// needs, so the caller can record which.
	RemovedUnknown func(tag uint32)
}

// IsWellKnownUID reports whether uid is registered by the standard (PS3.6
// Annex A): a SOP class, transfer syntax, coding scheme, well-known SOP
// instance (the standard color palettes) or well-known frame of reference.
// Mapping it would break a reference to it and hide nothing. A UID a device
// made under the standard's root 1.2.840.10008 without registration is not
// one: it is mapped like any other.
func IsWellKnownUID(u string) bool {
	_, err := uid.Lookup(u)
	return err == nil
}

// keptUIDAttributes are the UI attributes outside Table E.1-1 that name a
// class, a transfer syntax, a coding scheme, a template or software, never
// an instance of a patient's data: they are kept. Every other UI attribute
// the table does not list (Multi-frame Source SOP Instance UID, SOP
// Instance UID of Concatenation Source, Referenced Fiducial UID, the frame
// of reference UIDs newer than the table, ...) is an instance identifier
// and is mapped like the table's U rows, so that neither the source's UIDs
// reach the peer nor references into the mapped study break.
var keptUIDAttributes = map[uint32]bool{
	0x00020002: true, // Media Storage SOP Class UID
	0x00020010: true, // Transfer Syntax UID
	0x00020012: true, // Implementation Class UID
	0x00020032: true, // RTV Communication SOP Class UID
	0x00020100: true, // Private Information Creator UID
	0x00041510: true, // Referenced SOP Class UID in File
	0x00041512: true, // Referenced Transfer Syntax UID in File
	0x0004151A: true, // Referenced Related General SOP Class UID in File
	0x00080016: true, // SOP Class UID
	0x0008001A: true, // Related General SOP Class UID
	0x0008001B: true, // Original SOP Class UID of a specialised class
	0x00080062: true, // SOP Classes in Study
	0x0008010C: true, // Coding Scheme UID
	0x0008010D: true, // Context Group Extension Creator UID
	0x00080117: true, // Context UID
	0x00080118: true, // Mapping Resource UID
	0x0008040E: true, // Stored Instance Transfer Syntax UID
	0x00081150: true, // Referenced SOP Class UID
	0x0008115A: true, // SOP Classes Supported
	0x00083002: true, // Available Transfer Syntax UID
	0x00089123: true, // Creator-Version UID
	0x00340003: true, // Flow Transfer Syntax UID
	0x0072007F: true, // Selector UI Value (a hanging protocol's match value)
	0x04000010: true, // MAC Calculation Transfer Syntax UID
	0x04000510: true, // Encrypted Content Transfer Syntax UID
	0x3010001F: true, // Segmentation Template UID
	0x30100052: true, // Pertinent SOP Classes in Study
	0x30100053: true, // Pertinent SOP Classes in Series
}

// tagPatientID is (0010,0020) Patient ID.
const tagPatientID = 0x00100020

// maxPatientID bounds a Patient ID read for its pseudonym. LO holds 64
// characters; a longer value is tolerated (senders overrun it), up to this
// bound, past which the instance is malformed.
const maxPatientID = 1024

// Action returns the action the rewriter takes for an attribute of tag
// under o, resolved to one of 'X', 'Z', 'D', 'K', 'U': private attributes,
// group lengths, curves and overlay data and comments are removed; of the
// attributes the table does not list, one the dictionary does not know is
// removed, a UI one is mapped unless keptUIDAttributes names it, any other
// is kept; C (clean) is applied as the
// basic action, since no cleaner can vouch for free text; of a compound
// action the one that keeps the IOD valid is taken (X/Z → Z, X/D, Z/D and
// X/Z/D → D), and X/Z/U* (the reference sequences) walks the sequence,
// replacing its UIDs.
func (o DeidentifyOptions) Action(tag uint32) byte {
	act, _ := o.action(tag)
	return act
}

// action is Action, and whether the attribute goes because the dictionary
// does not know it (for DeidentifyOptions.RemovedUnknown).
func (o DeidentifyOptions) action(tag uint32) (act byte, unknown bool) {
	group, elem := uint16(tag>>16), uint16(tag)
	switch {
	case group%2 == 1, elem == 0 && group != 0xFFFE:
		return 'X', false
	case group&0xFF00 == 0x5000:
		return 'X', false
	case group&0xFF00 == 0x6000 && (elem == 0x3000 || elem == 0x4000):
		return 'X', false
	}
	a, ok := profileByTag[tag]
	if !ok {
		switch dictVR(tag, 0) {
		case "UN":
			// A standard attribute the dictionary does not know (newer
			// than it): nothing says what it holds, nor whether its value
			// is a sequence of identifying items, so it goes.
			return 'X', true
		case "UI":
			if !keptUIDAttributes[tag] {
				return 'U', false
			}
		}
		return 'K', false
	}
	return o.tableAction(a), false
}

// tableAction resolves a's action under o's options.
func (o DeidentifyOptions) tableAction(a ProfileAttribute) byte {
	act := a.Basic
	if o.RetainFullDates && a.FullDates == "K" {
		act = "K"
	}
	if o.RetainPatientCharacteristics && a.PatientCharacteristics == "K" {
		act = "K"
	}
	switch act {
	case "X", "Z", "D", "K", "U":
		return act[0]
	case "X/Z":
		return 'Z'
	case "X/D", "Z/D", "X/Z/D":
		return 'D'
	case "X/Z/U*":
		return 'U'
	}
	return 'X'
}

// Codes of De-identification Method Code Sequence (PS3.16 CID 7050).
const (
	DeidentBasicProfile        = "113100"
	DeidentRetainFullDates     = "113106"
	DeidentRetainPatientChars  = "113108"
	deidentMeaningBasic        = "Basic Application Confidentiality Profile"
	deidentMeaningFullDates    = "Retain Longitudinal Temporal Information Full Dates Option"
	deidentMeaningPatientChars = "Retain Patient Characteristics Option"
)

// Deidentify streams the Part 10 instance r to w with the Basic
// Application Level Confidentiality Profile applied (PS3.15 E.1, Table
// E.1-1, with the options of o): every attribute of the dataset, in
// sequences at any depth, is removed, emptied, replaced by a dummy value,
// kept, or has its UIDs replaced by o.MapUID, as Action says; every private
// attribute is removed. Pixel data (7FE0,0010/0008/0009) is copied byte
// for byte. Patient Identity Removed (0012,0062) YES, De-identification
// Method (0012,0063), De-identification Method Code Sequence (0012,0064)
// and Longitudinal Temporal Information Modified (0028,0303) are set; the
// file meta's Media Storage SOP Instance UID is replaced like the SOP
// Instance UID and the preamble is zeroed. Sequences and items are written
// with undefined lengths, so no length needs the content ahead of it.
//
// The output is a function of the input and o only: sending an instance
// twice sends the same bytes. Memory is bounded by the file meta (64 KiB),
// one UID value (64 KiB) and the buffers; values are streamed. Implicit and
// Explicit VR Little Endian datasets are supported (compressed pixel data
// too); others fail with ErrUnsupportedTransferSyntax, unreadable input
// with ErrMalformed. It returns the bytes written.
func Deidentify(w io.Writer, r io.Reader, o DeidentifyOptions) (int64, error) {
	if o.MapUID == nil {
		return 0, fmt.Errorf("de-identification without a UID mapping: %w", ErrInvalidInput)
	}
	mapUID := o.MapUID
	o.MapUID = func(u string) string {
		if IsWellKnownUID(u) {
			return u
		}
		return mapUID(u)
	}
	// A read error of the source (storage, network) is not the instance's
	// fault: it is returned as it is, never as ErrMalformed, whichever
	// step met it.
	src := &sourceReader{r: r}
	n, err := rewriteStream(w, src, func(br *bufio.Reader, bw *bufio.Writer) error {
		return (&deidentifier{r: br, w: bw, o: o}).run()
	})
	if src.err != nil {
		return n, fmt.Errorf("de-identification: reading the instance: %w", src.err)
	}
	return n, err
}

// sourceReader remembers the first read error of r other than io.EOF.
type sourceReader struct {
	r   io.Reader
	err error
}

func (s *sourceReader) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	if err != nil && err != io.EOF && s.err == nil {
		s.err = err
	}
	return n, err
}

type deidentifier struct {
	r        *bufio.Reader
	w        *bufio.Writer
	o        DeidentifyOptions
	pos      int64 // bytes of the dataset read
	implicit bool
	inserts  []insertion // top-level elements still to write, in tag order
}

type insertion struct {
	tag uint32
	b   []byte
}

func deidMalformed(format string, args ...any) error {
	return fmt.Errorf("de-identification: "+format+": %w", append(args, ErrMalformed)...)
}

const (
	maxDeidMeta  = 64 << 10
	maxDeidUID   = 64 << 10
	maxDeidDepth = 64
	undefinedLen = 0xFFFFFFFF
)

func (d *deidentifier) readFull(n int) ([]byte, error) {
	b := make([]byte, n)
	if _, err := io.ReadFull(d.r, b); err != nil {
		return nil, deidMalformed("value truncated")
	}
	d.pos += int64(n)
	return b, nil
}

func (d *deidentifier) discard(n int64) error {
	for n > 0 {
		k, err := d.r.Discard(int(min(n, 1<<30)))
		d.pos += int64(k)
		n -= int64(k)
		if err != nil {
			return deidMalformed("value truncated")
		}
	}
	return nil
}

func (d *deidentifier) copyN(n int64) error {
	k, err := io.CopyN(d.w, d.r, n)
	d.pos += k
	if err != nil {
		if errors.Is(err, io.EOF) {
			return deidMalformed("value truncated")
		}
		return err
	}
	return nil
}

// explicitLETransferSyntax reports whether a dataset in ts is encoded in
// Explicit VR Little Endian (native or encapsulated pixel data).
func explicitLETransferSyntax(ts string) bool {
	switch ts {
	case tsExplicitVRLE, "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57",
		"1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81", "1.2.840.10008.1.2.4.90",
		"1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.5":
		return true
	}
	return false
}

func (d *deidentifier) run() error {
	head := make([]byte, 132)
	if _, err := io.ReadFull(d.r, head); err != nil || string(head[128:]) != "DICM" {
		return deidMalformed("not a Part 10 file (no DICM prefix)")
	}
	ts, err := d.meta()
	if err != nil {
		return err
	}
	switch {
	case ts == tsImplicitVRLE:
		d.implicit = true
	case explicitLETransferSyntax(ts):
	default:
		return fmt.Errorf("de-identification: transfer syntax %q: Implicit or Explicit VR Little Endian datasets only: %w", Printable(ts), ErrUnsupportedTransferSyntax)
	}
	d.inserts = d.methodElements()
	return d.dataset(-1, d.implicit, 0, true)
}

// meta reads the file meta group (always Explicit VR LE), writes it with
// Media Storage SOP Instance UID mapped, its group length recomputed and
// the private information (0002,0100/0102) left out, and returns the
// transfer syntax.
func (d *deidentifier) meta() (string, error) {
	var out []byte
	ts, read := "", 0
	for {
		b, err := d.r.Peek(8)
		if err != nil || binary.LittleEndian.Uint16(b) != 0x0002 {
			break
		}
		tag := uint32(binary.LittleEndian.Uint16(b))<<16 | uint32(binary.LittleEndian.Uint16(b[2:]))
		vr := string(b[4:6])
		if !knownVR(vr) {
			return "", deidMalformed("file meta element (%04X,%04X) has no valid VR", tag>>16, tag&0xFFFF)
		}
		hl, vl := 8, uint32(binary.LittleEndian.Uint16(b[6:]))
		if longVR(vr) {
			lb, err := d.r.Peek(12)
			if err != nil {
				return "", deidMalformed("file meta truncated")
			}
			hl, vl = 12, binary.LittleEndian.Uint32(lb[8:])
		}
		read += hl + int(min(vl, maxDeidMeta+1))
		if vl == undefinedLen || read > maxDeidMeta {
			return "", deidMalformed("file meta information longer than %d bytes or of undefined length", maxDeidMeta)
		}
		raw := make([]byte, hl+int(vl))
		if _, err := io.ReadFull(d.r, raw); err != nil {
			return "", deidMalformed("file meta truncated")
		}
		v := raw[hl:]
		switch tag {
		case 0x00020001, 0x00020002, 0x00020012, 0x00020013:
			// Version, Media Storage SOP Class, Implementation Class UID
			// and Version Name: kept. Every other element not handled
			// below goes: the group length (written anew), the AE titles
			// and presentation addresses that name the centre's machines
			// (Station AE Title is X in the dataset), private information.
		case 0x00020010:
			ts = strings.TrimRight(string(v), "\x00 ")
		case 0x00020003:
			uid := d.o.MapUID(strings.TrimRight(string(v), "\x00 "))
			out = appendElementLE(out, tag, "UI", false, padded(uid, 0))
			continue
		default:
			continue
		}
		out = append(out, raw...)
	}
	if ts == "" {
		return "", deidMalformed("file meta has no transfer syntax")
	}
	d.w.Write(make([]byte, 128))
	d.w.WriteString("DICM")
	d.w.Write(appendElementLE(nil, 0x00020000, "UL", false, binary.LittleEndian.AppendUint32(nil, uint32(len(out)))))
	d.w.Write(out)
	return ts, nil
}

// appendElementLE appends an element with a defined length in Implicit or
// Explicit VR Little Endian.
func appendElementLE(b []byte, tag uint32, vr string, implicit bool, v []byte) []byte {
	b = binary.LittleEndian.AppendUint16(b, uint16(tag>>16))
	b = binary.LittleEndian.AppendUint16(b, uint16(tag))
	switch {
	case implicit:
		b = binary.LittleEndian.AppendUint32(b, uint32(len(v)))
	case longVR(vr):
		b = append(b, vr[0], vr[1], 0, 0)
		b = binary.LittleEndian.AppendUint32(b, uint32(len(v)))
	default:
		b = append(b, vr[0], vr[1])
		b = binary.LittleEndian.AppendUint16(b, uint16(len(v)))
	}
	return append(b, v...)
}

// methodElements are the top-level elements that record the
// de-identification, in tag order.
func (d *deidentifier) methodElements() []insertion {
	method := "Basic Profile"
	codes := [][2]string{{DeidentBasicProfile, deidentMeaningBasic}}
	if d.o.RetainFullDates {
		method += ", Retain Full Dates"
		codes = append(codes, [2]string{DeidentRetainFullDates, deidentMeaningFullDates})
	}
	if d.o.RetainPatientCharacteristics {
		method += ", Retain Patient Characteristics"
		codes = append(codes, [2]string{DeidentRetainPatientChars, deidentMeaningPatientChars})
	}
	var seq []byte
	for _, c := range codes {
		var it []byte
		it = appendElementLE(it, 0x00080100, "SH", d.implicit, padded(c[0], ' '))
		it = appendElementLE(it, 0x00080102, "SH", d.implicit, padded("DCM", ' '))
		it = appendElementLE(it, 0x00080104, "LO", d.implicit, padded(c[1], ' '))
		seq = append(seq, item(it)...)
	}
	temporal := "REMOVED"
	if d.o.RetainFullDates {
		temporal = "UNMODIFIED"
	}
	return []insertion{
		{0x00120062, appendElementLE(nil, 0x00120062, "CS", d.implicit, padded("YES", ' '))},
		{0x00120063, appendElementLE(nil, 0x00120063, "LO", d.implicit, padded(method, ' '))},
		{0x00120064, appendElementLE(nil, 0x00120064, "SQ", d.implicit, seq)},
		{0x00280303, appendElementLE(nil, 0x00280303, "CS", d.implicit, padded(temporal, ' '))},
	}
}

// insertUpTo writes the pending insertions whose tag is at most tag and
// reports whether one had exactly tag (the instance's own element is then
// dropped).
func (d *deidentifier) insertUpTo(tag uint32) bool {
	same := false
	for len(d.inserts) > 0 && d.inserts[0].tag <= tag {
		same = same || d.inserts[0].tag == tag
		d.w.Write(d.inserts[0].b)
		d.inserts = d.inserts[1:]
	}
	return same
}

// header reads an element header; vr is the dictionary's in implicit VR.
func (d *deidentifier) header(implicit bool) (tag uint32, vr string, vl uint32, err error) {
	b, err := d.r.Peek(8)
	if err != nil {
		return 0, "", 0, deidMalformed("element header truncated")
	}
	tag = uint32(binary.LittleEndian.Uint16(b))<<16 | uint32(binary.LittleEndian.Uint16(b[2:]))
	if implicit || tag>>16 == 0xFFFE {
		vl = binary.LittleEndian.Uint32(b[4:])
		_, _ = d.r.Discard(8)
		d.pos += 8
		if tag>>16 == 0xFFFE {
			return tag, "", vl, nil
		}
		return tag, dictVR(tag, 0), vl, nil
	}
	vr = string(b[4:6])
	if !knownVR(vr) {
		return 0, "", 0, deidMalformed("element (%04X,%04X) has no valid VR", tag>>16, tag&0xFFFF)
	}
	if !longVR(vr) {
		_, _ = d.r.Discard(8)
		d.pos += 8
		return tag, vr, uint32(binary.LittleEndian.Uint16(b[6:])), nil
	}
	lb, err := d.r.Peek(12)
	if err != nil {
		return 0, "", 0, deidMalformed("element header truncated")
	}
	vl = binary.LittleEndian.Uint32(lb[8:])
	_, _ = d.r.Discard(12)
	d.pos += 12
	return tag, vr, vl, nil
}

// writeHeader writes an element header in the dataset's encoding.
func (d *deidentifier) writeHeader(tag uint32, vr string, implicit bool, vl uint32) {
	var b []byte
	b = binary.LittleEndian.AppendUint16(b, uint16(tag>>16))
	b = binary.LittleEndian.AppendUint16(b, uint16(tag))
	switch {
	case implicit:
		b = binary.LittleEndian.AppendUint32(b, vl)
	case longVR(vr):
		b = append(b, vr[0], vr[1], 0, 0)
		b = binary.LittleEndian.AppendUint32(b, vl)
	default:
		b = append(b, vr[0], vr[1])
		b = binary.LittleEndian.AppendUint16(b, uint16(vl))
	}
	d.w.Write(b)
}

func isPixelDataTag(tag uint32) bool {
	return tag == 0x7FE00010 || tag == 0x7FE00008 || tag == 0x7FE00009
}

// dataset rewrites the elements of the top-level dataset (top), or of an
// item up to end (a byte position) or, for end -1, up to its delimiter.
func (d *deidentifier) dataset(end int64, implicit bool, depth int, top bool) error {
	if depth > maxDeidDepth {
		return deidMalformed("sequences nested too deep")
	}
	for {
		if end >= 0 {
			if d.pos == end {
				return nil
			}
			if d.pos > end {
				return deidMalformed("element overruns its item")
			}
		}
		b, err := d.r.Peek(4)
		if err != nil {
			if top && len(b) == 0 {
				d.insertUpTo(0xFFFFFFFF)
				return nil
			}
			return deidMalformed("item not delimited")
		}
		tag := uint32(binary.LittleEndian.Uint16(b))<<16 | uint32(binary.LittleEndian.Uint16(b[2:]))
		if tag == 0xFFFEE00D && !top && end < 0 {
			if _, err := d.readFull(8); err != nil {
				return err
			}
			return nil
		}
		if tag>>16 == 0xFFFE {
			return deidMalformed("(%04X,%04X) inside a dataset", tag>>16, tag&0xFFFF)
		}
		replaced := top && d.insertUpTo(tag)
		tag, vr, vl, err := d.header(implicit)
		if err != nil {
			return err
		}
		if replaced {
			_, itemsImplicit := isSequence(tag, vr, vl, implicit)
			if err := d.skipValue(vl, itemsImplicit, depth); err != nil {
				return err
			}
			continue
		}
		if err := d.element(tag, vr, vl, implicit, depth); err != nil {
			return err
		}
	}
}

// isSequence reports whether an element is to be walked as a sequence, and
// in which encoding its items are: a VR of SQ, a UN of undefined length or
// of a tag the dictionary calls SQ (PS3.5 6.2.2: a sequence whose VR the
// sender did not know, its items in Implicit VR LE; walked, not copied
// opaque, so nothing identifying rides through in it), in implicit VR a
// dictionary SQ or any undefined length.
func isSequence(tag uint32, vr string, vl uint32, implicit bool) (seq bool, itemsImplicit bool) {
	switch {
	case vr == "SQ":
		return true, implicit
	case vr == "UN" && (vl == undefinedLen || dictVR(tag, 0) == "SQ"):
		return true, true
	case implicit && vl == undefinedLen:
		return true, true
	}
	return false, implicit
}

func (d *deidentifier) element(tag uint32, vr string, vl uint32, implicit bool, depth int) error {
	if isPixelDataTag(tag) {
		d.writeHeader(tag, vr, implicit, vl)
		if vl == undefinedLen {
			return d.copyFragments()
		}
		return d.copyN(int64(vl))
	}
	act, unknown := d.o.action(tag)
	if tag == tagBurnedInAnnotation && act == 'K' {
		return d.refuseBurnedIn(vr, vl, implicit)
	}
	seq, itemsImplicit := isSequence(tag, vr, vl, implicit)
	// A skipped sequence's items are read in their own encoding.
	if act == 'X' {
		if unknown && d.o.RemovedUnknown != nil {
			d.o.RemovedUnknown(tag)
		}
		return d.skipValue(vl, itemsImplicit, depth)
	}
	if act == 'Z' {
		d.writeHeader(tag, vr, implicit, 0)
		return d.skipValue(vl, itemsImplicit, depth)
	}
	if seq {
		// K, D and U of a sequence: its items are cleaned by the same
		// table, written with undefined lengths.
		d.writeHeader(tag, vr, implicit, undefinedLen)
		return d.sequence(vl, itemsImplicit, depth+1)
	}
	switch act {
	case 'U', 'D':
		if tag == tagPatientID && d.o.MapPatientID != nil {
			return d.mapPatientID(vr, vl, implicit)
		}
		if vr == "UI" || (vr == "UN" && dictVR(tag, 0) == "UI") {
			// A UID sent as UN (its sender did not know the VR) is mapped
			// too, and written as the UI it is.
			return d.mapUIDs(tag, "UI", vl, implicit)
		}
		v := dummyValue(vr)
		d.writeHeader(tag, vr, implicit, uint32(len(v)))
		d.w.Write(v)
		return d.skipValue(vl, implicit, depth)
	}
	if vl == undefinedLen {
		return deidMalformed("(%04X,%04X) %s of undefined length", tag>>16, tag&0xFFFF, vr)
	}
	d.writeHeader(tag, vr, implicit, vl)
	return d.copyN(int64(vl))
}

// tagBurnedInAnnotation is (0028,0301) Burned In Annotation.
const tagBurnedInAnnotation = 0x00280301

// ErrBurnedInAnnotation refuses an instance whose pixels carry identifying
// text (Burned In Annotation YES): the Basic Profile cleans attributes,
// not pixels, and this rewriter has no Clean Pixel Data option.
// It wraps ErrInvalidInput: sending the instance again will not help.
var ErrBurnedInAnnotation = fmt.Errorf("de-identification: Burned In Annotation (0028,0301) is YES: the pixels carry identifying text, which the Basic Profile does not remove: %w", ErrInvalidInput)

// refuseBurnedIn copies Burned In Annotation through, unless it is YES.
func (d *deidentifier) refuseBurnedIn(vr string, vl uint32, implicit bool) error {
	if vl > 64 {
		return deidMalformed("(0028,0301) of %d bytes", vl)
	}
	v, err := d.readFull(int(vl))
	if err != nil {
		return err
	}
	if !strings.EqualFold(strings.TrimSpace(strings.TrimRight(string(v), "\x00")), "NO") {
		// YES, or a value that does not say NO: the pixels may carry text.
		return ErrBurnedInAnnotation
	}
	d.writeHeader(tagBurnedInAnnotation, vr, implicit, vl)
	d.w.Write(v)
	return nil
}

// mapUIDs writes a UI element with every value replaced by MapUID.
func (d *deidentifier) mapUIDs(tag uint32, vr string, vl uint32, implicit bool) error {
	if vl > maxDeidUID {
		return deidMalformed("(%04X,%04X) UID value of %d bytes", tag>>16, tag&0xFFFF, vl)
	}
	raw, err := d.readFull(int(vl))
	if err != nil {
		return err
	}
	vals := strings.Split(strings.TrimRight(string(raw), "\x00 "), `\`)
	for i, v := range vals {
		if v = strings.TrimSpace(strings.TrimRight(v, "\x00")); v != "" {
			vals[i] = d.o.MapUID(v)
		}
	}
	out := padded(strings.Join(vals, `\`), 0)
	if len(out) > 0xFFFF {
		return deidMalformed("(%04X,%04X) mapped UIDs too long", tag>>16, tag&0xFFFF)
	}
	d.writeHeader(tag, vr, implicit, uint32(len(out)))
	d.w.Write(out)
	return nil
}

// mapPatientID writes Patient ID as its pseudonym (MapPatientID), in the
// element's own VR. An empty Patient ID gets the dummy value: a pseudonym
// of "" would link every patient without one.
func (d *deidentifier) mapPatientID(vr string, vl uint32, implicit bool) error {
	if vl > maxPatientID {
		return deidMalformed("(0010,0020) Patient ID of %d bytes", vl)
	}
	raw, err := d.readFull(int(vl))
	if err != nil {
		return err
	}
	out := dummyValue("LO")
	if id := strings.TrimSpace(strings.TrimRight(string(raw), "\x00")); id != "" {
		out = padded(d.o.MapPatientID(id), ' ')
	}
	d.writeHeader(tagPatientID, vr, implicit, uint32(len(out)))
	d.w.Write(out)
	return nil
}

// dummyValue is a non-empty value of vr that identifies nobody.
func dummyValue(vr string) []byte {
	switch vr {
	case "DA":
		return []byte("19000101")
	case "TM":
		return []byte("000000")
	case "DT":
		return []byte("19000101000000")
	case "AS":
		return []byte("000Y")
	case "IS", "DS":
		return []byte("0 ")
	case "UR":
		return []byte("urn:anonymized")
	case "US", "SS", "OB", "OW", "UN":
		return make([]byte, 2)
	case "UL", "SL", "FL", "AT", "OF", "OL":
		return make([]byte, 4)
	case "FD", "SV", "UV", "OD", "OV":
		return make([]byte, 8)
	}
	return []byte("ANONYMIZED")
}

// sequence rewrites the items of a sequence of length vl (undefined: up to
// its delimiter) as items of undefined length, and writes the delimiter.
func (d *deidentifier) sequence(vl uint32, implicit bool, depth int) error {
	if depth > maxDeidDepth {
		return deidMalformed("sequences nested too deep")
	}
	end := int64(-1)
	if vl != undefinedLen {
		end = d.pos + int64(vl)
	}
	for {
		if end >= 0 && d.pos >= end {
			if d.pos > end {
				return deidMalformed("item overruns its sequence")
			}
			break
		}
		tag, _, ivl, err := d.header(true)
		if err != nil {
			return err
		}
		if tag == 0xFFFEE0DD && end < 0 {
			break
		}
		if tag != 0xFFFEE000 {
			return deidMalformed("(%04X,%04X) inside a sequence", tag>>16, tag&0xFFFF)
		}
		d.writeItemTag(0xFFFEE000, undefinedLen)
		iend := int64(-1)
		if ivl != undefinedLen {
			iend = d.pos + int64(ivl)
			if end >= 0 && iend > end {
				return deidMalformed("item overruns its sequence")
			}
		}
		if err := d.dataset(iend, implicit, depth, false); err != nil {
			return err
		}
		d.writeItemTag(0xFFFEE00D, 0)
	}
	d.writeItemTag(0xFFFEE0DD, 0)
	return nil
}

func (d *deidentifier) writeItemTag(tag, vl uint32) {
	var b [8]byte
	binary.LittleEndian.PutUint16(b[0:], uint16(tag>>16))
	binary.LittleEndian.PutUint16(b[2:], uint16(tag))
	binary.LittleEndian.PutUint32(b[4:], vl)
	d.w.Write(b[:])
}

// skipValue reads past a value, through the delimiters of an undefined
// length.
func (d *deidentifier) skipValue(vl uint32, implicit bool, depth int) error {
	if vl != undefinedLen {
		return d.discard(int64(vl))
	}
	if depth > maxDeidDepth {
		return deidMalformed("sequences nested too deep")
	}
	for {
		tag, _, ivl, err := d.header(true)
		if err != nil {
			return err
		}
		switch tag {
		case 0xFFFEE0DD:
			return nil
		case 0xFFFEE000:
			if ivl != undefinedLen {
				if err := d.discard(int64(ivl)); err != nil {
					return err
				}
				continue
			}
			if err := d.skipItem(implicit, depth+1); err != nil {
				return err
			}
		default:
			return deidMalformed("(%04X,%04X) inside a sequence", tag>>16, tag&0xFFFF)
		}
	}
}

func (d *deidentifier) skipItem(implicit bool, depth int) error {
	for {
		b, err := d.r.Peek(4)
		if err != nil {
			return deidMalformed("item not delimited")
		}
		if bytes.Equal(b, []byte{0xFE, 0xFF, 0x0D, 0xE0}) {
			_, err := d.readFull(8)
			return err
		}
		_, _, vl, err := d.header(implicit)
		if err != nil {
			return err
		}
		if err := d.skipValue(vl, implicit, depth); err != nil {
			return err
		}
	}
}

// copyFragments copies encapsulated pixel data: items of defined length up
// to the sequence delimiter.
func (d *deidentifier) copyFragments() error {
	for {
		tag, _, vl, err := d.header(true)
		if err != nil {
			return err
		}
		d.writeItemTag(tag, vl)
		switch {
		case tag == 0xFFFEE0DD:
			return nil
		case tag == 0xFFFEE000 && vl != undefinedLen:
			if err := d.copyN(int64(vl)); err != nil {
				return err
			}
		default:
			return deidMalformed("(%04X,%04X) among pixel data fragments", tag>>16, tag&0xFFFF)
		}
	}
}
