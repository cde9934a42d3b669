package dicomcodec

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
)

// Transcoding between the uncompressed syntaxes, for a client that asks
// WADO-RS for Explicit VR Little Endian (the syntax PS3.18 8.7.3.5 names as
// the default, and the one viewers such as OHIF read) when an instance is
// stored in Implicit VR Little Endian or in the retired Explicit VR Big
// Endian. From implicit VR only element headers change (a VR is added from
// the data dictionary); from big endian every multi-byte binary value is
// byte-swapped by its VR. Either way it is a single streaming pass in
// constant memory, whatever the size of the pixel data.

// CanTranscode reports whether TranscodeToExplicitLE can serve an instance
// stored in syntax from as syntax to.
func CanTranscode(from, to string) bool {
	return (from == TSImplicitLE || from == TSExplicitBE) && to == TSExplicitLE
}

// TranscodeToExplicitLE reads a Part 10 instance in Implicit VR Little
// Endian or Explicit VR Big Endian from r and writes it to w in Explicit VR
// Little Endian:
//   - the preamble is kept; the file meta group gets the new Transfer
//     Syntax UID and a recomputed (0002,0000) group length;
//   - from implicit VR, each element gets its VR from the data dictionary
//     (LO for private creators, UN for other private or unknown elements,
//     and UN for a value too long for a VR with a 16-bit length);
//   - from big endian, values of the binary VRs (US, SS, OW, AT: 2-byte
//     units; UL, SL, FL, OF, OL: 4; FD, OD, SV, UV, OV: 8) are byte-swapped,
//     Pixel Data included when it is OW;
//   - sequences and items are written with undefined lengths and
//     delimiters, since explicit headers make every defined length wrong;
//   - retired group lengths (gggg,0000) of the dataset are dropped, for the
//     same reason;
//   - every other value, and implicit VR Pixel Data (as OW), is copied byte
//     for byte.
//
// It returns the bytes written. A malformed input (which ingest would have
// refused) is an error wrapping ErrMalformed; an error from r or w is
// returned as it is.
func TranscodeToExplicitLE(w io.Writer, r io.Reader) (int64, error) {
	cw := &countingWriter{w: w}
	t := &transcoder{r: bufio.NewReaderSize(r, 64<<10), w: bufio.NewWriterSize(cw, 64<<10)}
	err := t.meta()
	if err == nil {
		err = t.dataset(-1, 0, false)
	}
	if err == nil {
		err = t.w.Flush()
	}
	return cw.n, err
}

// transcodeDepthMax bounds sequence nesting, as ParseHeader does.
const transcodeDepthMax = 64

type transcoder struct {
	r         *bufio.Reader
	w         *bufio.Writer
	pos       int64 // bytes read from r
	pixelRep  int   // (0028,0103) of the top-level dataset, for US/SS tags
	bigEndian bool  // the dataset is Explicit VR Big Endian (else Implicit VR LE)
}

// header reads an element or item header of the dataset's syntax: the
// tag, the VR ("" for items and delimiters, and in implicit VR) and the
// value length.
func (t *transcoder) header() (tag uint32, vr string, vl uint32, err error) {
	hdr, err := t.read(8)
	if err != nil {
		return 0, "", 0, err
	}
	if !t.bigEndian {
		tag = uint32(binary.LittleEndian.Uint16(hdr[0:]))<<16 | uint32(binary.LittleEndian.Uint16(hdr[2:]))
		return tag, "", binary.LittleEndian.Uint32(hdr[4:]), nil
	}
	tag = uint32(binary.BigEndian.Uint16(hdr[0:]))<<16 | uint32(binary.BigEndian.Uint16(hdr[2:]))
	if tag>>16 == 0xFFFE {
		return tag, "", binary.BigEndian.Uint32(hdr[4:]), nil
	}
	vr = string(hdr[4:6])
	if !knownVR(vr) {
		return 0, "", 0, malformed("element (%04X,%04X) at byte %d has no valid VR", tag>>16, tag&0xFFFF, t.pos-8)
	}
	if !longVR(vr) {
		return tag, vr, uint32(binary.BigEndian.Uint16(hdr[6:])), nil
	}
	ext, err := t.read(4)
	if err != nil {
		return 0, "", 0, err
	}
	return tag, vr, binary.BigEndian.Uint32(ext), nil
}

