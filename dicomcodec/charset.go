package dicomcodec

import (
	"strings"

	"github.com/suyashkumar/dicom/pkg/charset"
)

// Character sets: Specific Character Set (0008,0005) terms, ISO 2022 code
// extensions, and the library's decoders behind them.

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
