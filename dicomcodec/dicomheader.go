package dicomcodec

import (
	"bufio"
	"compress/flate"
	"compress/zlib"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/suyashkumar/dicom/pkg/charset"
	"github.com/suyashkumar/dicom/pkg/tag"
)

// Why a structural reader of our own rather than dicom.Parser: the library
// allocates whatever length an element declares before reading it, recurses
// without a depth bound, accepts truncated input and gzip as success, panics
// on transfer syntaxes missing from its registry, rejects private sequences
// sent as UN (CP-246), reads OD/OF/OL/OV/SV/UV as lossy strings, and exposes
// no byte offsets (../shared/notes/libraries.md 1.8-1.9). Every one of those
// had to be checked or redone by a pre-scan, and once the pre-scan walks every
// element with bounds the values are a few lines more. The library still
// supplies what is hard to get right by hand: the data dictionary (VRs of
// implicit-VR elements) and the character set decoders.

// HeaderLimits bound what ParseHeader accepts, so that a small hostile input
// can never make it allocate or work without bound. Zero fields take the
// value of DefaultHeaderLimits.
type HeaderLimits struct {
	// MaxHeaderBytes bounds the bytes before the top-level Pixel Data (the
	// whole dataset when there is none); ingest holds them in memory while it
	// waits for the UIDs that name the storage key. Of a deflated dataset it
	// bounds both the inflated header and the compressed bytes it takes.
	MaxHeaderBytes int64
	// MaxElements bounds the number of elements, nested ones included.
	MaxElements int
	// MaxDatasetMemory bounds the estimated memory of the parsed header
	// (the Dataset's maps, values and strings, see valueCost), which can be
	// many times the bytes they came from: a 2-byte US value becomes a
	// boxed int64 in a slice of any, an empty element a map entry. Zero
	// means datasetBytesPerElement for each of MaxElements.
	MaxDatasetMemory int64
	// MaxDepth bounds sequence nesting.
	MaxDepth int
	// MaxInflatedBytes bounds the inflated size of a whole Deflated
	// Explicit VR Little Endian dataset, checked by Tail (a zip bomb is
	// otherwise cheap to send).
	MaxInflatedBytes int64
}

// DefaultHeaderLimits are generous for real instances and small enough to
// bound a request. The largest header of the corpus (a Philips enhanced MR,
// 40 frames, about 140 elements a frame) has 5,616 elements and an estimated
// 1.4 MB parsed; 250,000 elements is such a header of about 1,800 frames.
// (500,000 let a 4.5 MB instance take 527 MB.)
var DefaultHeaderLimits = HeaderLimits{
	MaxHeaderBytes:   64 << 20,
	MaxElements:      250_000,
	MaxDepth:         64,
	MaxInflatedBytes: 4 << 30,
}

// datasetBytesPerElement is the parsed memory allowed for each element of
// MaxElements when MaxDatasetMemory is not set: enough for the largest
// real headers measured (246 bytes an element for the Philips one above),
// so that the element count and the memory bound agree.
const datasetBytesPerElement = 256

func (l HeaderLimits) withDefaults() HeaderLimits {
	if l.MaxHeaderBytes <= 0 {
		l.MaxHeaderBytes = DefaultHeaderLimits.MaxHeaderBytes
	}
	if l.MaxElements <= 0 {
		l.MaxElements = DefaultHeaderLimits.MaxElements
	}
	if l.MaxDatasetMemory <= 0 {
		l.MaxDatasetMemory = int64(l.MaxElements) * datasetBytesPerElement
	}
	if l.MaxDepth <= 0 {
		l.MaxDepth = DefaultHeaderLimits.MaxDepth
	}
	if l.MaxInflatedBytes <= 0 {
		l.MaxInflatedBytes = DefaultHeaderLimits.MaxInflatedBytes
	}
	return l
}

// Values above these sizes are not kept in the Dataset but referenced by a
// BulkDataURI: binary values (OB, OW, UN, …) above InlineBinaryMax, any other
// value above inlineValueMax.
const (
	InlineBinaryMax = 4096
	inlineValueMax  = 1 << 20
)

// Header is what ParseHeader read from the start of an instance: the
// identifying UIDs, the whole header as DICOM JSON, and where Pixel Data
// begins.
type Header struct {
	TransferSyntaxUID string
	SOPClassUID       string // from the dataset, else from the file meta
	SOPInstanceUID    string // from the dataset, else from the file meta
	StudyInstanceUID  string
	SeriesInstanceUID string
	// NumberOfFrames is (0028,0008), 1 for an image without it, 0 for an
	// instance without pixel data.
	NumberOfFrames int
	// Dataset is the header in the DICOM JSON model (PS3.18 F.2), text in
	// UTF-8, without the file meta group and group lengths. Pixel Data and
	// large binary values are BulkDataURIs relative to the instance URL:
	// "bulkdata/7FE00010" or, nested, "bulkdata/<seq tag>/<item index from
	// 0>/<tag>".
	Dataset Dataset
	// HeaderLength is the number of bytes of the stream ParseHeader
	// interpreted: up to the first byte of the top-level Pixel Data element,
	// or the whole instance when it has none. Of a deflated instance it is
	// the compressed bytes ParseHeader read, which may end inside the
	// deflate stream. Every byte from HeaderLength on must go through Tail,
	// which checks the rest.
	HeaderLength int64
	// PixelData is where the top-level Pixel Data value lies (Frames is filled
	// by Tail); nil when there is none or the dataset is deflated.
	PixelData *PixelDataLayout
	// Warnings name values that could not be represented (an IS value "1A"
	// becomes null); the instance is still stored unchanged.
	Warnings []string

	ts        transferSyntax
	pixelTag  uint32
	geometry  frameGeometry
	wholeRead bool
	inflate   *inflateState // a deflated instance with pixel data: where Tail carries on
}

// frameGeometry is what locating frames needs from the header.
type frameGeometry struct {
	rows, columns, samples, bitsAllocated int
	eotOffsets, eotLengths                []uint64 // Extended Offset Table
}

