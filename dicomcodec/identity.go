package dicomcodec

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
)

// IdentityEdit is what identity coercion writes into an instance on its way
// out: the new Patient ID and Issuer of Patient ID of the top-level dataset.
// ExpectPatientID is the Patient ID the instance must carry (the one the
// index holds, from which the rule was decided): a stored instance that
// disagrees with its index entry is not sent under a decision made for
// another identity.
type IdentityEdit struct {
	ExpectPatientID string
	PatientID       string
	Issuer          string
	// ModifyingSystem, when set, records the change in an item appended
	// to the Original Attributes Sequence (0400,0561), PS3.3 C.12.1.1.9:
	// the original Patient ID and issuer, ModifiedAt (DT), this system's
	// name and the reason COERCE, so the receiver knows the identity the
	// sender held. ModifiedAt is fixed by the caller: every pass over one
	// instance must write the same bytes.
	ModifyingSystem string
	ModifiedAt      string
}

const (
	tagPatientIDNum = 0x00100020
	tagIssuerNum    = 0x00100021
	tagOriginalAttr = 0x04000561
	tsImplicitVRLE  = "1.2.840.10008.1.2"
	tsExplicitVRLE  = "1.2.840.10008.1.2.1"
	maxIdentityLO   = 64 // LO holds at most 64 characters
)

// RewriteIdentity streams the Part 10 instance r to w with e applied: the
// values of Patient ID (0010,0020) and Issuer of Patient ID (0010,0021) of
// the top-level dataset are replaced (inserted, in tag order, when absent);
// the preamble, the file meta group (whose group length covers only itself)
// and every other byte, pixel data included, are copied unchanged. Only the
// elements before (0010,0021) are walked (sequences of undefined length
// through their delimiters); the rest is one io.Copy. Memory is bounded by
// the largest element before group 0010 that it walks, which it copies in
// chunks, and by its 64 KiB buffer.
//
// Implicit and Explicit VR Little Endian are supported; other transfer
// syntaxes (deflated, big endian, compressed pixel data is fine: it comes
// after) fail with ErrUnsupportedTransferSyntax, unreadable input with
// ErrMalformed, a Patient ID other than e.ExpectPatientID with
// ErrIdentityMismatch, values LO cannot hold with ErrInvalidInput. It
// returns the bytes written.
func RewriteIdentity(w io.Writer, r io.Reader, e IdentityEdit) (int64, error) {
	if len(e.PatientID) > maxIdentityLO || len(e.Issuer) > maxIdentityLO || e.PatientID == "" {
		return 0, fmt.Errorf("coerced Patient ID %d and issuer %d characters: LO holds 1 to 64: %w", len(e.PatientID), len(e.Issuer), ErrInvalidInput)
	}
	return rewriteStream(w, r, func(br *bufio.Reader, bw *bufio.Writer) error {
		return (&identityRewriter{r: br, w: bw, edit: e}).run()
	})
}

type identityRewriter struct {
	r        *bufio.Reader
	w        *bufio.Writer
	edit     IdentityEdit
	implicit bool
	wrotePID bool
	wroteIss bool
	// oldPID and oldIssuer are the values replaced, for the Original
	// Attributes Sequence item.
	oldPID, oldIssuer string
	wroteOrig         bool
}

func rewriteMalformed(format string, args ...any) error {
	return fmt.Errorf("identity coercion: "+format+": %w", append(args, ErrMalformed)...)
}

// ErrIdentityMismatch: the instance's Patient ID is not the one
// IdentityEdit.ExpectPatientID says it carries.
var ErrIdentityMismatch = errors.New("patient identity differs from the expected one")

func (x *identityRewriter) copyN(n int64) error {
	if _, err := io.CopyN(x.w, x.r, n); err != nil {
		if errors.Is(err, io.EOF) {
			return rewriteMalformed("value truncated")
		}
		return err
	}
	return nil
}

