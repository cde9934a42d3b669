package dicomcodec

import (
	"bufio"
	"compress/flate"
	"compress/zlib"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
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

// headerReaders pools the read buffers of ParseHeaderAccounted: allocating
// and zeroing 64 KiB per instance was a sixth of the allocation of a small
// STOW-RS request. The parser copies what it keeps (values are read into
// their own slices; peeked bytes are decoded at once), so a buffer can
// serve the next instance once the parse returns; a deflated instance's
// buffer stays with the inflater that Tail reads on through.
var headerReaders = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 64<<10) }}

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
	outer := headerReaders.Get().(*bufio.Reader)
	outer.Reset(cr)
	pooled := true // false once the inflater handed to Tail holds outer
	defer func() {
		if pooled {
			outer.Reset(nil)
			headerReaders.Put(outer)
		}
	}()
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
		deflated, pooled = true, false
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