// swapUnit is the size of the big-endian units of a VR's value, 1 for
// values kept as bytes.
func swapUnit(vr string) int {
	switch vr {
	case "US", "SS", "OW", "AT":
		return 2
	case "UL", "SL", "FL", "OF", "OL":
		return 4
	case "FD", "OD", "SV", "UV", "OV":
		return 8
	}
	return 1
}

// copySwapped copies n bytes of value, reversing each unit-byte group.
func (t *transcoder) copySwapped(n int64, unit int) error {
	if n%int64(unit) != 0 {
		return malformed("a value of %d bytes is not made of %d-byte units", n, unit)
	}
	buf := make([]byte, 32<<10)
	for n > 0 {
		chunk := buf[:min(int64(len(buf)), n)]
		k, err := io.ReadFull(t.r, chunk)
		t.pos += int64(k)
		if err != nil {
			return malformed("input ends at byte %d inside a value", t.pos)
		}
		for i := 0; i+unit <= len(chunk); i += unit {
			for a, b := i, i+unit-1; a < b; a, b = a+1, b-1 {
				chunk[a], chunk[b] = chunk[b], chunk[a]
			}
		}
		if _, err := t.w.Write(chunk); err != nil {
			return err
		}
		n -= int64(len(chunk))
	}
	return nil
}

// rewriteStream runs a streaming rewriter (Deidentify, RewriteIdentity)
// from r to w through 64 KiB buffers, flushes what it wrote even after an
// error, and returns the bytes that reached w.
func rewriteStream(w io.Writer, r io.Reader, run func(*bufio.Reader, *bufio.Writer) error) (int64, error) {
	cw := &countingWriter{w: w}
	bw := bufio.NewWriterSize(cw, 64<<10)
	err := run(bufio.NewReaderSize(r, 64<<10), bw)
	if ferr := bw.Flush(); err == nil {
		err = ferr
	}
	return cw.n, err
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

func malformed(format string, args ...any) error {
	return fmt.Errorf("transcode: "+format+": %w", append(args, ErrMalformed)...)
}

func (t *transcoder) read(n int) ([]byte, error) {
	b := make([]byte, n)
	k, err := io.ReadFull(t.r, b)
	t.pos += int64(k)
	if err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, malformed("input ends at byte %d", t.pos)
		}
		return nil, err
	}
	return b, nil
}

// copyValue copies n bytes of value from r to w.
func (t *transcoder) copyValue(n int64) error {
	k, err := io.CopyN(t.w, t.r, n)
	t.pos += k
	if err != nil {
		if errors.Is(err, io.EOF) {
			return malformed("input ends at byte %d inside a value", t.pos)
		}
		return err
	}
	return nil
}

// meta copies the preamble and rewrites the file meta group.
func (t *transcoder) meta() error {
	head, err := t.read(132)
	if err != nil {
		return err
	}
	if string(head[128:]) != "DICM" {
		return malformed("no DICM prefix")
	}
	var elems []metaElement
	syntax := ""
	for {
		b, err := t.r.Peek(2)
		if err != nil || binary.LittleEndian.Uint16(b) != 0x0002 {
			break
		}
		if t.pos > 1<<20 {
			return malformed("file meta group longer than 1 MiB")
		}
		e, err := readMetaElement(t.read)
		if err != nil {
			return err
		}
		switch e.tag {
		case 0x00020000:
			continue // recomputed below
		case 0x00020010:
			syntax = strings.TrimRight(string(e.value), " \x00")
			e.value = []byte(TSExplicitLE + "\x00") // 19 characters, padded to even
		}
		elems = append(elems, e)
	}
	switch syntax {
	case TSImplicitLE:
	case TSExplicitBE:
		t.bigEndian = true
	default:
		return malformed("stored syntax is %q, neither Implicit VR Little Endian nor Explicit VR Big Endian", syntax)
	}
	var group []byte
	for _, e := range elems {
		group = appendExplicitHeader(group, e.tag, e.vr, uint32(len(e.value)))
		group = append(group, e.value...)
	}
	out := append(head[:132:132], 0x02, 0x00, 0x00, 0x00, 'U', 'L', 4, 0)
	out = binary.LittleEndian.AppendUint32(out, uint32(len(group)))
	_, err = t.w.Write(append(out, group...))
	return err
}

