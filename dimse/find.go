package dimse

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"github.com/dicom-gateway/gateway/dicomcodec"
	"github.com/dicom-gateway/gateway/gateway"
)

// The Query/Retrieve information models C-FIND is offered for.
const (
	StudyRootFind   = "1.2.840.10008.5.1.4.1.2.2.1"
	PatientRootFind = "1.2.840.10008.5.1.4.1.2.1.1"
)

// C-FIND command fields and statuses (PS3.4 C.4.1.1.4).
const (
	CommandCFindRQ   uint16 = 0x0020
	CommandCFindRSP  uint16 = 0x8020
	CommandCCancelRQ uint16 = 0x0FFF

	StatusPending             Status = 0xFF00
	StatusIdentifierMismatch  Status = 0xA900
	StatusUnableToProcessFind Status = 0xC000
)

// Finder answers C-FIND: the gateway's index search (the one QIDO-RS
// uses), through the adapter in cmd/gateway, which also audits the query.
type Finder interface {
	// Find runs q for the caller and records the query in the audit log;
	// an audit that cannot be written fails the query (as for QIDO-RS).
	Find(ctx context.Context, c Caller, q *gateway.Query) (*gateway.SearchResult, error)
}

// maxFindMatches bounds the matches one C-FIND returns (QIDO-RS's largest
// page); beyond it the query ends with A700 after the first ones.
const maxFindMatches = 10000

// maxIdentifierBytes bounds a C-FIND identifier (a few dozen keys).
const maxIdentifierBytes = 64 << 10

const (
	tagQueryRetrieveLevel = "00080052"
	tagSpecificCharset    = "00080005"
)

// findQuery turns a C-FIND identifier into the index query QIDO-RS would
// run: each key with a value is a matching key (same wildcard, range and
// list rules, PS3.4 C.2.2.2), every key is a return key. It also returns
// the requested keys, in tag order, for the responses.
func findQuery(ident []element, model string) (*gateway.Query, []element, error) {
	level := ""
	params := url.Values{}
	var keys []element
	latin1 := false
	for _, e := range ident { // in tag order: the character set comes first
		switch e.tag {
		case tagQueryRetrieveLevel:
			level = strings.TrimSpace(string(e.value))
			continue
		case tagSpecificCharset:
			switch cs := strings.TrimSpace(string(e.value)); cs {
			case "", "ISO_IR 6", "ISO_IR 192":
			case "ISO_IR 100":
				latin1 = true
			default:
				return nil, nil, fmt.Errorf("identifier character set %q: only the default repertoire, ISO_IR 100 and ISO_IR 192 are read", cs)
			}
			continue
		}
		if latin1 {
			e.value = latin1ToUTF8(e.value)
		}
		if e.tag[:4] == "0000" || e.tag[:4] == "0002" {
			continue
		}
		keys = append(keys, e)
		params.Add("includefield", e.tag)
		if e.vr == "SQ" {
			continue // sequence matching is not offered: returned only
		}
		if v, ok := matchText(e); ok && v != "" && v != "*" {
			params.Add(e.tag, v)
		}
	}
	var ql gateway.QueryLevel
	switch level {
	case "STUDY":
		ql = gateway.LevelStudy
	case "SERIES":
		ql = gateway.LevelSeries
	case "IMAGE":
		ql = gateway.LevelInstance
	case "PATIENT":
		return nil, nil, errors.New("query level PATIENT is not offered: query at STUDY level with patient keys")
	default:
		return nil, nil, fmt.Errorf("query/retrieve level %q is not STUDY, SERIES or IMAGE", level)
	}
	_ = model // both models query the same studies; PATIENT level is refused above
	if err := hierarchicalKeys(ident, ql); err != nil {
		return nil, nil, err
	}
	params.Set("limit", strconv.Itoa(maxFindMatches))
	q, err := gateway.ParseQuery(ql, "", "", params, gateway.QueryLimits{Default: maxFindMatches, Max: maxFindMatches})
	if err != nil {
		return nil, nil, err
	}
	// An element of the gateway's private block travels with its creator
	// (PS3.5 7.8.1; IdentityConflicts reads both), asked for or not.
	if slices.ContainsFunc(keys, func(e element) bool { return strings.HasPrefix(e.tag, "000910") }) &&
		!slices.ContainsFunc(keys, func(e element) bool { return e.tag == gateway.TagGatewayPrivateCreator }) {
		keys = append(keys, element{tag: gateway.TagGatewayPrivateCreator, vr: "LO"})
	}
	slices.SortFunc(keys, func(a, b element) int { return strings.Compare(a.tag, b.tag) })
	return q, keys, nil
}

