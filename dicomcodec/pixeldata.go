package dicomcodec

import (
	"encoding/binary"
	"fmt"
)

// Limits of what the scanner keeps while bytes stream past.
const (
	maxFragments  = 1 << 20  // fragments recorded; beyond, frames are not located
	maxOffsetItem = 16 << 20 // Basic Offset Table bytes kept
)

// TailScanner checks and maps the part of an instance that ParseHeader did
// not read: the top-level Pixel Data and any elements after it. It is an
// io.Writer fed, in order, every byte of the instance from
// Header.HeaderLength on, as they stream to storage, so pixel data is never
// held in memory. Write fails as soon as the structure is wrong; Finish
// fails when the instance ended early (the library and a plain byte copy
// would both accept a truncated instance as complete).
type TailScanner struct {
	h        *Header
	pos      int64 // offset in the instance of the next byte
	hdr      [12]byte
	nhdr     int
	skip     int64 // bytes of the current value still to pass
	stack    []scanLevel
	state    scanState
	err      error
	pixel    bool // the top-level pixel data has been seen
	native   int64
	frags    []fragment
	botLeft  int64 // bytes of the Basic Offset Table still to collect
	bot      []byte
	fragHead int // bytes of the current fragment's start still to record
	botDone  bool
	overflow bool
	extra    int64
	inflate  *inflatingTail // a deflated instance: Write takes compressed bytes
}

type scanState int

const (
	scanElement  scanState = iota // expecting an element header
	scanItem                      // expecting an item or a sequence delimiter
	scanFragment                  // expecting a fragment item or a sequence delimiter
	scanDone                      // deflated or fully read by ParseHeader: nothing is checked
)

type scanLevel struct {
	state    scanState // state to return to for this level
	explicit bool
	pixel    bool // a fragment level of the top-level Pixel Data
}

// fragment is one item of encapsulated pixel data.
type fragment struct {
	item   int64 // offset of the item tag
	offset int64 // offset of the first data byte
	length int64
	head   [2]byte
}

// Tail returns the scanner for the bytes after the header.
func (h *Header) Tail() *TailScanner {
	s := &TailScanner{h: h, pos: h.HeaderLength}
	if h.wholeRead {
		s.state = scanDone
	}
	if h.inflate != nil {
		// One inflater per header: a second Tail would find it consumed.
		s.inflate, h.inflate = newInflatingTail(h), nil
	}
	s.stack = []scanLevel{{state: scanElement, explicit: h.ts.explicit}}
	return s
}

func (s *TailScanner) fail(format string, args ...any) error {
	s.err = notUnderstood(format, args...)
	return s.err
}

// Write consumes p. It returns an error wrapping ErrMalformed as soon as the data cannot
// be a well-formed instance.
func (s *TailScanner) Write(p []byte) (int, error) {
	if s.err != nil {
		return 0, s.err
	}
	if s.inflate != nil {
		n, err := s.inflate.write(p)
		if err != nil {
			s.err = err
		}
		return n, err
	}
	n := len(p)
	if s.state == scanDone {
		s.extra += int64(len(p))
		s.pos += int64(len(p))
		return n, nil
	}
	for len(p) > 0 {
		if s.skip > 0 {
			k := int64(len(p))
			if k > s.skip {
				k = s.skip
			}
			chunk := p[:k]
			if s.botLeft > 0 {
				s.bot = append(s.bot, chunk...)
				s.botLeft -= k
			}
			if s.fragHead > 0 && len(s.frags) > 0 {
				f := &s.frags[len(s.frags)-1]
				for _, c := range chunk {
					if s.fragHead == 0 {
						break
					}
					f.head[2-s.fragHead] = c
					s.fragHead--
				}
			}
			s.skip -= k
			s.pos += k
			p = p[k:]
			continue
		}
		need := s.headerSize()
		k := copy(s.hdr[s.nhdr:need], p)
		s.nhdr += k
		s.pos += int64(k)
		p = p[k:]
		if s.nhdr < need || s.headerSize() > need {
			continue
		}
		if err := s.header(); err != nil {
			return 0, err
		}
		s.nhdr = 0
	}
	return n, nil
}

// headerSize is the length of the header being collected: 12 for an
// explicit VR with a 4-byte length, once its VR is known, else 8.
func (s *TailScanner) headerSize() int {
	if s.state != scanElement || s.nhdr < 6 || !s.stack[len(s.stack)-1].explicit {
		return 8
	}
	if s.tagAt()>>16 == 0xFFFE || !longVR(string(s.hdr[4:6])) {
		return 8
	}
	return 12
}

func (s *TailScanner) order() binary.ByteOrder {
	if len(s.stack) > 0 && !s.stack[len(s.stack)-1].explicit {
		return binary.LittleEndian
	}
	return s.h.ts.byteOrder()
}