// transferSyntax is how a dataset is encoded.
type transferSyntax struct {
	explicit, bigEndian, deflated bool
}

func (ts transferSyntax) byteOrder() binary.ByteOrder {
	if ts.bigEndian {
		return binary.BigEndian
	}
	return binary.LittleEndian
}

// lookupTransferSyntax recognises the standard transfer syntaxes; every
// member of the JPEG family namespace 1.2.840.10008.1.2.4.* (JPEG, JPEG-LS,
// JPEG 2000, HTJ2K, JPEG XL, MPEG, HEVC) is encapsulated Explicit VR Little
// Endian, including ones newer than this list.
func lookupTransferSyntax(uid string) (transferSyntax, bool) {
	switch uid {
	case "1.2.840.10008.1.2":
		return transferSyntax{}, true
	case "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.1.98", "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.8.1",
		"1.2.840.10008.1.2.7.1", "1.2.840.10008.1.2.7.2", "1.2.840.10008.1.2.7.3":
		return transferSyntax{explicit: true}, true
	case "1.2.840.10008.1.2.1.99":
		return transferSyntax{explicit: true, deflated: true}, true
	case "1.2.840.10008.1.2.2":
		return transferSyntax{explicit: true, bigEndian: true}, true
	}
	if rest, ok := strings.CutPrefix(uid, "1.2.840.10008.1.2.4."); ok && ValidateUID(uid) == nil && !strings.Contains(rest, ".") {
		return transferSyntax{explicit: true}, true
	}
	return transferSyntax{}, false
}

// Tags the parser itself needs.
const (
	tagItem           uint32 = 0xFFFEE000
	tagItemDelim      uint32 = 0xFFFEE00D
	tagSeqDelim       uint32 = 0xFFFEE0DD
	tagPixelData      uint32 = 0x7FE00010
	tagFloatPixelData uint32 = 0x7FE00008
	tagDoublePixel    uint32 = 0x7FE00009
	tagEOT            uint32 = 0x7FE00001
	tagEOTLengths     uint32 = 0x7FE00002
	tagCharset        uint32 = 0x00080005
	tagPixelRep       uint32 = 0x00280103
	undefinedLength   uint32 = 0xFFFFFFFF
)

func isPixelTag(t uint32) bool {
	return t == tagPixelData || t == tagFloatPixelData || t == tagDoublePixel
}

// longVR lists the explicit VRs with a 2-byte reserved field and a 4-byte length.
func longVR(vr string) bool {
	switch vr {
	case "OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UC", "UN", "UR", "UT", "SV", "UV":
		return true
	}
	return false
}

func knownVR(vr string) bool {
	switch vr {
	case "AE", "AS", "AT", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO", "LT", "PN", "SH", "SL", "SS", "ST", "TM", "UI", "UL", "US":
		return true
	}
	return longVR(vr)
}

// notUnderstood is the error of an instance ParseHeader cannot read.
func notUnderstood(format string, args ...any) error {
	return fmt.Errorf(format+": %w", append(args, ErrMalformed)...)
}

// tooLarge is the error of an instance over a HeaderLimits bound.
func tooLarge(format string, args ...any) error {
	return fmt.Errorf(format+": %w", append(args, ErrLimit)...)
}