func (x *identityRewriter) run() error {
	head := make([]byte, 132)
	if _, err := io.ReadFull(x.r, head); err != nil || string(head[128:]) != "DICM" {
		return rewriteMalformed("not a Part 10 file (no DICM prefix)")
	}
	x.w.Write(head)
	ts := ""
	for {
		b, err := x.r.Peek(8)
		if err != nil || binary.LittleEndian.Uint16(b) != 0x0002 {
			break
		}
		tag, vr, vl, hdr, err := x.header(false)
		if err != nil {
			return err
		}
		x.w.Write(hdr)
		if vl == 0xFFFFFFFF {
			return rewriteMalformed("file meta element with undefined length")
		}
		if tag == 0x00020010 {
			v := make([]byte, min(vl, 128))
			if _, err := io.ReadFull(x.r, v); err != nil {
				return rewriteMalformed("transfer syntax truncated")
			}
			x.w.Write(v)
			ts = strings.TrimRight(string(v), "\x00 ")
			if err := x.copyN(int64(vl) - int64(len(v))); err != nil {
				return err
			}
			continue
		}
		_ = vr
		if err := x.copyN(int64(vl)); err != nil {
			return err
		}
	}
	switch ts {
	case tsImplicitVRLE:
		x.implicit = true
	case tsExplicitVRLE, "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57",
		"1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81", "1.2.840.10008.1.2.4.90",
		"1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.5":
		// explicit VR little endian datasets (encapsulated pixel data comes after group 0010)
	default:
		return fmt.Errorf("identity coercion: transfer syntax %q: Implicit or Explicit VR Little Endian datasets only: %w", ts, ErrUnsupportedTransferSyntax)
	}
	for {
		b, err := x.r.Peek(4)
		if err != nil { // end of the dataset
			if err := x.insertUpTo(0xFFFFFFFF); err != nil {
				return err
			}
			if x.edit.ModifyingSystem != "" && !x.wroteOrig {
				x.w.Write(x.originalSequence())
			}
			return nil
		}
		tag := uint32(binary.LittleEndian.Uint16(b))<<16 | uint32(binary.LittleEndian.Uint16(b[2:]))
		if err := x.insertUpTo(tag); err != nil {
			return err
		}
		if tag > tagIssuerNum && (x.edit.ModifyingSystem == "" || x.wroteOrig) {
			_, err := io.Copy(x.w, x.r)
			return err
		}
		if x.edit.ModifyingSystem != "" && tag >= tagOriginalAttr {
			if tag == tagOriginalAttr {
				if err := x.appendOriginal(); err != nil {
					return err
				}
			} else {
				x.w.Write(x.originalSequence())
				x.wroteOrig = true
			}
			continue
		}
		if tag == tagPatientIDNum || tag == tagIssuerNum {
			if err := x.replace(tag); err != nil {
				return err
			}
			continue
		}
		if err := x.element(0); err != nil {
			return err
		}
	}
}

// insertUpTo writes the edited elements that belong before tag and were not
// in the instance.
func (x *identityRewriter) insertUpTo(tag uint32) error {
	if !x.wrotePID && tagPatientIDNum < tag {
		if x.edit.ExpectPatientID != "" {
			// The value stays out of the message: it ends up in the
			// transfer's last_error and the application log.
			return fmt.Errorf("identity coercion: the instance has no Patient ID, its index entry has one: %w", ErrIdentityMismatch)
		}
		x.writeLO(tagPatientIDNum, x.edit.PatientID)
		x.wrotePID = true
	}
	if !x.wroteIss && tagIssuerNum < tag {
		x.writeLO(tagIssuerNum, x.edit.Issuer)
		x.wroteIss = true
	}
	return nil
}

func (x *identityRewriter) writeLO(tag uint32, v string) {
	if len(v)%2 == 1 {
		v += " "
	}
	var b []byte
	b = binary.LittleEndian.AppendUint16(b, uint16(tag>>16))
	b = binary.LittleEndian.AppendUint16(b, uint16(tag))
	if x.implicit {
		b = binary.LittleEndian.AppendUint32(b, uint32(len(v)))
	} else {
		b = append(b, 'L', 'O')
		b = binary.LittleEndian.AppendUint16(b, uint16(len(v)))
	}
	x.w.Write(append(b, v...))
}

