package dicomcodec

import (
	"encoding/base64"
	"encoding/binary"
	"math"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/suyashkumar/dicom/pkg/tag"
)

// Value decoding by VR: what an element's bytes become in an Attribute.

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