// hierarchicalKeys checks the unique keys of the levels above the query's
// own, which a hierarchical query (PS3.4 C.4.1.2.1; relational queries are
// not negotiated here) gives as one value each: the Study Instance UID for
// a SERIES query, the Study and Series Instance UIDs for an IMAGE query.
// Without them a SERIES query would match series across every study. The
// Patient ID above a Patient Root STUDY query is not required: a STUDY
// query matches across patients in both models here.
func hierarchicalKeys(ident []element, level gateway.QueryLevel) error {
	single := func(tag string) bool {
		for _, e := range ident {
			if e.tag == tag {
				// One UID: no list (QIDO's "," as well as a backslash), no
				// wildcard, nothing empty.
				return gateway.ValidateUID(uidValue(e.value)) == nil
			}
		}
		return false
	}
	switch {
	case level == gateway.LevelSeries && !single(dicomcodec.TagStudyInstanceUID):
		return errors.New("SERIES query without one Study Instance UID")
	case level == gateway.LevelInstance && !(single(dicomcodec.TagStudyInstanceUID) && single(dicomcodec.TagSeriesInstanceUID)):
		return errors.New("IMAGE query without one Study and Series Instance UID")
	}
	return nil
}

// matchText is a key's value as QIDO-RS query text: a string VR as it
// is; a binary number (US, SS, UL, SL, FL, FD, SV, UV) in decimal, values
// joined by a backslash, as a QIDO-RS client would write it. ok is false
// for other binary values (OB, OW, AT and the like), which are returned,
// never matched.
func matchText(e element) (string, bool) {
	var size int
	switch e.vr {
	case "US", "SS":
		size = 2
	case "UL", "SL", "FL":
		size = 4
	case "FD", "SV", "UV":
		size = 8
	}
	switch {
	case size == 0 && (strings.HasPrefix(e.vr, "O") || e.vr == "UN" || e.vr == "AT"):
		return "", false
	case size == 0:
		return strings.TrimRight(string(e.value), " \x00"), true
	case len(e.value)%size != 0:
		return "", false
	}
	var vals []string
	for b := e.value; len(b) > 0; b = b[size:] {
		var v string
		switch e.vr {
		case "US":
			v = strconv.FormatUint(uint64(binary.LittleEndian.Uint16(b)), 10)
		case "SS":
			v = strconv.FormatInt(int64(int16(binary.LittleEndian.Uint16(b))), 10)
		case "UL":
			v = strconv.FormatUint(uint64(binary.LittleEndian.Uint32(b)), 10)
		case "SL":
			v = strconv.FormatInt(int64(int32(binary.LittleEndian.Uint32(b))), 10)
		case "FL":
			v = strconv.FormatFloat(float64(math.Float32frombits(binary.LittleEndian.Uint32(b))), 'g', -1, 32)
		case "FD":
			v = strconv.FormatFloat(math.Float64frombits(binary.LittleEndian.Uint64(b)), 'g', -1, 64)
		case "SV":
			v = strconv.FormatInt(int64(binary.LittleEndian.Uint64(b)), 10)
		case "UV":
			v = strconv.FormatUint(binary.LittleEndian.Uint64(b), 10)
		}
		vals = append(vals, v)
	}
	return strings.Join(vals, `\`), true
}

func latin1ToUTF8(b []byte) []byte {
	out := make([]rune, len(b))
	for i, c := range b {
		out[i] = rune(c)
	}
	return []byte(string(out))
}

// element is one top-level element of a small dataset (an identifier).
type element struct {
	tag   string // "GGGGEEEE"
	vr    string
	value []byte // nil for a sequence
}

// parseIdentifier reads the top-level elements of a C-FIND identifier in
// Implicit or Explicit VR Little Endian; sequences are skipped over (their
// items are not used) but listed, so they are returned empty.
func parseIdentifier(b []byte, explicit bool) ([]element, error) {
	var out []element
	for len(b) > 0 {
		e, n, err := readElement(b, explicit, 0)
		if err != nil {
			return nil, err
		}
		out = append(out, e)
		b = b[n:]
	}
	return out, nil
}

// readElement reads one element at the start of b and returns it with the
// bytes it took; a sequence of undefined length is walked to its delimiter.
func readElement(b []byte, explicit bool, depth int) (element, int, error) {
	if depth > 8 {
		return element{}, 0, malformed("identifier nests sequences deeper than 8")
	}
	if len(b) < 8 {
		return element{}, 0, malformed("identifier element header of %d bytes", len(b))
	}
	group, el := binary.LittleEndian.Uint16(b[0:2]), binary.LittleEndian.Uint16(b[2:4])
	e := element{tag: fmt.Sprintf("%04X%04X", group, el)}
	var n uint32
	hdr := 8
	if explicit && group != 0xFFFE {
		e.vr = string(b[4:6])
		switch e.vr {
		case "OB", "OW", "OF", "SQ", "UT", "UN", "UC", "UR", "OD", "OL", "OV", "SV", "UV":
			if len(b) < 12 {
				return e, 0, malformed("identifier element header of %d bytes", len(b))
			}
			n, hdr = binary.LittleEndian.Uint32(b[8:12]), 12
		default:
			n = uint32(binary.LittleEndian.Uint16(b[6:8]))
		}
	} else {
		e.vr = dicomcodec.TagVR(e.tag)
		n = binary.LittleEndian.Uint32(b[4:8])
	}
	if n == 0xFFFFFFFF {
		// Undefined length: a sequence (or an item) ends at its delimiter.
		rest := b[hdr:]
		used := hdr
		for {
			if len(rest) < 8 {
				return e, 0, malformed("sequence of undefined length without its delimiter")
			}
			t := binary.LittleEndian.Uint32(rest[0:4])
			if t == 0xE0DDFFFE || t == 0xE00DFFFE { // sequence or item delimiter
				return e, used + 8, nil
			}
			_, k, err := readElement(rest, explicit, depth+1)
			if err != nil {
				return e, 0, err
			}
			rest, used = rest[k:], used+k
		}
	}
	if uint64(n) > uint64(len(b)-hdr) {
		return e, 0, malformed("identifier element (%s) says %d bytes, %d are left", e.tag, n, len(b)-hdr)
	}
	if e.vr != "SQ" && group != 0xFFFE {
		e.value = b[hdr : hdr+int(n)]
	}
	return e, hdr + int(n), nil
}

// encodeMatch writes one C-FIND response identifier: the query level, the
// character set of the values (UTF-8), then every requested key in tag
// order with the match's value, or empty when the match has none.
func encodeMatch(level string, keys []element, match dicomcodec.Dataset, explicit bool) []byte {
	var b []byte
	b = appendElement(b, "00080005", "CS", padText("ISO_IR 192"), explicit)
	b = appendElement(b, tagQueryRetrieveLevel, "CS", padText(level), explicit)
	for _, k := range keys { // findQuery left out the level and character set
		vr := k.vr
		a, ok := match[k.tag]
		if ok && a.VR != "" {
			vr = a.VR
		}
		if vr == "" || vr == "UN" {
			vr = dicomcodec.TagVR(k.tag)
		}
		if vr == "" {
			continue
		}
		var v []byte
		if ok {
			v = encodeValue(vr, a.Value)
		}
		b = appendElement(b, k.tag, vr, v, explicit)
	}
	return sortElements(b, explicit)
}

// encodeValue encodes a DICOM JSON value in its VR (PS3.5 6.2); values of
// VRs a query has no business returning (bulk data, sequences) are empty.
func encodeValue(vr string, values []any) []byte {
	switch vr {
	case "SQ", "OB", "OW", "OF", "OD", "OL", "OV", "UN":
		return nil
	case "US", "SS", "UL", "SL", "FL", "FD", "SV", "UV":
		var b []byte
		for _, v := range values {
			f, ok := number(v)
			if !ok {
				continue
			}
			switch vr {
			case "US", "SS":
				b = binary.LittleEndian.AppendUint16(b, uint16(int64(f)))
			case "UL", "SL":
				b = binary.LittleEndian.AppendUint32(b, uint32(int64(f)))
			case "FL":
				b = binary.LittleEndian.AppendUint32(b, math.Float32bits(float32(f)))
			case "FD":
				b = binary.LittleEndian.AppendUint64(b, math.Float64bits(f))
			default:
				b = binary.LittleEndian.AppendUint64(b, uint64(int64(f)))
			}
		}
		return b
	}
	parts := make([]string, 0, len(values))
	for _, v := range values {
		switch x := v.(type) {
		case nil: // an empty value keeps its place among the others
			parts = append(parts, "")
		case string:
			parts = append(parts, x)
		case dicomcodec.PersonName:
			parts = append(parts, strings.TrimRight(x.Alphabetic+"="+x.Ideographic+"="+x.Phonetic, "="))
		case *dicomcodec.PersonName:
			parts = append(parts, strings.TrimRight(x.Alphabetic+"="+x.Ideographic+"="+x.Phonetic, "="))
		case map[string]any:
			a, _ := x["Alphabetic"].(string)
			parts = append(parts, a)
		default:
			if f, ok := number(v); ok {
				if vr == "IS" {
					parts = append(parts, strconv.FormatInt(int64(f), 10))
				} else {
					parts = append(parts, strconv.FormatFloat(f, 'g', 16, 64))
				}
			}
		}
	}
	s := strings.Join(parts, `\`)
	if vr == "UI" {
		return padUID(s)
	}
	return padText(s)
}

func number(v any) (float64, bool) {
	switch x := v.(type) {
	case float64:
		return x, true
	case float32:
		return float64(x), true
	case int:
		return float64(x), true
	case int64:
		return float64(x), true
	case uint16:
		return float64(x), true
	case uint32:
		return float64(x), true
	case string:
		f, err := strconv.ParseFloat(strings.TrimSpace(x), 64)
		return f, err == nil
	}
	return 0, false
}

func appendElement(b []byte, tag, vr string, v []byte, explicit bool) []byte {
	g, _ := strconv.ParseUint(tag[:4], 16, 16)
	e, _ := strconv.ParseUint(tag[4:], 16, 16)
	b = binary.LittleEndian.AppendUint16(b, uint16(g))
	b = binary.LittleEndian.AppendUint16(b, uint16(e))
	if !explicit {
		return append(binary.LittleEndian.AppendUint32(b, uint32(len(v))), v...)
	}
	b = append(b, vr...)
	switch vr {
	case "OB", "OW", "OF", "SQ", "UT", "UN", "UC", "UR", "OD", "OL", "OV", "SV", "UV":
		b = append(b, 0, 0)
		return append(binary.LittleEndian.AppendUint32(b, uint32(len(v))), v...)
	}
	if len(v) > 0xFFFF {
		v = v[:0xFFFE]
	}
	return append(binary.LittleEndian.AppendUint16(b, uint16(len(v))), v...)
}

// sortElements reorders encoded top-level elements by tag (PS3.5 7.1:
// ascending order), since the level and character set are written first.
func sortElements(b []byte, explicit bool) []byte {
	type span struct {
		tag uint32
		raw []byte
	}
	var spans []span
	for len(b) > 0 {
		_, n, err := readElement(b, explicit, 0)
		if err != nil {
			break
		}
		tag := uint32(binary.LittleEndian.Uint16(b[0:2]))<<16 | uint32(binary.LittleEndian.Uint16(b[2:4]))
		spans = append(spans, span{tag, b[:n]})
		b = b[n:]
	}
	slices.SortStableFunc(spans, func(x, y span) int {
		switch {
		case x.tag < y.tag:
			return -1
		case x.tag > y.tag:
			return 1
		}
		return 0
	})
	var out []byte
	for _, s := range spans {
		out = append(out, s.raw...)
	}
	return out
}