// isDataError reports whether err is one of the codec's own verdicts on the
// data (as opposed to a read error of the source).
func isDataError(err error) bool {
	for _, e := range []error{ErrMalformed, ErrLimit, ErrUnsupportedTransferSyntax, ErrMemoryBudget} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// ParseHeader reads a DICOM Part 10 instance from r up to its top-level
// Pixel Data element and returns its header. It does not read past the end
// of that element's tag, VR and length (the bytes it buffered from r beyond
// that point are lost to the caller: tee r to keep them). Bad input of any
// kind, including a panic in a decoder, is an error wrapping ErrMalformed,
// ErrLimit or ErrUnsupportedTransferSyntax; a read error from r is returned wrapped as it is. lim bounds
// the work; its zero value means DefaultHeaderLimits.
func ParseHeader(r io.Reader, lim HeaderLimits) (h *Header, err error) {
	return ParseHeaderAccounted(r, lim, &HeaderAccount{})
}

// ParseHeaderAccounted is ParseHeader charging the header's memory to acct
// (which the caller releases when it lets go of the Header); past the budget
// it fails with ErrMemoryBudget.
func ParseHeaderAccounted(r io.Reader, lim HeaderLimits, acct *HeaderAccount) (h *Header, err error) {
	deflated := false
	defer func() {
		if v := recover(); v != nil {
			h, err = nil, notUnderstood("header parser panic: %v", v)
		}
		// An end of input or corrupt deflate data met outside the element
		// reader (a peek, the inflater) is still the instance's fault:
		// truncated or corrupt. (A body that breaks off mid-part, an
		// io.ErrUnexpectedEOF from the multipart reader, stays a read error
		// of the request, except inside deflate, where flate reports every
		// early end that way.)
		if err != nil && !isDataError(err) {
			var ce flate.CorruptInputError
			if errors.Is(err, io.EOF) || (deflated && errors.Is(err, io.ErrUnexpectedEOF)) || errors.As(err, &ce) ||
				errors.Is(err, zlib.ErrChecksum) || errors.Is(err, zlib.ErrHeader) {
				h, err = nil, notUnderstood("instance truncated or corrupt: %v", err)
			}
		}
	}()
	lim = lim.withDefaults()
	cr := &countingReader{r: r, acct: acct}
	defer func() { cr.acct = nil }() // Tail may read on through cr: that is not header
	outer := bufio.NewReaderSize(cr, 64<<10)
	p := &parser{lim: lim, h: &Header{Dataset: Dataset{}}, acct: acct}
	p.src = outer
	p.maxPos = lim.MaxHeaderBytes

	if err := p.readPreambleAndMeta(); err != nil {
		return nil, err
	}
	ts, ok := lookupTransferSyntax(p.h.TransferSyntaxUID)
	if !ok {
		return nil, fmt.Errorf("transfer syntax %q is not supported: %w", Printable(p.h.TransferSyntaxUID), ErrUnsupportedTransferSyntax)
	}
	p.h.ts = ts
	if ts.deflated {
		// The header is read from the inflated stream up to the top-level
		// Pixel Data, like any other; the compressed bytes it took are
		// bounded too (empty deflate blocks inflate to nothing), since
		// ingest holds them until the storage key is known. The inflater
		// is handed to Tail, which inflates and checks the rest as it
		// streams to storage.
		deflated = true
		cr.max = lim.MaxHeaderBytes + int64(outer.Size())
		inflated, err := newInflater(outer)
		if err != nil {
			return nil, notUnderstood("deflated dataset: %v", err)
		}
		p.src = bufio.NewReaderSize(inflated, 64<<10)
		p.pos, p.maxPos, p.deflated = 0, lim.MaxHeaderBytes, true
		if err := p.parseDataset(p.h.Dataset, &itemState{codec: defaultCodec()}, -1, 0, "", ts.explicit, true); err != nil {
			return nil, err
		}
		cr.max = 0
		if p.h.pixelTag == 0 {
			// The deflated stream ended with the dataset: what follows it
			// is not interpreted.
			p.h.HeaderLength = cr.n - int64(outer.Buffered())
			p.h.wholeRead = true
		} else {
			p.h.HeaderLength = cr.n
			p.h.inflate = &inflateState{inflated: p.src, pos: p.pos, compressed: outer, source: cr, maxInflated: lim.MaxInflatedBytes}
		}
	} else {
		if err := p.parseDataset(p.h.Dataset, &itemState{codec: defaultCodec()}, -1, 0, "", ts.explicit, true); err != nil {
			return nil, err
		}
		p.h.HeaderLength = p.pos
		if p.h.pixelTag == 0 {
			p.h.wholeRead = true
		}
	}
	p.finish()
	return p.h, nil
}

// countingReader counts the bytes read from r, and fails once they pass
// max (0: no bound).
type countingReader struct {
	r    io.Reader
	n    int64
	max  int64
	acct *HeaderAccount // charged for the bytes read (a caller tees them), nil once the header is read
}

func (c *countingReader) Read(b []byte) (int, error) {
	if c.max > 0 && c.n >= c.max {
		return 0, tooLarge("deflated header takes more than %d compressed bytes", c.max)
	}
	if c.max > 0 && int64(len(b)) > c.max-c.n {
		b = b[:c.max-c.n]
	}
	if c.acct != nil {
		// Charged before the read: the shared budget refuses before the
		// bytes exist.
		if err := c.acct.charge(int64(len(b))); err != nil {
			return 0, err
		}
	}
	n, err := c.r.Read(b)
	if c.acct != nil {
		c.acct.refund(int64(len(b) - n))
	}
	c.n += int64(n)
	return n, err
}

// newInflater returns the inflated dataset. PS3.5 A.5 says raw deflate
// (RFC 1951); a zlib wrapper, which some writers add, is accepted too. br
// is read byte-exactly (flate uses its ReadByte), so nothing after the
// compressed stream is consumed.
func newInflater(br *bufio.Reader) (io.Reader, error) {
	b, err := br.Peek(2)
	if err == nil && b[0]&0x0F == 8 && (uint16(b[0])<<8|uint16(b[1]))%31 == 0 {
		return zlib.NewReader(br)
	}
	return flate.NewReader(br), nil
}

// parser reads one instance.
type parser struct {
	src      *bufio.Reader
	pos      int64 // bytes consumed from src
	maxPos   int64 // pos may not pass this
	kept     int64 // value bytes kept in memory
	elements int
	cost     int64 // estimated memory of the Dataset built so far
	acct     *HeaderAccount
	deflated bool
	lim      HeaderLimits
	h        *Header
}

// itemState is what a dataset or sequence item passes to its nested items.
type itemState struct {
	codec    *codec
	pixelRep int
}

func (p *parser) warn(format string, args ...any) {
	if len(p.h.Warnings) < 100 {
		p.h.Warnings = append(p.h.Warnings, fmt.Sprintf(format, args...))
	}
}

// read returns the next n bytes (n small or already checked against the limits).
func (p *parser) read(n int) ([]byte, error) {
	b := make([]byte, n)
	m, err := io.ReadFull(p.src, b)
	p.pos += int64(m)
	if err != nil {
		return nil, p.readErr(err)
	}
	return b, nil
}

func (p *parser) discard(n int64) error {
	m, err := io.CopyN(io.Discard, p.src, n)
	p.pos += m
	if err != nil {
		return p.readErr(err)
	}
	return nil
}

// readErr turns an end of input into "truncated" and passes other read
// errors through unchanged (they are the client's or the network's).
func (p *parser) readErr(err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return notUnderstood("instance truncated at byte %d", p.pos)
	}
	var ce flate.CorruptInputError
	if errors.As(err, &ce) || errors.Is(err, zlib.ErrChecksum) || errors.Is(err, zlib.ErrHeader) {
		return notUnderstood("deflated dataset is corrupt: %v", err)
	}
	return err
}