// replace reads the instance's Patient ID or issuer element and writes the
// edited one instead.
func (x *identityRewriter) replace(tag uint32) error {
	_, _, vl, _, err := x.header(x.implicit)
	if err != nil {
		return err
	}
	if vl > 1024 {
		return rewriteMalformed("(%04X,%04X) of %d bytes", tag>>16, tag&0xFFFF, vl)
	}
	old := make([]byte, vl)
	if _, err := io.ReadFull(x.r, old); err != nil {
		return rewriteMalformed("(%04X,%04X) truncated", tag>>16, tag&0xFFFF)
	}
	value := strings.TrimSpace(string(bytes.TrimRight(old, "\x00")))
	if tag == tagIssuerNum {
		x.oldIssuer = value
	}
	if tag == tagPatientIDNum {
		x.oldPID = value
		got := value
		if got != strings.TrimSpace(x.edit.ExpectPatientID) {
			return fmt.Errorf("identity coercion: the instance's Patient ID differs from its index entry: %w", ErrIdentityMismatch)
		}
		x.writeLO(tag, x.edit.PatientID)
		x.wrotePID = true
		return nil
	}
	x.writeLO(tag, x.edit.Issuer)
	x.wroteIss = true
	return nil
}

// header reads an element or item header; implicit selects the dataset's
// implicit VR encoding (items and delimiters have no VR in either). It
// returns the header's bytes for copying.
func (x *identityRewriter) header(implicit bool) (tag uint32, vr string, vl uint32, raw []byte, err error) {
	b, err := x.r.Peek(8)
	if err != nil {
		return 0, "", 0, nil, rewriteMalformed("element header truncated")
	}
	tag = uint32(binary.LittleEndian.Uint16(b))<<16 | uint32(binary.LittleEndian.Uint16(b[2:]))
	if implicit || tag>>16 == 0xFFFE {
		raw = make([]byte, 8)
		if _, err := io.ReadFull(x.r, raw); err != nil { // cannot fail after Peek(8); checked all the same
			return 0, "", 0, nil, rewriteMalformed("element header truncated")
		}
		return tag, "", binary.LittleEndian.Uint32(raw[4:]), raw, nil
	}
	vr = string(b[4:6])
	if !knownVR(vr) {
		return 0, "", 0, nil, rewriteMalformed("element (%04X,%04X) has no valid VR", tag>>16, tag&0xFFFF)
	}
	if !longVR(vr) {
		raw = make([]byte, 8)
		if _, err := io.ReadFull(x.r, raw); err != nil { // cannot fail after Peek(8); checked all the same
			return 0, "", 0, nil, rewriteMalformed("element header truncated")
		}
		return tag, vr, uint32(binary.LittleEndian.Uint16(raw[6:])), raw, nil
	}
	raw = make([]byte, 12)
	if _, err := io.ReadFull(x.r, raw); err != nil {
		return 0, "", 0, nil, rewriteMalformed("element header truncated")
	}
	return tag, vr, binary.LittleEndian.Uint32(raw[8:]), raw, nil
}

// element copies one element of a dataset, through the delimiters of an
// undefined length.
func (x *identityRewriter) element(depth int) error {
	if depth > 64 {
		return rewriteMalformed("sequences nested too deep")
	}
	_, _, vl, raw, err := x.header(x.implicit)
	if err != nil {
		return err
	}
	x.w.Write(raw)
	if vl != 0xFFFFFFFF {
		return x.copyN(int64(vl))
	}
	return x.undefined(depth)
}

// undefined copies the items of a sequence (or fragments) of undefined
// length up to and including its delimiter.
func (x *identityRewriter) undefined(depth int) error {
	for {
		tag, _, vl, raw, err := x.header(true)
		if err != nil {
			return err
		}
		x.w.Write(raw)
		switch tag {
		case 0xFFFEE0DD: // sequence delimiter
			return nil
		case 0xFFFEE000: // item
			if vl != 0xFFFFFFFF {
				if err := x.copyN(int64(vl)); err != nil {
					return err
				}
				continue
			}
			if err := x.item(depth + 1); err != nil {
				return err
			}
		default:
			return rewriteMalformed("(%04X,%04X) inside a sequence", tag>>16, tag&0xFFFF)
		}
	}
}

