package recordcodec

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"unicode/utf8"

	"github.com/dicom-gateway/gateway/dicomcodec"
	"github.com/dicom-gateway/gateway/gateway"
)

// The compact form of a Dataset is what indexes store for the study- and
// series-level attributes that every search page reads: decoding it builds
// the Dataset without encoding/json (whose reflection and per-attribute
// UnmarshalJSON dominated QIDO latency), and its strings share the memory of
// the stored value.
//
//	version 1 | uvarint attributes | uvarint values |
//	per attribute: str tag | str VR | 'v' uvarint n, n values | 'j' str JSON of the attribute
//	value: 's' str | 'i' varint | 'u' uvarint | 'f' 8 bytes (IEEE 754, little endian) | 'p' str str str | 'n'
//	str: uvarint length, bytes
//
// An attribute is written as values only when its JSON round trip is the
// identity (the value types Attribute.UnmarshalJSON yields for its VR, valid
// UTF-8, finite numbers, no binary data); any other (sequences, bulk data,
// unusual types) is written as its DICOM JSON, so DecodeCompact always
// returns what a JSON round trip of the Dataset returns.
const compactVersion = 1

var errCompact = errors.New("compact dataset: malformed")

// AppendCompact appends the compact form of d to dst.
func AppendCompact(dst []byte, d dicomcodec.Dataset) ([]byte, error) {
	nvals := 0
	for _, a := range d {
		nvals += len(a.Value)
	}
	dst = append(dst, compactVersion)
	dst = binary.AppendUvarint(dst, uint64(len(d)))
	dst = binary.AppendUvarint(dst, uint64(nvals))
	// Tags in order, so that equal datasets encode to equal bytes (the
	// Redis index compares stored records byte for byte).
	tags := make([]string, 0, len(d))
	for tag := range d {
		tags = append(tags, tag)
	}
	slices.Sort(tags)
	for _, tag := range tags {
		a := d[tag]
		dst = appendStr(dst, tag)
		dst = appendStr(dst, a.VR)
		if !plainAttribute(a) {
			b, err := json.Marshal(a)
			if err != nil {
				return nil, fmt.Errorf("compact dataset: %s: %w", tag, err)
			}
			dst = append(dst, 'j')
			dst = appendStr(dst, string(b))
			continue
		}
		dst = append(dst, 'v')
		dst = binary.AppendUvarint(dst, uint64(len(a.Value)))
		for _, v := range a.Value {
			switch x := v.(type) {
			case nil:
				dst = append(dst, 'n')
			case string:
				dst = appendStr(append(dst, 's'), x)
			case int64:
				dst = binary.AppendVarint(append(dst, 'i'), x)
			case uint64:
				if x <= math.MaxInt64 { // UnmarshalJSON tries int64 first
					dst = binary.AppendVarint(append(dst, 'i'), int64(x))
				} else {
					dst = binary.AppendUvarint(append(dst, 'u'), x)
				}
			case float64:
				dst = binary.LittleEndian.AppendUint64(append(dst, 'f'), math.Float64bits(x))
			case dicomcodec.PersonName:
				dst = append(dst, 'p')
				dst = appendStr(dst, x.Alphabetic)
				dst = appendStr(dst, x.Ideographic)
				dst = appendStr(dst, x.Phonetic)
			}
		}
	}
	return dst, nil
}

// plainAttribute reports whether a's values survive a JSON round trip
// unchanged, so that the compact form may hold them as they are.
func plainAttribute(a dicomcodec.Attribute) bool {
	if a.BulkDataURI != "" || a.InlineBinary != "" {
		return false
	}
	for _, v := range a.Value {
		var ok bool
		switch x := v.(type) {
		case nil:
			ok = true
		case string:
			ok = utf8.ValidString(x) && textVR(a.VR)
		case int64, uint64:
			ok = intVR(a.VR)
		case float64:
			ok = !math.IsNaN(x) && !math.IsInf(x, 0) && (a.VR == "DS" || a.VR == "FD" || a.VR == "FL")
		case dicomcodec.PersonName:
			ok = a.VR == "PN" && utf8.ValidString(x.Alphabetic) && utf8.ValidString(x.Ideographic) && utf8.ValidString(x.Phonetic)
		}
		if !ok {
			return false
		}
	}
	return true
}

func intVR(vr string) bool {
	switch vr {
	case "IS", "SL", "SS", "UL", "US", "SV", "UV":
		return true
	}
	return false
}

func textVR(vr string) bool {
	switch vr {
	case "PN", "SQ", "DS", "FD", "FL":
		return false
	}
	return !intVR(vr)
}

func appendStr(dst []byte, s string) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(s)))
	return append(dst, s...)
}