// readPreambleAndMeta checks the Part 10 preamble and "DICM" and reads the
// file meta group (always Explicit VR Little Endian), element by element
// while the group is 0002, so a missing or wrong (0002,0000) does not matter.
func (p *parser) readPreambleAndMeta() error {
	head, err := p.src.Peek(132)
	if len(head) < 132 || string(head[128:132]) != "DICM" {
		if err != nil && !errors.Is(err, io.EOF) {
			return err
		}
		if len(head) >= 2 && head[0] == 0x1f && head[1] == 0x8b {
			return notUnderstood("not a DICOM Part 10 file: the data is gzip-compressed")
		}
		return notUnderstood("not a DICOM Part 10 file: no \"DICM\" prefix at byte 128")
	}
	if err := p.discard(132); err != nil {
		return err
	}
	var mediaClass, mediaInstance string
	for {
		b, err := p.src.Peek(2)
		if err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			return err
		}
		if binary.LittleEndian.Uint16(b) != 0x0002 {
			break
		}
		if p.pos > 1<<20 {
			return tooLarge("file meta group longer than 1 MiB")
		}
		e, err := readMetaElement(p.read)
		if err != nil {
			return err
		}
		vr, val := e.vr, e.value
		s := strings.TrimRight(string(val), " \x00")
		switch e.tag {
		case 0x00020002:
			mediaClass = s
		case 0x00020003:
			mediaInstance = s
		case 0x00020010:
			if vr != "UI" {
				return notUnderstood("transfer syntax (0002,0010) has VR %s, not UI", vr)
			}
			p.h.TransferSyntaxUID = s
		}
	}
	if p.h.TransferSyntaxUID == "" {
		return notUnderstood("file meta has no transfer syntax (0002,0010)")
	}
	p.h.SOPClassUID, p.h.SOPInstanceUID = mediaClass, mediaInstance
	return nil
}

// metaElement is one element of the file meta group.
type metaElement struct {
	tag   uint32
	vr    string
	value []byte
}

// readMetaElement reads one file meta element, always Explicit VR Little
// Endian, with read: its VR must be valid and its value at most 64 KiB.
func readMetaElement(read func(n int) ([]byte, error)) (metaElement, error) {
	hdr, err := read(8)
	if err != nil {
		return metaElement{}, err
	}
	e := metaElement{tag: uint32(binary.LittleEndian.Uint16(hdr[0:]))<<16 | uint32(binary.LittleEndian.Uint16(hdr[2:])), vr: string(hdr[4:6])}
	if !knownVR(e.vr) {
		return e, notUnderstood("file meta element (%04X,%04X) has no valid VR", e.tag>>16, e.tag&0xFFFF)
	}
	vl := uint32(binary.LittleEndian.Uint16(hdr[6:]))
	if longVR(e.vr) {
		ext, err := read(4)
		if err != nil {
			return e, err
		}
		vl = binary.LittleEndian.Uint32(ext)
	}
	if vl > 64<<10 {
		return e, notUnderstood("file meta element (%04X,%04X) has length %d", e.tag>>16, e.tag&0xFFFF, vl)
	}
	e.value, err = read(int(vl))
	return e, err
}

// elementHeader is a tag with its VR ("" in implicit VR) and length.
type elementHeader struct {
	tag uint32
	vr  string
	vl  uint32
}

func (p *parser) readElementHeader(explicit bool, bo binary.ByteOrder) (elementHeader, error) {
	b, err := p.read(8)
	if err != nil {
		return elementHeader{}, err
	}
	e := elementHeader{tag: uint32(bo.Uint16(b[0:]))<<16 | uint32(bo.Uint16(b[2:]))}
	if e.tag>>16 == 0xFFFE || !explicit {
		e.vl = bo.Uint32(b[4:])
		return e, nil
	}
	e.vr = string(b[4:6])
	if !knownVR(e.vr) {
		return e, notUnderstood("element (%04X,%04X) at byte %d has no valid VR", e.tag>>16, e.tag&0xFFFF, p.pos-8)
	}
	if longVR(e.vr) {
		ext, err := p.read(4)
		if err != nil {
			return e, err
		}
		e.vl = bo.Uint32(ext)
	} else {
		e.vl = uint32(bo.Uint16(b[6:]))
	}
	return e, nil
}

// parseDataset reads elements into ds until end (a defined length), an item
// delimiter (end < 0, not top) or the end of input / top-level Pixel Data
// (top). It checks every declared length against what may remain before
// reading a byte of the value.
func (p *parser) parseDataset(ds Dataset, st *itemState, end int64, depth int, path string, explicit bool, top bool) error {
	bo := p.h.ts.byteOrder()
	if !explicit {
		bo = binary.LittleEndian // CP-246 content, or an implicit transfer syntax
	}
	local := *st
	st = &local
	for {
		if end >= 0 {
			if p.pos == end {
				return nil
			}
			if p.pos > end {
				return notUnderstood("element overruns its item at byte %d", p.pos)
			}
		}
		if top {
			b, err := p.src.Peek(4)
			if len(b) == 0 && errors.Is(err, io.EOF) {
				return nil // end of the dataset
			}
			if err != nil && !errors.Is(err, io.EOF) {
				return err
			}
			if len(b) < 4 {
				return notUnderstood("instance truncated at byte %d", p.pos)
			}
			t := uint32(bo.Uint16(b[0:]))<<16 | uint32(bo.Uint16(b[2:]))
			if isPixelTag(t) {
				return p.stopAtPixelData(t, explicit, bo)
			}
		}
		e, err := p.readElementHeader(explicit, bo)
		if err != nil {
			return err
		}
		switch e.tag {
		case tagItemDelim:
			if end < 0 && !top {
				return nil
			}
			return notUnderstood("unexpected item delimiter at byte %d", p.pos-8)
		case tagItem, tagSeqDelim:
			return notUnderstood("unexpected item tag (%04X,%04X) at byte %d", e.tag>>16, e.tag&0xFFFF, p.pos-8)
		}
		if p.elements++; p.elements > p.lim.MaxElements {
			return tooLarge("more than %d elements", p.lim.MaxElements)
		}
		if err := p.account(elementCost + int64(len(path))); err != nil {
			return err
		}
		if err := p.parseElement(ds, st, e, end, depth, path, explicit, bo); err != nil {
			return err
		}
	}
}

// remaining is how many bytes an element starting now may declare.
func (p *parser) remaining(end int64) int64 {
	if end >= 0 {
		return end - p.pos
	}
	return p.maxPos - p.pos
}