// appendExplicitHeader appends an Explicit VR Little Endian element header.
func appendExplicitHeader(b []byte, tag uint32, vr string, vl uint32) []byte {
	b = binary.LittleEndian.AppendUint16(b, uint16(tag>>16))
	b = binary.LittleEndian.AppendUint16(b, uint16(tag))
	b = append(b, vr...)
	if longVR(vr) {
		b = append(b, 0, 0)
		return binary.LittleEndian.AppendUint32(b, vl)
	}
	return binary.LittleEndian.AppendUint16(b, uint16(vl))
}

// appendItemHeader appends an item or delimitation tag with its length.
func appendItemHeader(b []byte, tag, vl uint32) []byte {
	b = binary.LittleEndian.AppendUint16(b, uint16(tag>>16))
	b = binary.LittleEndian.AppendUint16(b, uint16(tag))
	return binary.LittleEndian.AppendUint32(b, vl)
}

// dataset converts elements until end (a defined length; -1 for none),
// an item delimiter (inItem with end -1) or the end of input (the top
// level). An item's content ends with an item delimiter in the output.
func (t *transcoder) dataset(end int64, depth int, inItem bool) error {
	for {
		if end >= 0 && t.pos >= end {
			if t.pos > end {
				return malformed("element overruns its item at byte %d", t.pos)
			}
			if inItem {
				_, err := t.w.Write(appendItemHeader(nil, tagItemDelim, 0))
				return err
			}
			return nil
		}
		if end < 0 && !inItem {
			if _, err := t.r.Peek(1); errors.Is(err, io.EOF) {
				return nil
			}
		}
		tag, vr, vl, err := t.header()
		if err != nil {
			return err
		}
		switch {
		case tag == tagItemDelim && inItem && end < 0:
			_, err := t.w.Write(appendItemHeader(nil, tagItemDelim, 0))
			return err
		case tag>>16 == 0xFFFE:
			return malformed("unexpected (%04X,%04X) at byte %d", tag>>16, tag&0xFFFF, t.pos-8)
		}
		if vl != undefinedLength && end >= 0 && int64(vl) > end-t.pos {
			return malformed("element (%04X,%04X) of %d bytes overruns its item", tag>>16, tag&0xFFFF, vl)
		}
		if !t.bigEndian {
			vr = dictVR(tag, t.pixelRep)
			if isPixelTag(tag) && vr != "OF" && vr != "OD" {
				vr = "OW"
			}
		}
		if isPixelTag(tag) && vl == undefinedLength {
			return malformed("encapsulated pixel data in an uncompressed dataset")
		}
		if t.bigEndian && vr == "UN" && vl == undefinedLength {
			return malformed("an undefined-length UN element in big endian") // its items would be implicit little endian
		}
		switch {
		case vl == undefinedLength || vr == "SQ":
			if depth >= transcodeDepthMax {
				return malformed("sequences nested deeper than %d", transcodeDepthMax)
			}
			if _, err := t.w.Write(appendExplicitHeader(nil, tag, "SQ", undefinedLength)); err != nil {
				return err
			}
			seqEnd := int64(-1)
			if vl != undefinedLength {
				seqEnd = t.pos + int64(vl)
			}
			if err := t.sequence(seqEnd, depth+1); err != nil {
				return err
			}
		case uint16(tag) == 0 && tag>>16 != 0x0002:
			if err := t.skip(int64(vl)); err != nil { // a retired group length
				return err
			}
		default:
			if !longVR(vr) && vl > 0xFFFF {
				vr = "UN"
			}
			if _, err := t.w.Write(appendExplicitHeader(nil, tag, vr, vl)); err != nil {
				return err
			}
			if tag == tagPixelRep && vl == 2 && depth == 0 {
				v, err := t.read(2)
				if err != nil {
					return err
				}
				if t.bigEndian {
					v[0], v[1] = v[1], v[0]
				}
				t.pixelRep = int(binary.LittleEndian.Uint16(v))
				if _, err := t.w.Write(v); err != nil {
					return err
				}
				continue
			}
			if unit := swapUnit(vr); t.bigEndian && unit > 1 {
				err = t.copySwapped(int64(vl), unit)
			} else {
				err = t.copyValue(int64(vl))
			}
			if err != nil {
				return err
			}
		}
	}
}