// item copies the elements of an item of undefined length and its
// delimiter.
func (x *identityRewriter) item(depth int) error {
	for {
		b, err := x.r.Peek(4)
		if err != nil {
			return rewriteMalformed("item not delimited")
		}
		if binary.LittleEndian.Uint16(b) == 0xFFFE && binary.LittleEndian.Uint16(b[2:]) == 0xE00D {
			raw := make([]byte, 8)
			if _, err := io.ReadFull(x.r, raw); err != nil {
				return rewriteMalformed("item delimiter truncated")
			}
			x.w.Write(raw)
			return nil
		}
		if err := x.element(depth); err != nil {
			return err
		}
	}
}

// appendElement appends an element of the dataset's encoding with a
// defined length.
func (x *identityRewriter) appendElement(b []byte, tag uint32, vr string, v []byte) []byte {
	return appendElementLE(b, tag, vr, x.implicit, v)
}

func padded(v string, pad byte) []byte {
	b := []byte(v)
	if len(b)%2 == 1 {
		b = append(b, pad)
	}
	return b
}

// item wraps elements in an item of defined length.
func item(elements []byte) []byte {
	b := binary.LittleEndian.AppendUint32(nil, 0xE000FFFE)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(elements)))
	return append(b, elements...)
}

// originalItem is the Original Attributes Sequence item of this change.
func (x *identityRewriter) originalItem() []byte {
	var mod []byte
	mod = x.appendElement(mod, tagPatientIDNum, "LO", padded(x.oldPID, ' '))
	mod = x.appendElement(mod, tagIssuerNum, "LO", padded(x.oldIssuer, ' '))
	var el []byte
	el = x.appendElement(el, 0x04000550, "SQ", item(mod)) // Modified Attributes Sequence
	el = x.appendElement(el, 0x04000562, "DT", padded(x.edit.ModifiedAt, ' '))
	el = x.appendElement(el, 0x04000563, "LO", padded(x.edit.ModifyingSystem, ' '))
	el = x.appendElement(el, 0x04000564, "LO", padded(x.oldIssuer, ' ')) // Source of Previous Values
	el = x.appendElement(el, 0x04000565, "CS", padded("COERCE", ' '))
	return item(el)
}

// originalSequence is a new Original Attributes Sequence of one item.
func (x *identityRewriter) originalSequence() []byte {
	return x.appendElement(nil, tagOriginalAttr, "SQ", x.originalItem())
}

// appendOriginal copies the instance's Original Attributes Sequence with
// this change's item added at its end.
func (x *identityRewriter) appendOriginal() error {
	_, _, vl, raw, err := x.header(x.implicit)
	if err != nil {
		return err
	}
	it := x.originalItem()
	x.wroteOrig = true
	if vl != 0xFFFFFFFF {
		if uint64(vl)+uint64(len(it)) >= 0xFFFFFFFF {
			return rewriteMalformed("Original Attributes Sequence too long to extend")
		}
		binary.LittleEndian.PutUint32(raw[len(raw)-4:], vl+uint32(len(it)))
		x.w.Write(raw)
		if err := x.copyN(int64(vl)); err != nil {
			return err
		}
		x.w.Write(it)
		return nil
	}
	x.w.Write(raw)
	for {
		tag, _, ivl, iraw, err := x.header(true)
		if err != nil {
			return err
		}
		if tag == 0xFFFEE0DD {
			x.w.Write(it)
			x.w.Write(iraw)
			return nil
		}
		if tag != 0xFFFEE000 {
			return rewriteMalformed("(%04X,%04X) inside a sequence", tag>>16, tag&0xFFFF)
		}
		x.w.Write(iraw)
		if ivl != 0xFFFFFFFF {
			if err := x.copyN(int64(ivl)); err != nil {
				return err
			}
			continue
		}
		if err := x.item(1); err != nil {
			return err
		}
	}
}