func (p *parser) parseElement(ds Dataset, st *itemState, e elementHeader, end int64, depth int, path string, explicit bool, bo binary.ByteOrder) error {
	key := tagKey(e.tag)
	vr := e.vr
	if vr == "" {
		vr = dictVR(e.tag, st.pixelRep)
	}
	unSequence := false // a dictionary sequence sent as UN: its items are Implicit VR Little Endian
	if vr == "UN" && e.vl != undefinedLength {
		if dict, ok := dictionaryVRForUN(e.tag, st.pixelRep); ok {
			vr, unSequence = dict, dict == "SQ"
		}
	}
	keep := e.tag&0xFFFF != 0 && e.tag>>16 != 0x0002 // group lengths and stray meta elements are structure, not data
	if e.vl == undefinedLength {
		switch {
		case vr == "SQ" || vr == "UN":
			// An explicit UN of undefined length is a sequence whose content
			// is Implicit VR Little Endian (PS3.5 6.2.2, CP-246).
			innerExplicit := explicit && vr == "SQ"
			items, err := p.parseSequence(st, end, depth+1, path+key, innerExplicit)
			if err != nil {
				return err
			}
			if keep {
				ds[key] = Attribute{VR: "SQ", Value: items}
			}
			return nil
		case vr == "OB" || vr == "OW" || isPixelTag(e.tag):
			if err := p.skipFragments(end, bo); err != nil {
				return err
			}
			if keep {
				ds[key] = Attribute{VR: "OB", BulkDataURI: "bulkdata/" + path + key}
			}
			return nil
		}
		return notUnderstood("element (%04X,%04X) VR %s has undefined length", e.tag>>16, e.tag&0xFFFF, vr)
	}
	if int64(e.vl) > p.remaining(end) {
		if end < 0 {
			return tooLarge("element (%04X,%04X) declares %d bytes, more than the %d-byte header limit allows", e.tag>>16, e.tag&0xFFFF, e.vl, p.lim.MaxHeaderBytes)
		}
		return notUnderstood("element (%04X,%04X) declares %d bytes, more than its item holds", e.tag>>16, e.tag&0xFFFF, e.vl)
	}
	if vr == "SQ" {
		items, err := p.parseSequence(st, p.pos+int64(e.vl), depth+1, path+key, explicit && !unSequence)
		if err != nil {
			return err
		}
		if keep {
			ds[key] = Attribute{VR: "SQ", Value: items}
		}
		return nil
	}
	bulk := isPixelTag(e.tag) || int64(e.vl) > inlineValueMax || (isBinaryVR(vr) && e.vl > InlineBinaryMax)
	if bulk && e.tag != tagEOT && e.tag != tagEOTLengths {
		if err := p.discard(int64(e.vl)); err != nil {
			return err
		}
		if keep {
			ds[key] = Attribute{VR: vr, BulkDataURI: "bulkdata/" + path + key}
		}
		return nil
	}
	if p.kept += int64(e.vl); p.kept > p.lim.MaxHeaderBytes {
		return tooLarge("header values exceed %d bytes", p.lim.MaxHeaderBytes)
	}
	raw, err := p.read(int(e.vl))
	if err != nil {
		return err
	}
	switch e.tag {
	case tagCharset:
		st.codec = newCodec(splitTrim(string(raw)))
	case tagPixelRep:
		if len(raw) >= 2 {
			st.pixelRep = int(bo.Uint16(raw))
		}
	case tagEOT, tagEOTLengths:
		if path == "" {
			vals := make([]uint64, 0, len(raw)/8)
			for i := 0; i+8 <= len(raw); i += 8 {
				vals = append(vals, bo.Uint64(raw[i:]))
			}
			if e.tag == tagEOT {
				p.h.geometry.eotOffsets = vals
			} else {
				p.h.geometry.eotLengths = vals
			}
		}
		if int64(e.vl) > InlineBinaryMax {
			if keep {
				ds[key] = Attribute{VR: vr, BulkDataURI: "bulkdata/" + path + key}
			}
			return nil
		}
	}
	if !keep {
		return nil
	}
	if e.tag == tagCharset {
		// The Dataset's text is UTF-8 whatever the instance used, and
		// (0008,0005) describes the Dataset (as dcm2json does); the stored
		// bytes keep the original.
		ds[key] = Attribute{VR: "CS", Value: []any{"ISO_IR 192"}}
		return nil
	}
	if err := p.account(valueCost(vr, raw)); err != nil {
		return err
	}
	ds[key] = p.decodeValue(key, vr, raw, bo, st)
	return nil
}

// parseSequence reads the items of a sequence: until end when defined,
// until the sequence delimiter otherwise.
func (p *parser) parseSequence(st *itemState, end int64, depth int, path string, explicit bool) ([]any, error) {
	if depth > p.lim.MaxDepth {
		return nil, tooLarge("sequences nested deeper than %d", p.lim.MaxDepth)
	}
	bo := p.h.ts.byteOrder()
	if !explicit {
		bo = binary.LittleEndian
	}
	var items []any
	for i := 0; ; i++ {
		if end >= 0 && p.pos >= end {
			if p.pos > end {
				return nil, notUnderstood("item overruns its sequence at byte %d", p.pos)
			}
			return items, nil
		}
		b, err := p.read(8)
		if err != nil {
			return nil, err
		}
		t := uint32(bo.Uint16(b[0:]))<<16 | uint32(bo.Uint16(b[2:]))
		vl := bo.Uint32(b[4:])
		switch t {
		case tagSeqDelim:
			if end >= 0 {
				return nil, notUnderstood("sequence delimiter inside a defined-length sequence at byte %d", p.pos-8)
			}
			return items, nil
		case tagItem:
		default:
			return nil, notUnderstood("expected an item, found (%04X,%04X) at byte %d", t>>16, t&0xFFFF, p.pos-8)
		}
		if p.elements++; p.elements > p.lim.MaxElements {
			return nil, tooLarge("more than %d elements", p.lim.MaxElements)
		}
		if err := p.account(itemCost); err != nil {
			return nil, err
		}
		item := Dataset{}
		itemEnd := int64(-1)
		if vl != undefinedLength {
			if int64(vl) > p.remaining(end) {
				return nil, notUnderstood("item declares %d bytes, more than its sequence holds", vl)
			}
			itemEnd = p.pos + int64(vl)
		}
		if err := p.parseDataset(item, st, itemEnd, depth, path+"/"+strconv.Itoa(i)+"/", explicit, false); err != nil {
			return nil, err
		}
		items = append(items, item)
	}
}

