package dicomcodec

import (
	"bufio"
	"bytes"
	"compress/flate"
	"encoding/binary"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// maxBulkDataDepth bounds how deep a bulk data path may reach into sequences.
const maxBulkDataDepth = 16

// BulkDataPath names an element, possibly inside sequence items, as
// ParseBulkDataPath reads it.
type BulkDataPath []bulkStep

// bulkStep is one step of a bulk data path: an element, and inside a
// sequence the item (0-based) to descend into.
type bulkStep struct {
	tag  uint32
	item int
}

// ParseBulkDataPath parses "TTTTTTTT" or "SSSSSSSS/i/TTTTTTTT[/j/…]": tags as
// eight hexadecimal digits, items as decimal indexes from 0, the form ingest
// writes into BulkDataURIs ("bulkdata/<path>").
func ParseBulkDataPath(path string) (BulkDataPath, error) {
	segs := strings.Split(strings.Trim(path, "/"), "/")
	if len(segs)%2 == 0 || len(segs) > 2*maxBulkDataDepth+1 {
		return nil, fmt.Errorf("bulk data path %q: want TAG or TAG/item/TAG…: %w", Printable(path), ErrInvalidInput)
	}
	var steps []bulkStep
	for i := 0; i < len(segs); i += 2 {
		t, err := strconv.ParseUint(segs[i], 16, 32)
		if err != nil || len(segs[i]) != 8 {
			return nil, fmt.Errorf("bulk data path %q: %q is not a tag: %w", Printable(path), Printable(segs[i]), ErrInvalidInput)
		}
		st := bulkStep{tag: uint32(t), item: -1}
		if i+1 < len(segs) {
			n, err := strconv.Atoi(segs[i+1])
			if err != nil || n < 0 {
				return nil, fmt.Errorf("bulk data path %q: %q is not an item index: %w", Printable(path), Printable(segs[i+1]), ErrInvalidInput)
			}
			st.item = n
		}
		steps = append(steps, st)
	}
	return steps, nil
}

// FindElement reads the Part 10 stream r, stored in transfer syntax ts (not
// deflated), from its start up to the element path names, and returns the
// byte range of its value in the stream. It stops there: what follows (pixel
// data) is not read. io.EOF or io.ErrUnexpectedEOF when the element is
// absent; ErrUnlocatable when it cannot be located by its byte range (an
// undefined length, nesting beyond the bound, no Part 10 header).
func FindElement(r io.Reader, ts string, path BulkDataPath) (ByteRange, error) {
	w := &elementWalker{r: bufio.NewReaderSize(r, 64<<10)}
	return w.find(ts, path)
}

// OpenDeflatedElement reads the Deflated Explicit VR Little Endian Part 10
// stream r, inflating its dataset from the start up to the element path
// names, and returns a reader of that element's value (length bytes; no
// byte range exists in the compressed stream) and the inflater, which the
// caller closes when done. Its errors are FindElement's.
func OpenDeflatedElement(r io.Reader, path BulkDataPath) (value io.Reader, length int64, inflater io.Closer, err error) {
	w := &elementWalker{r: bufio.NewReaderSize(r, 64<<10)}
	if err := w.skipMeta(); err != nil {
		return nil, 0, nil, err
	}
	inflated := flate.NewReader(w.r)
	w.r, w.pos = bufio.NewReaderSize(inflated, 64<<10), 0
	br, err := w.walk(path, -1, 0)
	if err != nil {
		inflated.Close()
		return nil, 0, nil, err
	}
	return io.LimitReader(w.r, br.Length), br.Length, inflated, nil
}

// elementWalker reads DICOM element headers from a Part 10 stream and skips
// values, keeping the stream offset.
type elementWalker struct {
	r        *bufio.Reader
	pos      int64
	order    binary.ByteOrder
	explicit bool
}

const (
	bdItem            = 0xFFFEE000
	bdItemDelim       = 0xFFFEE00D
	bdSequenceDelim   = 0xFFFEE0DD
	bdUndefinedLength = 0xFFFFFFFF
)

type bdHeader struct {
	tag    uint32
	vr     string
	length uint32
}

func (w *elementWalker) read(n int) ([]byte, error) {
	b := make([]byte, n)
	_, err := io.ReadFull(w.r, b)
	w.pos += int64(n)
	return b, err
}

func (w *elementWalker) skip(n int64) error {
	d, err := w.r.Discard(int(n))
	w.pos += int64(d)
	if err == nil && int64(d) != n {
		err = io.ErrUnexpectedEOF
	}
	return err
}

// skipMeta reads past the preamble and the meta group (explicit VR LE).
func (w *elementWalker) skipMeta() error {
	head, err := w.read(132)
	if err != nil {
		return err
	}
	if !bytes.Equal(head[128:], []byte("DICM")) {
		return fmt.Errorf("stored object has no Part 10 header: %w", ErrUnlocatable)
	}
	w.order, w.explicit = binary.LittleEndian, true
	for {
		peek, err := w.r.Peek(2)
		if err != nil {
			return err
		}
		if binary.LittleEndian.Uint16(peek) != 0x0002 {
			return nil
		}
		h, err := w.header()
		if err != nil {
			return err
		}
		if err := w.skip(int64(h.length)); err != nil {
			return err
		}
	}
}

// find skips the preamble and meta group, then walks the dataset to steps.
func (w *elementWalker) find(ts string, steps BulkDataPath) (ByteRange, error) {
	if err := w.skipMeta(); err != nil {
		return ByteRange{}, err
	}
	switch ts {
	case TSImplicitLE:
		w.explicit = false
	case TSExplicitBE:
		w.order = binary.BigEndian
	}
	return w.walk(steps, -1, 0)
}

// header reads one element header in the current encoding.
func (w *elementWalker) header() (bdHeader, error) {
	b, err := w.read(4)
	if err != nil {
		return bdHeader{}, err
	}
	h := bdHeader{tag: uint32(w.order.Uint16(b))<<16 | uint32(w.order.Uint16(b[2:]))}
	if h.tag>>16 == 0xFFFE || !w.explicit {
		l, err := w.read(4)
		if err != nil {
			return h, err
		}
		h.length = w.order.Uint32(l)
		return h, nil
	}
	vr, err := w.read(2)
	if err != nil {
		return h, err
	}
	h.vr = string(vr)
	switch h.vr {
	case "OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UC", "UN", "UR", "UT", "SV", "UV":
		l, err := w.read(6)
		if err != nil {
			return h, err
		}
		h.length = w.order.Uint32(l[2:])
	default:
		l, err := w.read(2)
		if err != nil {
			return h, err
		}
		h.length = uint32(w.order.Uint16(l))
	}
	return h, nil
}

// walk reads elements until end (an absolute offset; -1 = until EOF or an
// item delimiter) looking for steps[0]; depth bounds nesting.
func (w *elementWalker) walk(steps []bulkStep, end int64, depth int) (ByteRange, error) {
	if depth > maxBulkDataDepth {
		return ByteRange{}, fmt.Errorf("sequences nested deeper than %d: %w", maxBulkDataDepth, ErrUnlocatable)
	}
	for end < 0 || w.pos < end {
		h, err := w.header()
		if err != nil {
			return ByteRange{}, err
		}
		if h.tag == bdItemDelim {
			return ByteRange{}, io.EOF // end of this item, not found
		}
		if h.tag == steps[0].tag {
			if len(steps) == 1 {
				if h.length == bdUndefinedLength {
					return ByteRange{}, fmt.Errorf("element %08X has undefined length: %w", h.tag, ErrUnlocatable)
				}
				return ByteRange{Offset: w.pos, Length: int64(h.length)}, nil
			}
			return w.intoItem(h, steps, depth)
		}
		if h.length == bdUndefinedLength {
			if err := w.skipUndefined(h, depth); err != nil {
				return ByteRange{}, err
			}
			continue
		}
		if err := w.skip(int64(h.length)); err != nil {
			return ByteRange{}, err
		}
	}
	return ByteRange{}, io.EOF
}

// intoItem descends into item steps[0].item of the sequence whose header
// was just read and continues with steps[1:].
func (w *elementWalker) intoItem(h bdHeader, steps []bulkStep, depth int) (ByteRange, error) {
	seqEnd := int64(-1)
	if h.length != bdUndefinedLength {
		seqEnd = w.pos + int64(h.length)
	}
	saved := w.explicit
	if h.vr == "UN" { // CP-246: a sequence sent as UN is implicit VR inside
		w.explicit = false
	}
	defer func() { w.explicit = saved }()
	for i := 0; seqEnd < 0 || w.pos < seqEnd; i++ {
		ih, err := w.header()
		if err != nil {
			return ByteRange{}, err
		}
		if ih.tag == bdSequenceDelim || ih.tag != bdItem {
			return ByteRange{}, io.EOF
		}
		itemEnd := int64(-1)
		if ih.length != bdUndefinedLength {
			itemEnd = w.pos + int64(ih.length)
		}
		if i == steps[0].item {
			return w.walk(steps[1:], itemEnd, depth+1)
		}
		if itemEnd >= 0 {
			if err := w.skip(int64(ih.length)); err != nil {
				return ByteRange{}, err
			}
			continue
		}
		if err := w.skipItemBody(depth + 1); err != nil {
			return ByteRange{}, err
		}
	}
	return ByteRange{}, io.EOF
}

// skipUndefined skips the value of an element of undefined length: a
// sequence, or encapsulated pixel data, both made of items up to a sequence
// delimiter.
func (w *elementWalker) skipUndefined(h bdHeader, depth int) error {
	if depth > maxBulkDataDepth {
		return fmt.Errorf("sequences nested deeper than %d: %w", maxBulkDataDepth, ErrUnlocatable)
	}
	saved := w.explicit
	if h.vr == "UN" {
		w.explicit = false
	}
	defer func() { w.explicit = saved }()
	for {
		ih, err := w.header()
		if err != nil {
			return err
		}
		switch {
		case ih.tag == bdSequenceDelim:
			return nil
		case ih.tag != bdItem:
			return fmt.Errorf("element %08X inside a sequence: %w", ih.tag, ErrUnlocatable)
		case ih.length != bdUndefinedLength:
			if err := w.skip(int64(ih.length)); err != nil {
				return err
			}
		default:
			if err := w.skipItemBody(depth + 1); err != nil {
				return err
			}
		}
	}
}

// skipItemBody skips the elements of an undefined-length item up to and
// including its item delimiter.
func (w *elementWalker) skipItemBody(depth int) error {
	for {
		h, err := w.header()
		if err != nil {
			return err
		}
		switch {
		case h.tag == bdItemDelim:
			return nil
		case h.length == bdUndefinedLength:
			if err := w.skipUndefined(h, depth); err != nil {
				return err
			}
		default:
			if err := w.skip(int64(h.length)); err != nil {
				return err
			}
		}
	}
}