// DecodeCompact reads a Dataset written by AppendCompact. The strings of the
// result share s's memory.
func DecodeCompact(s string) (dicomcodec.Dataset, error) {
	r := compactReader{s: s}
	if r.byte() != compactVersion {
		return nil, fmt.Errorf("%w: unknown version", errCompact)
	}
	nattrs, nvals := r.uvarint(), r.uvarint()
	if r.err != nil || nattrs > uint64(len(s)) || nvals > uint64(len(s)) {
		return nil, errCompact
	}
	d := make(dicomcodec.Dataset, nattrs+5) // room for the computed attributes
	vals := make([]any, 0, nvals)
	for range nattrs {
		tag, vr := r.str(), r.str()
		a := dicomcodec.Attribute{VR: vr}
		switch r.byte() {
		case 'j':
			if r.err == nil {
				if err := json.Unmarshal([]byte(r.str()), &a); err != nil {
					return nil, fmt.Errorf("compact dataset: %s: %w", tag, gateway.FromCodec(err))
				}
			}
		case 'v':
			n := r.uvarint()
			if n > uint64(cap(vals)-len(vals)) {
				return nil, errCompact
			}
			start := len(vals)
			for range n {
				vals = append(vals, r.value())
			}
			if n > 0 {
				a.Value = vals[start:len(vals):len(vals)]
			}
		default:
			return nil, errCompact
		}
		if r.err != nil {
			return nil, r.err
		}
		d[tag] = a
	}
	if r.err == nil && r.i != len(s) {
		return nil, fmt.Errorf("%w: trailing bytes", errCompact)
	}
	return d, r.err
}

type compactReader struct {
	s   string
	i   int
	err error
}

func (r *compactReader) fail() {
	if r.err == nil {
		r.err = errCompact
	}
	r.i = len(r.s)
}

func (r *compactReader) byte() byte {
	if r.i >= len(r.s) {
		r.fail()
		return 0
	}
	r.i++
	return r.s[r.i-1]
}

func (r *compactReader) uvarint() uint64 {
	var x uint64
	for shift := 0; shift < 64; shift += 7 {
		b := r.byte()
		if r.err != nil {
			return 0
		}
		x |= uint64(b&0x7f) << shift
		if b < 0x80 {
			return x
		}
	}
	r.fail()
	return 0
}

func (r *compactReader) str() string {
	n := r.uvarint()
	if r.err != nil || n > uint64(len(r.s)-r.i) {
		r.fail()
		return ""
	}
	s := r.s[r.i : r.i+int(n)]
	r.i += int(n)
	return s
}

func (r *compactReader) value() any {
	switch r.byte() {
	case 'n':
		return nil
	case 's':
		return r.str()
	case 'i':
		return r.varint()
	case 'u':
		return r.uvarint()
	case 'f':
		if len(r.s)-r.i < 8 {
			r.fail()
			return nil
		}
		var bits uint64
		for k := 7; k >= 0; k-- {
			bits = bits<<8 | uint64(r.s[r.i+k])
		}
		r.i += 8
		return math.Float64frombits(bits)
	case 'p':
		return dicomcodec.PersonName{Alphabetic: r.str(), Ideographic: r.str(), Phonetic: r.str()}
	}
	r.fail()
	return nil
}

// AppendStudy appends the compact form of s (its counts, then its
// attributes as AppendCompact writes a Dataset) to dst; DecodeStudy reads it
// back.
func AppendStudy(dst []byte, s *gateway.StudySummary) ([]byte, error) {
	dst = append(dst, 'S')
	dst = appendStr(dst, s.StudyInstanceUID)
	dst = binary.AppendVarint(dst, int64(s.Series))
	dst = binary.AppendVarint(dst, int64(s.Instances))
	for _, m := range []map[string]int{s.Modalities, s.SOPClasses} {
		dst = binary.AppendUvarint(dst, uint64(len(m)))
		for k, n := range m {
			dst = binary.AppendVarint(appendStr(dst, k), int64(n))
		}
	}
	return AppendCompact(dst, s.Attrs)
}

// DecodeStudy reads a study summary written by AppendStudy.
func DecodeStudy(s string) (*gateway.StudySummary, error) {
	r := compactReader{s: s}
	if r.byte() != 'S' {
		return nil, fmt.Errorf("%w: not a study summary", errCompact)
	}
	st := &gateway.StudySummary{StudyInstanceUID: r.str()}
	st.Series, st.Instances = int(r.varint()), int(r.varint())
	for _, m := range []*map[string]int{&st.Modalities, &st.SOPClasses} {
		n := r.uvarint()
		if r.err != nil || n > uint64(len(s)) {
			return nil, errCompact
		}
		*m = make(map[string]int, n)
		for range n {
			k := r.str()
			(*m)[k] = int(r.varint())
		}
	}
	if r.err != nil {
		return nil, r.err
	}
	attrs, err := DecodeCompact(s[r.i:])
	if err != nil {
		return nil, err
	}
	st.Attrs = attrs
	return st, nil
}

func (r *compactReader) varint() int64 {
	u := r.uvarint()
	return int64(u>>1) ^ -int64(u&1)
}