// skipFragments reads past encapsulated data that is not the top-level
// Pixel Data (an icon image, an undefined-length OB): items until the
// sequence delimiter.
func (p *parser) skipFragments(end int64, bo binary.ByteOrder) error {
	for {
		b, err := p.read(8)
		if err != nil {
			return err
		}
		t := uint32(bo.Uint16(b[0:]))<<16 | uint32(bo.Uint16(b[2:]))
		vl := bo.Uint32(b[4:])
		switch {
		case t == tagSeqDelim:
			return nil
		case t != tagItem || vl == undefinedLength:
			return notUnderstood("bad fragment item (%04X,%04X) at byte %d", t>>16, t&0xFFFF, p.pos-8)
		case int64(vl) > p.remaining(end):
			return notUnderstood("fragment declares %d bytes, more than remain", vl)
		}
		if err := p.discard(int64(vl)); err != nil {
			return err
		}
	}
}

// stopAtPixelData records the top-level Pixel Data element without
// consuming it: the caller streams it, and Tail checks it.
func (p *parser) stopAtPixelData(t uint32, explicit bool, bo binary.ByteOrder) error {
	n := 8
	b, err := p.src.Peek(8)
	if err != nil {
		return p.readErr(err)
	}
	vr := "OW"
	if t == tagFloatPixelData {
		vr = "OF"
	} else if t == tagDoublePixel {
		vr = "OD"
	}
	var vl uint32
	if explicit {
		vr = string(b[4:6])
		if !longVR(vr) {
			return notUnderstood("pixel data has VR %q", Printable(vr))
		}
		if vr == "UN" {
			vr = pixelDataVRForUN(t, p.h.Dataset)
		}
		n = 12
		if b, err = p.src.Peek(12); err != nil {
			return p.readErr(err)
		}
		vl = bo.Uint32(b[8:])
	} else {
		vl = bo.Uint32(b[4:])
	}
	layout := &PixelDataLayout{ValueOffset: p.pos + int64(n), ValueLength: int64(vl)}
	if vl == undefinedLength {
		layout.ValueLength, layout.Encapsulated, vr = -1, true, "OB"
	}
	if !p.deflated { // offsets in the inflated stream are no byte ranges of the instance
		p.h.PixelData = layout
	}
	p.h.pixelTag = t
	p.h.Dataset[tagKey(t)] = Attribute{VR: vr, BulkDataURI: "bulkdata/" + tagKey(t)}
	return nil
}

// finish fills the identifying fields from the dataset.
func (p *parser) finish() {
	ds := p.h.Dataset
	if v := ds.String(TagSOPClassUID); v != "" {
		p.h.SOPClassUID = v
	}
	if v := ds.String(TagSOPInstanceUID); v != "" {
		p.h.SOPInstanceUID = v
	}
	p.h.StudyInstanceUID = ds.String(TagStudyInstanceUID)
	p.h.SeriesInstanceUID = ds.String(TagSeriesInstanceUID)
	g := &p.h.geometry
	g.rows, g.columns = int(datasetInt(ds, TagRows)), int(datasetInt(ds, TagColumns))
	g.samples, g.bitsAllocated = int(datasetInt(ds, "00280002")), int(datasetInt(ds, "00280100"))
	if g.samples == 0 {
		g.samples = 1
	}
	_, hasPixels := ds[TagPixelData]
	_, hasFloat := ds[tagKey(tagFloatPixelData)]
	_, hasDouble := ds[tagKey(tagDoublePixel)]
	if hasPixels || hasFloat || hasDouble {
		p.h.NumberOfFrames = 1
	}
	if a, ok := ds[TagNumberOfFrames]; ok && len(a.Value) > 0 {
		if n, ok := a.Value[0].(int64); ok && n > 0 && n < math.MaxInt32 {
			p.h.NumberOfFrames = int(n)
		} else {
			p.warn("NumberOfFrames (0028,0008) is not a positive integer")
		}
	}
}

// datasetInt returns the first value of an integer attribute, 0 if none.
func datasetInt(ds Dataset, key string) int64 {
	if a, ok := ds[key]; ok && len(a.Value) > 0 {
		if v, ok := a.Value[0].(int64); ok {
			return v
		}
	}
	return 0
}

const hexDigits = "0123456789ABCDEF"

// tagKey formats a tag as its Dataset key, 8 upper-case hex digits.
func tagKey(t uint32) string {
	var b [8]byte
	for i := 7; i >= 0; i-- {
		b[i] = hexDigits[t&0xF]
		t >>= 4
	}
	return string(b[:])
}

// dictVR is the VR of an element in Implicit VR: from the data dictionary,
// LO for private creators, UN for other private or unknown elements.
func dictVR(t uint32, pixelRep int) string {
	group, elem := uint16(t>>16), uint16(t)
	if elem == 0 {
		return "UL"
	}
	if group%2 == 1 {
		if elem >= 0x10 && elem <= 0xFF {
			return "LO"
		}
		return "UN"
	}
	lookup := tag.Tag{Group: group, Element: elem}
	if g := group & 0xFF00; g == 0x5000 || g == 0x6000 {
		lookup.Group = g // repeating groups: curves and overlays
	}
	info, err := tag.Find(lookup)
	if err != nil || len(info.VRs) == 0 {
		return "UN"
	}
	if len(info.VRs) > 1 {
		for _, vr := range info.VRs {
			if vr == "SS" && pixelRep == 1 {
				return "SS"
			}
			if vr == "OW" {
				return "OW" // Implicit VR binary is OW (PS3.5 A.1)
			}
		}
	}
	vr := info.VRs[0]
	if !knownVR(vr) {
		return "UN"
	}
	return vr
}