func (s *TailScanner) tagAt() uint32 {
	bo := s.order()
	return uint32(bo.Uint16(s.hdr[0:]))<<16 | uint32(bo.Uint16(s.hdr[2:]))
}

// header acts on a complete element or item header in s.hdr.
func (s *TailScanner) header() error {
	bo := s.order()
	t := s.tagAt()
	start := s.pos - int64(s.nhdr)
	level := s.stack[len(s.stack)-1]
	switch s.state {
	case scanFragment:
		vl := bo.Uint32(s.hdr[4:8])
		switch t {
		case tagSeqDelim:
			s.pop()
			return nil
		case tagItem:
		default:
			return s.fail("expected a fragment item, found (%04X,%04X) at byte %d", t>>16, t&0xFFFF, start)
		}
		if vl == undefinedLength {
			return s.fail("fragment of undefined length at byte %d", start)
		}
		if level.pixel {
			if !s.botDone { // the first item is the Basic Offset Table
				s.botDone = true
				if vl > 0 && vl <= maxOffsetItem {
					s.botLeft = int64(vl)
					s.bot = make([]byte, 0, vl)
				}
			} else if len(s.frags) < maxFragments {
				s.frags = append(s.frags, fragment{item: start, offset: s.pos, length: int64(vl)})
				s.fragHead = 2
				if vl < 2 {
					s.fragHead = int(vl)
				}
			} else {
				s.frags, s.overflow = nil, true
			}
		}
		s.skip = int64(vl)
		return nil
	case scanItem:
		vl := bo.Uint32(s.hdr[4:8])
		switch t {
		case tagSeqDelim:
			s.pop()
			return nil
		case tagItem:
			if vl == undefinedLength {
				s.push(scanLevel{state: scanElement, explicit: level.explicit}, scanElement)
				return nil
			}
			s.skip = int64(vl)
			return nil
		}
		return s.fail("expected an item, found (%04X,%04X) at byte %d", t>>16, t&0xFFFF, start)
	}
	// scanElement
	if t>>16 == 0xFFFE {
		if t == tagItemDelim && len(s.stack) > 1 {
			s.pop()
			return nil
		}
		return s.fail("unexpected (%04X,%04X) at byte %d", t>>16, t&0xFFFF, start)
	}
	var vr string
	var vl uint32
	if level.explicit {
		vr = string(s.hdr[4:6])
		if !knownVR(vr) {
			return s.fail("element (%04X,%04X) at byte %d has no valid VR", t>>16, t&0xFFFF, start)
		}
		if longVR(vr) {
			vl = bo.Uint32(s.hdr[8:12])
		} else {
			vl = uint32(bo.Uint16(s.hdr[6:8]))
		}
	} else {
		vl = bo.Uint32(s.hdr[4:8])
	}
	top := len(s.stack) == 1
	if top && isPixelTag(t) && !s.pixel {
		s.pixel = true
		if vl == undefinedLength {
			s.push(scanLevel{state: scanFragment, explicit: level.explicit, pixel: true}, scanFragment)
			return nil
		}
		s.native = int64(vl)
		s.skip = int64(vl)
		return nil
	}
	if vl != undefinedLength {
		s.skip = int64(vl)
		return nil
	}
	switch {
	case vr == "SQ" || (vr == "" && !isPixelTag(t)):
		s.push(scanLevel{state: scanItem, explicit: level.explicit}, scanItem)
	case vr == "UN":
		s.push(scanLevel{state: scanItem, explicit: false}, scanItem)
	case vr == "OB" || vr == "OW" || isPixelTag(t):
		s.push(scanLevel{state: scanFragment, explicit: level.explicit}, scanFragment)
	default:
		return s.fail("element (%04X,%04X) VR %s has undefined length at byte %d", t>>16, t&0xFFFF, vr, start)
	}
	return nil
}

func (s *TailScanner) push(l scanLevel, st scanState) {
	s.stack = append(s.stack, l)
	s.state = st
}

func (s *TailScanner) pop() {
	s.stack = s.stack[:len(s.stack)-1]
	// Return to what the enclosing level expects next.
	switch s.stack[len(s.stack)-1].state {
	case scanItem:
		s.state = scanItem
	default:
		s.state = scanElement
	}
}

// Finish reports whether the instance ended where a complete instance ends,
// and returns the Pixel Data layout (nil when there is none) with the byte
// ranges of every frame it could locate.
func (s *TailScanner) Finish() (*PixelDataLayout, error) {
	if s.err != nil {
		return nil, s.err
	}
	if s.inflate != nil {
		if err := s.inflate.finish(); err != nil {
			s.err = err
			return nil, err
		}
		return nil, nil // offsets in a deflate stream are no byte ranges
	}
	if s.state != scanDone {
		switch {
		case s.skip > 0:
			return nil, s.fail("instance truncated: %d bytes of a value missing at byte %d", s.skip, s.pos)
		case s.nhdr > 0 && !allZero(s.hdr[:s.nhdr]):
			return nil, s.fail("instance truncated inside an element header at byte %d", s.pos)
		case len(s.stack) > 1:
			return nil, s.fail("instance truncated inside a sequence or pixel data at byte %d", s.pos)
		}
	}
	if s.h.PixelData == nil {
		return nil, nil
	}
	layout := *s.h.PixelData
	layout.Frames = s.frames()
	return &layout, nil
}

