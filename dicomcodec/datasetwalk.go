package dicomcodec

import (
	"bufio"
	"compress/flate"
	"compress/zlib"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
)

// The dataset walk: element by element, with every length checked against
// what is left and every nesting level bounded, up to the top-level Pixel
// Data. Values are decoded by values.go, text through charset.go.

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