func isBinaryVR(vr string) bool {
	switch vr {
	case "OB", "OD", "OF", "OL", "OV", "OW", "UN":
		return true
	}
	return false
}

// splitTrim splits a backslash-separated value and trims each part.
func splitTrim(s string) []string {
	parts := strings.Split(s, `\`)
	for i := range parts {
		parts[i] = strings.Trim(parts[i], " \x00")
	}
	return parts
}

// decodeValue turns raw value bytes into a DICOM JSON attribute (PS3.18 F.2).
func (p *parser) decodeValue(key, vr string, raw []byte, bo binary.ByteOrder, st *itemState) Attribute {
	a := Attribute{VR: vr}
	if len(raw) == 0 {
		return a
	}
	switch vr {
	case "AE", "AS", "CS", "DA", "DT", "TM", "UI":
		s := latin1OrUTF8(raw)
		for _, v := range strings.Split(s, `\`) {
			a.Value = append(a.Value, nonEmpty(strings.Trim(v, " \x00")))
		}
	case "SH", "LO", "UC":
		s := st.codec.decode(raw, textDelims)
		for _, v := range strings.Split(s, `\`) {
			if vr == "UC" {
				v = strings.TrimRight(v, " \x00")
			} else {
				v = strings.Trim(v, " \x00")
			}
			a.Value = append(a.Value, nonEmpty(v))
		}
	case "ST", "LT", "UT":
		a.Value = []any{nonEmpty(strings.TrimRight(st.codec.decode(raw, textDelims), " \x00"))}
	case "UR":
		a.Value = []any{nonEmpty(strings.Trim(latin1OrUTF8(raw), " \x00"))}
	case "PN":
		s := st.codec.decode(raw, pnDelims)
		for _, v := range strings.Split(s, `\`) {
			v = strings.Trim(v, " \x00")
			if v == "" {
				a.Value = append(a.Value, nil)
				continue
			}
			// Trailing spaces and empty trailing components are not
			// significant (PS3.5 6.2.1): "Doe^John^^^" is "Doe^John".
			groups := strings.SplitN(v, "=", 3)
			for i := range groups {
				groups[i] = strings.TrimRight(groups[i], " ^")
			}
			var pn PersonName
			pn.Alphabetic = groups[0]
			if len(groups) > 1 {
				pn.Ideographic = groups[1]
			}
			if len(groups) > 2 {
				pn.Phonetic = groups[2]
			}
			if pn == (PersonName{}) {
				a.Value = append(a.Value, nil)
				continue
			}
			a.Value = append(a.Value, pn)
		}
	case "IS":
		for _, v := range strings.Split(string(raw), `\`) {
			v = strings.Trim(v, " \x00")
			if v == "" {
				a.Value = append(a.Value, nil)
				continue
			}
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				f, ferr := strconv.ParseFloat(v, 64)
				if ferr != nil || f != math.Trunc(f) || math.Abs(f) > 1<<53 {
					p.warn("(%s,%s) IS value %q is not an integer", key[:4], key[4:], Printable(v))
					a.Value = append(a.Value, nil)
					continue
				}
				n = int64(f)
			}
			a.Value = append(a.Value, n)
		}
	case "DS":
		for _, v := range strings.Split(string(raw), `\`) {
			v = strings.Trim(v, " \x00")
			if v == "" {
				a.Value = append(a.Value, nil)
				continue
			}
			f, err := strconv.ParseFloat(v, 64)
			if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
				p.warn("(%s,%s) DS value %q is not a decimal number", key[:4], key[4:], Printable(v))
				a.Value = append(a.Value, nil)
				continue
			}
			a.Value = append(a.Value, f)
		}
	case "US", "SS", "UL", "SL", "SV", "UV", "FL", "FD", "AT":
		size := map[string]int{"US": 2, "SS": 2, "UL": 4, "SL": 4, "AT": 4, "FL": 4, "FD": 8, "SV": 8, "UV": 8}[vr]
		if len(raw)%size != 0 {
			p.warn("(%s,%s) %s value of %d bytes is not a multiple of %d", key[:4], key[4:], vr, len(raw), size)
		}
		for i := 0; i+size <= len(raw); i += size {
			b := raw[i : i+size]
			switch vr {
			case "US":
				a.Value = append(a.Value, int64(bo.Uint16(b)))
			case "SS":
				a.Value = append(a.Value, int64(int16(bo.Uint16(b))))
			case "UL":
				a.Value = append(a.Value, int64(bo.Uint32(b)))
			case "SL":
				a.Value = append(a.Value, int64(int32(bo.Uint32(b))))
			case "SV":
				a.Value = append(a.Value, int64(bo.Uint64(b)))
			case "UV":
				if v := bo.Uint64(b); v > math.MaxInt64 {
					a.Value = append(a.Value, v)
				} else {
					a.Value = append(a.Value, int64(v))
				}
			case "FL":
				a.Value = append(a.Value, finite(float64(math.Float32frombits(bo.Uint32(b)))))
			case "FD":
				a.Value = append(a.Value, finite(math.Float64frombits(bo.Uint64(b))))
			case "AT":
				a.Value = append(a.Value, tagKey(uint32(bo.Uint16(b))<<16|uint32(bo.Uint16(b[2:]))))
			}
		}
	default: // OB OD OF OL OV OW UN: the bytes, little endian as PS3.18 F.2.7 expects
		a.InlineBinary = base64.StdEncoding.EncodeToString(littleEndianBytes(vr, raw, bo))
	}
	if allNil(a.Value) {
		a.Value = nil
	}
	return a
}

// finite returns f, or nil for NaN and infinities, which JSON cannot hold.
func finite(f float64) any {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return nil
	}
	return f
}

func nonEmpty(s string) any {
	if s == "" {
		return nil
	}
	return s
}

func allNil(v []any) bool {
	for _, x := range v {
		if x != nil {
			return false
		}
	}
	return true
}

// littleEndianBytes swaps the words of a big-endian binary value.
func littleEndianBytes(vr string, raw []byte, bo binary.ByteOrder) []byte {
	size := map[string]int{"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}[vr]
	if bo != binary.BigEndian || size == 0 {
		return raw
	}
	out := make([]byte, len(raw))
	copy(out, raw)
	for i := 0; i+size <= len(out); i += size {
		for a, b := i, i+size-1; a < b; a, b = a+1, b-1 {
			out[a], out[b] = out[b], out[a]
		}
	}
	return out
}

// latin1OrUTF8 decodes text of the default repertoire: valid UTF-8 stays as
// it is (many writers omit (0008,0005)), anything else is read as Latin-1.
func latin1OrUTF8(b []byte) string {
	if utf8.Valid(b) {
		return string(b)
	}
	return latin1(b)
}

func latin1(b []byte) string {
	r := make([]rune, len(b))
	for i, c := range b {
		r[i] = rune(c)
	}
	return string(r)
}

// Delimiters that return ISO 2022 code extensions to their initial state
// (PS3.5 6.1.2.5.3).
const (
	textDelims = "\\\r\n\t\f"
	pnDelims   = "\\\r\n\t\f^="
)

type decodeFunc func([]byte) ([]byte, error)

// codec decodes text per Specific Character Set (0008,0005), including the
// ISO 2022 code extensions (escape sequences) that the library's decoders do
// not switch on.
type codec struct {
	whole   decodeFunc // single-byte or multi-byte set without code extensions
	iso2022 bool
	g1Init  decodeFunc // G1 at the start of a value (nil: Latin-1)
	cache   map[string]decodeFunc
}

func defaultCodec() *codec { return &codec{cache: map[string]decodeFunc{}} }

func newCodec(terms []string) *codec {
	c := defaultCodec()
	if len(terms) == 0 {
		return c
	}
	for _, t := range terms {
		if strings.HasPrefix(t, "ISO 2022") {
			c.iso2022 = true
		}
	}
	first := terms[0]
	if c.iso2022 {
		if first != "" && first != "ISO 2022 IR 6" {
			c.g1Init = c.decoder(first)
		}
		return c
	}
	if first == "" || first == "ISO_IR 6" {
		return c
	}
	c.whole = c.decoder(first)
	return c
}

// decoder returns the decoder of one Specific Character Set term, nil for
// an unknown one (then text is read as UTF-8 or Latin-1).
func (c *codec) decoder(term string) decodeFunc {
	if d, ok := c.cache[term]; ok {
		return d
	}
	var d decodeFunc
	if cs, err := charset.ParseSpecificCharacterSet([]string{term}); err == nil && cs.Ideographic != nil {
		d = cs.Ideographic.Bytes
	}
	c.cache[term] = d
	return d
}

func decodeWith(d decodeFunc, b []byte) []byte {
	if d == nil {
		return []byte(latin1OrUTF8(b))
	}
	out, err := d(b)
	if err != nil {
		return []byte(latin1OrUTF8(b))
	}
	return out
}

// g1ByEscape maps the escape sequences designating a G1 set to the term
// whose decoder reads it.
var g1ByEscape = map[string]string{
	"\x1b)I": "ISO 2022 IR 13", "\x1b$)C": "ISO 2022 IR 149", "\x1b$)A": "ISO 2022 IR 58",
	"\x1b-A": "ISO_IR 100", "\x1b-B": "ISO_IR 101", "\x1b-C": "ISO_IR 109", "\x1b-D": "ISO_IR 110",
	"\x1b-F": "ISO_IR 126", "\x1b-G": "ISO_IR 127", "\x1b-H": "ISO_IR 138", "\x1b-L": "ISO_IR 144",
	"\x1b-M": "ISO_IR 148", "\x1b-T": "ISO_IR 166",
}

// decode returns b as UTF-8. delims are the characters at which ISO 2022
// code extensions return to their initial state.
func (c *codec) decode(b []byte, delims string) string {
	if !c.iso2022 {
		if c.whole == nil {
			return latin1OrUTF8(b)
		}
		return strings.ToValidUTF8(string(decodeWith(c.whole, b)), "\uFFFD")
	}
	var out []byte
	g0 := ""       // "" = ASCII, else the escape sequence of a JIS multi-byte G0 set
	g1 := c.g1Init // decoder of bytes >= 0x80
	for i := 0; i < len(b); {
		switch {
		case b[i] == 0x1b:
			j := i + 1
			for j < len(b) && b[j] >= 0x20 && b[j] <= 0x2f {
				j++
			}
			if j >= len(b) {
				i = len(b)
				break
			}
			seq := string(b[i : j+1])
			i = j + 1
			switch seq {
			case "\x1b(B", "\x1b(J":
				g0 = ""
			case "\x1b$B", "\x1b$@", "\x1b$(D":
				g0 = seq
			default:
				if term, ok := g1ByEscape[seq]; ok {
					g1 = c.decoder(term)
				}
			}
		case b[i] >= 0x80:
			j := i
			for j < len(b) && b[j] >= 0x80 {
				j++
			}
			out = append(out, decodeWith(g1, b[i:j])...)
			i = j
		case g0 != "":
			j := i
			for j < len(b) && b[j] < 0x80 && b[j] != 0x1b {
				j++
			}
			seg := append([]byte(g0), b[i:j]...)
			seg = append(seg, "\x1b(B"...)
			out = append(out, decodeWith(c.decoder("ISO 2022 IR 87"), seg)...)
			i = j
		default:
			if strings.IndexByte(delims, b[i]) >= 0 {
				g1 = c.g1Init
			}
			out = append(out, b[i])
			i++
		}
	}
	return strings.ToValidUTF8(string(out), "\uFFFD")
}