// Close releases a scanner that will not be finished (the upload failed
// part-way). Finish releases it too; Close after Finish does nothing.
func (s *TailScanner) Close() {
	if s.inflate != nil {
		s.inflate.close()
	}
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// maxNativeFramesListed bounds the frames of native pixel data listed in
// PixelDataLayout.Frames; beyond it they are computed when read.
const maxNativeFramesListed = 4096

// frames locates every frame: fixed-size slices of native data; for
// encapsulated data the Extended or Basic Offset Table, else one fragment
// per frame, else fragments grouped at JPEG / JPEG 2000 start markers.
func (s *TailScanner) frames() [][]ByteRange {
	l := s.h.PixelData
	g := s.h.geometry
	n := s.h.NumberOfFrames
	if n <= 0 {
		n = 1
	}
	if !l.Encapsulated {
		bits := int64(g.rows) * int64(g.columns) * int64(g.samples) * int64(g.bitsAllocated)
		if s.h.pixelTag == tagFloatPixelData {
			bits = int64(g.rows) * int64(g.columns) * int64(g.samples) * 32
		} else if s.h.pixelTag == tagDoublePixel {
			bits = int64(g.rows) * int64(g.columns) * int64(g.samples) * 64
		}
		if bits <= 0 || bits%8 != 0 || int64(n)*bits/8 > l.ValueLength {
			return nil // bit-packed frames or sizes that disagree: not located
		}
		if n > maxNativeFramesListed {
			// Each frame is a computed slice (gateway's FrameRanges does the
			// sum from Rows, Columns and Bits Allocated): listing millions of
			// 1-pixel frames would cost the ingest and every index read
			// memory by the header's claim, not by anything retrieval needs.
			return nil
		}
		size := bits / 8
		out := make([][]ByteRange, n)
		for i := range out {
			out[i] = []ByteRange{{Offset: l.ValueOffset + int64(i)*size, Length: size}}
		}
		return out
	}
	if s.overflow || len(s.frags) == 0 {
		return nil
	}
	firstItem := s.frags[0].item
	byStart := func(starts []int64) [][]ByteRange {
		out := make([][]ByteRange, len(starts))
		fi := 0
		for i := range starts {
			end := int64(1<<62 - 1)
			if i+1 < len(starts) {
				end = starts[i+1]
			}
			for fi < len(s.frags) && s.frags[fi].item < firstItem+starts[i] {
				fi++
			}
			for fi < len(s.frags) && s.frags[fi].item < firstItem+end {
				f := s.frags[fi]
				out[i] = append(out[i], ByteRange{Offset: f.offset, Length: f.length})
				fi++
			}
			if len(out[i]) == 0 || (i > 0 && out[i][0].Offset-8 != firstItem+starts[i]) {
				return nil
			}
		}
		return out
	}
	if len(g.eotOffsets) == n {
		starts := make([]int64, n)
		for i, o := range g.eotOffsets {
			starts[i] = int64(o)
		}
		if f := byStart(starts); f != nil {
			return f
		}
	}
	if len(s.bot) >= 4*n && n > 0 {
		starts := make([]int64, n)
		for i := range starts {
			starts[i] = int64(binary.LittleEndian.Uint32(s.bot[4*i:]))
		}
		if starts[0] == 0 {
			if f := byStart(starts); f != nil {
				return f
			}
		}
	}
	if n == 1 {
		out := [][]ByteRange{nil}
		for _, f := range s.frags {
			out[0] = append(out[0], ByteRange{Offset: f.offset, Length: f.length})
		}
		return out
	}
	if len(s.frags) == n {
		out := make([][]ByteRange, n)
		for i, f := range s.frags {
			out[i] = []ByteRange{{Offset: f.offset, Length: f.length}}
		}
		return out
	}
	// Fragments that open with a JPEG SOI (FFD8) or a JPEG 2000 SOC (FF4F)
	// marker start frames.
	var starts []int64
	for _, f := range s.frags {
		if f.head[0] == 0xFF && (f.head[1] == 0xD8 || f.head[1] == 0x4F) {
			starts = append(starts, f.item-firstItem)
		}
	}
	if len(starts) == n && starts[0] == 0 {
		return byStart(starts)
	}
	return nil
}

// String describes the scanner's position, for errors in tests.
func (s *TailScanner) String() string {
	return fmt.Sprintf("tail scanner at byte %d, depth %d, state %d", s.pos, len(s.stack), s.state)
}