func (t *transcoder) skip(n int64) error {
	k, err := t.r.Discard(int(n))
	t.pos += int64(k)
	if err != nil {
		return malformed("input ends at byte %d", t.pos)
	}
	return nil
}

// sequence converts items until end (defined length) or the sequence
// delimiter, and writes the sequence delimiter.
func (t *transcoder) sequence(end int64, depth int) error {
	for {
		if end >= 0 && t.pos >= end {
			if t.pos > end {
				return malformed("item overruns its sequence at byte %d", t.pos)
			}
			break
		}
		tag, _, vl, err := t.header()
		if err != nil {
			return err
		}
		if tag == tagSeqDelim && end < 0 {
			break
		}
		if tag != tagItem {
			return malformed("(%04X,%04X) where a sequence item was expected, at byte %d", tag>>16, tag&0xFFFF, t.pos-8)
		}
		if _, err := t.w.Write(appendItemHeader(nil, tagItem, undefinedLength)); err != nil {
			return err
		}
		itemEnd := int64(-1)
		if vl != undefinedLength {
			if end >= 0 && int64(vl) > end-t.pos {
				return malformed("item of %d bytes overruns its sequence", vl)
			}
			itemEnd = t.pos + int64(vl)
		}
		if err := t.dataset(itemEnd, depth, true); err != nil {
			return err
		}
	}
	_, err := t.w.Write(appendItemHeader(nil, tagSeqDelim, 0))
	return err
}

// SwapBytes16 returns rc with the bytes of every 16-bit word swapped: big
// endian OW pixel data read as little endian. The stream must hold whole
// words; a last odd byte is passed on as it is.
func SwapBytes16(rc io.ReadCloser) io.ReadCloser {
	return &swap16{rc: rc}
}

type swap16 struct {
	rc    io.ReadCloser
	buf   []byte
	out   []byte // swapped bytes not yet returned
	carry []byte // 0 or 1 byte: the first half of a word split by a read
	err   error  // from rc, returned once out is drained
}

func (s *swap16) Read(p []byte) (int, error) {
	for len(s.out) == 0 {
		if s.err != nil {
			return 0, s.err
		}
		if s.buf == nil {
			s.buf = make([]byte, 32<<10)
		}
		n := copy(s.buf, s.carry)
		s.carry = nil
		m, err := s.rc.Read(s.buf[n:])
		n += m
		s.err = err
		if n%2 == 1 && err == nil {
			s.carry = []byte{s.buf[n-1]}
			n--
		}
		for i := 0; i+1 < n; i += 2 {
			s.buf[i], s.buf[i+1] = s.buf[i+1], s.buf[i]
		}
		s.out = s.buf[:n]
	}
	k := copy(p, s.out)
	s.out = s.out[k:]
	return k, nil
}

func (s *swap16) Close() error { return s.rc.Close() }
