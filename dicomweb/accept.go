package dicomweb

import (
	"cmp"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	"github.com/dicom-gateway/gateway/dicomcodec"
	"github.com/dicom-gateway/gateway/gateway"
)

// Media types of the WADO-RS representations.
const (
	mediaMultipart   = "multipart/related"
	mediaDICOM       = "application/dicom"
	mediaDICOMJSON   = "application/dicom+json"
	mediaJSON        = "application/json"
	mediaOctetStream = "application/octet-stream"
	mediaJPEG        = "image/jpeg"
	mediaPNG         = "image/png"
)

// mediaRange is one entry of an Accept header (PS3.18 8.7.1, RFC 9110
// 12.5.1): a media type or range, its parameters (keys lower case, values
// unquoted; "type" and "transfer-syntax" matter here) and its quality.
type mediaRange struct {
	mediaType string
	params    map[string]string
	q         float64
}

func (r mediaRange) String() string {
	var b strings.Builder
	b.WriteString(r.mediaType)
	for _, k := range slices.Sorted(maps.Keys(r.params)) {
		fmt.Fprintf(&b, "; %s=%s", k, r.params[k])
	}
	return b.String()
}

// parseAccept parses every Accept header value into media ranges, highest
// quality first (ties keep the client's order). Entries with q=0 are refused
// by the client and dropped; malformed entries are skipped rather than
// failing the request, so one odd entry in a viewer's long list does not
// turn into a 400. No header at all yields nil: the client takes the
// default representation.
func parseAccept(values []string) []mediaRange {
	var out []mediaRange
	for _, v := range values {
		for _, entry := range splitQuoted(v, ',') {
			r, ok := parseMediaRange(entry)
			if ok && r.q > 0 {
				out = append(out, r)
			}
		}
	}
	slices.SortStableFunc(out, func(a, b mediaRange) int { return cmp.Compare(b.q, a.q) })
	if out == nil && strings.TrimSpace(strings.Join(values, "")) != "" {
		out = []mediaRange{} // a header that accepts nothing is not "no header"
	}
	return out
}

// parseMediaRange parses `type/subtype; k=v; k="v"; q=0.5`. It is lenient
// about what viewers send: unquoted slashes in parameter values
// (type=application/octet-stream) and spaces around '='.
func parseMediaRange(s string) (mediaRange, bool) {
	parts := splitQuoted(s, ';')
	mt := strings.ToLower(strings.TrimSpace(parts[0]))
	typ, sub, ok := strings.Cut(mt, "/")
	if !ok || typ == "" || sub == "" || strings.ContainsAny(mt, " \t\"") {
		return mediaRange{}, false
	}
	r := mediaRange{mediaType: mt, params: map[string]string{}, q: 1}
	for _, p := range parts[1:] {
		k, v, ok := strings.Cut(p, "=")
		k = strings.ToLower(strings.TrimSpace(k))
		if !ok || k == "" {
			continue
		}
		v = strings.TrimSpace(v)
		if uq, err := strconv.Unquote(v); err == nil && strings.HasPrefix(v, `"`) {
			v = uq
		}
		if k == "q" {
			q, err := strconv.ParseFloat(v, 64)
			if err != nil || q < 0 || q > 1 {
				return mediaRange{}, false
			}
			r.q = q
			continue
		}
		r.params[k] = v
	}
	return r, true
}

// splitQuoted splits s at sep outside double quotes, trimming each piece.
func splitQuoted(s string, sep byte) []string {
	var out []string
	start, quoted := 0, false
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '\\' && quoted:
			i++
		case c == '"':
			quoted = !quoted
		case c == sep && !quoted:
			out = append(out, strings.TrimSpace(s[start:i]))
			start = i + 1
		}
	}
	return append(out, strings.TrimSpace(s[start:]))
}

// offer is one representation the server can produce for a resource.
type offer struct {
	// multipart is true for multipart/related; mediaType is then each part's
	// type, else the body's type.
	multipart bool
	mediaType string
	// syntaxes are the transfer syntaxes the bytes can be labelled with, the
	// first being the stored one, what "*" gets (empty: the representation
	// has no transfer syntax, e.g. JSON).
	syntaxes []string
	// defaultSyntax, when set, is what a client that names no syntax gets
	// (PS3.18 8.7.3.5.2: the default of the media type); else the first
	// of syntaxes.
	defaultSyntax string
}

// syntaxFor is the transfer syntax o is served in for a transfer-syntax
// parameter ts as the client sent it: "" (none), "*", or a UID. ok is false
// when o cannot be produced in ts.
func (o offer) syntaxFor(ts string) (string, bool) {
	switch {
	case len(o.syntaxes) == 0 || ts == "*":
		return first(o.syntaxes), true
	case ts == "" && o.defaultSyntax != "":
		return o.defaultSyntax, true
	case ts == "":
		return first(o.syntaxes), true
	}
	return ts, slices.Contains(o.syntaxes, ts)
}

// choice is the outcome of negotiation: the offer and the transfer syntax
// the client gets ("" when not applicable).
type choice struct {
	offer
	transferSyntax string
}

// contentType is the part (multipart) or body Content-Type of c, with its
// transfer-syntax parameter.
func (c choice) contentType() string {
	if c.transferSyntax == "" {
		return c.mediaType
	}
	return c.mediaType + "; transfer-syntax=" + c.transferSyntax
}

// negotiate returns the first offer, in the client's order of preference,
// that one of its media ranges accepts. With no Accept header the first offer
// is the answer (only rendered resources get that far: checkAccept refuses
// the others). ok is false when nothing acceptable can be produced (406).
//
// A missing transfer-syntax parameter gets the offer's defaultSyntax: for a
// whole instance stored in Implicit VR Little Endian or Explicit VR Big
// Endian, Explicit VR Little Endian (PS3.18 8.7.3.5.2: those two are not
// used on the web), transcoded; otherwise the stored syntax, as Orthanc and
// dcm4chee do: PS3.18 names Explicit VR Little Endian as the default, but a
// gateway that does not decompress would then refuse most compressed
// studies to viewers that never name a syntax.
func negotiate(accept []mediaRange, offers []offer) (choice, bool) {
	if len(offers) == 0 {
		return choice{}, false
	}
	if accept == nil {
		ts, _ := offers[0].syntaxFor("")
		return choice{offer: offers[0], transferSyntax: ts}, true
	}
	for _, r := range accept {
		for _, o := range offers {
			if ts, ok := r.accepts(o); ok {
				return choice{offer: o, transferSyntax: ts}, true
			}
		}
	}
	return choice{}, false
}

func first(s []string) string {
	if len(s) == 0 {
		return ""
	}
	return s[0]
}

// accepts reports whether r accepts o and with which transfer syntax.
func (r mediaRange) accepts(o offer) (string, bool) {
	switch {
	case r.mediaType == "*/*":
	case r.mediaType == mediaMultipart || r.mediaType == "multipart/*":
		if !o.multipart {
			return "", false
		}
		if t, ok := r.params["type"]; ok && !mediaTypeMatches(strings.ToLower(t), o.mediaType) {
			return "", false
		}
	default:
		if o.multipart || !mediaTypeMatches(r.mediaType, o.mediaType) {
			return "", false
		}
	}
	return o.syntaxFor(strings.TrimSpace(r.params["transfer-syntax"]))
}

// mediaTypeMatches reports whether pattern (a type, "type/*" or "*/*")
// matches t, treating the RLE media type's old x- name as an alias.
func mediaTypeMatches(pattern, t string) bool {
	pattern = strings.TrimSpace(pattern)
	if pattern == "image/x-dicom-rle" {
		pattern = "image/dicom-rle"
	}
	if pattern == "*/*" || pattern == t {
		return true
	}
	if p, ok := strings.CutSuffix(pattern, "/*"); ok {
		return strings.HasPrefix(t, p+"/")
	}
	return false
}

// notAcceptable is the 406 error for an Accept header nothing matched.
func notAcceptable(accept []mediaRange, what string, offers []offer) error {
	asked := make([]string, 0, len(accept))
	for _, r := range accept {
		asked = append(asked, r.String())
	}
	can := make([]string, 0, len(offers))
	for _, o := range offers {
		s := o.mediaType
		if o.multipart {
			s = mediaMultipart + "; type=" + o.mediaType
		}
		if len(o.syntaxes) > 0 {
			s += "; transfer-syntax=" + strings.Join(o.syntaxes, "|")
		}
		can = append(can, s)
	}
	return fmt.Errorf("%s: none of the accepted types [%s] can be served; available: [%s]: %w",
		what, truncate(strings.Join(asked, ", "), 400), strings.Join(can, ", "), gateway.ErrNotAcceptable)
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

// Offers per resource.

// instanceOffers: whole instances, multipart (any level) and, for a single
// instance, also a bare application/dicom body. The stored syntax comes
// first (what "*" gets); Explicit VR Little Endian follows when the stored
// syntax transcodes to it (gateway.CanTranscode: Implicit VR Little Endian,
// Explicit VR Big Endian), and is then also what a request naming no
// syntax gets. Compressed instances keep their syntax unless asked.
func instanceOffers(ts string, single bool) []offer {
	syntaxes := []string{ts}
	def := ""
	if dicomcodec.CanTranscode(ts, dicomcodec.TSExplicitLE) {
		syntaxes = append(syntaxes, dicomcodec.TSExplicitLE)
		def = dicomcodec.TSExplicitLE
	}
	o := []offer{{multipart: true, mediaType: mediaDICOM, syntaxes: syntaxes, defaultSyntax: def}}
	if single {
		o = append(o, offer{mediaType: mediaDICOM, syntaxes: syntaxes, defaultSyntax: def})
	}
	return o
}

// pixelSyntaxes are the labels pixel bytes stored in ts can carry: native
// little-endian pixels are the same bytes in implicit and explicit VR, and
// Explicit VR Little Endian is the octet-stream default (PS3.18 8.7.3.5).
func pixelSyntaxes(ts string) []string {
	if ts == dicomcodec.TSImplicitLE || ts == dicomcodec.TSExplicitLE {
		return []string{dicomcodec.TSExplicitLE, dicomcodec.TSImplicitLE}
	}
	return []string{ts}
}

// frameOffers: frames or pixel bulk data. Native pixels are
// application/octet-stream; encapsulated frames are the syntax's image type
// (image/jpeg, image/jls …) and, because viewers such as OHIF ask for
// type=application/octet-stream with transfer-syntax=*, also octet-stream
// labelled with the compressed syntax. single adds bare bodies (one frame).
//
// syn are the transfer syntaxes the bytes can be labelled with, the stored
// one first (pixelSyntaxes, plus any the server converts to).
func frameOffers(ts string, syn []string, encapsulated, single bool) []offer {
	var o []offer
	if it := imageMediaType(ts); encapsulated && it != mediaOctetStream {
		o = append(o, offer{multipart: true, mediaType: it, syntaxes: syn})
	}
	o = append(o, offer{multipart: true, mediaType: mediaOctetStream, syntaxes: syn})
	if single {
		for _, m := range o[:len(o):len(o)] {
			m.multipart = false
			o = append(o, m)
		}
	}
	return o
}

// imageMediaType is the media type of one frame of pixel data in syntax ts
// (PS3.18 Table 8.7.3-2 / 8.7.4-1); octet-stream for native and anything
// without an image type.
func imageMediaType(ts string) string {
	switch ts {
	case "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70":
		return mediaJPEG
	case "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81":
		return "image/jls"
	case "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91":
		return "image/jp2"
	case "1.2.840.10008.1.2.4.92", "1.2.840.10008.1.2.4.93":
		return "image/jpx"
	case "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203":
		return "image/jhc"
	case "1.2.840.10008.1.2.4.110", "1.2.840.10008.1.2.4.111", "1.2.840.10008.1.2.4.112":
		return "image/jxl"
	case dicomcodec.TSRLELossless:
		return "image/dicom-rle"
	case "1.2.840.10008.1.2.4.100", "1.2.840.10008.1.2.4.101":
		return "video/mpeg"
	case "1.2.840.10008.1.2.4.102", "1.2.840.10008.1.2.4.103", "1.2.840.10008.1.2.4.104",
		"1.2.840.10008.1.2.4.105", "1.2.840.10008.1.2.4.106", "1.2.840.10008.1.2.4.107", "1.2.840.10008.1.2.4.108":
		return "video/mp4"
	}
	return mediaOctetStream
}

// metadataOffers: DICOM JSON (also under application/json for generic
// clients), or DICOM XML, one part per instance (xml.go).
var metadataOffers = []offer{{mediaType: mediaDICOMJSON}, {mediaType: mediaJSON}, xmlMultipartOffer}

// renderedOffers: JPEG by default, or PNG.
var renderedOffers = []offer{{mediaType: mediaJPEG}, {mediaType: mediaPNG}}

// resourceKind is what a WADO-RS resource returns, for the checks PS3.18
// 8.7.5 makes before negotiating.
type resourceKind int

const (
	// resourceDICOM: instances (study, series, instance) and metadata.
	resourceDICOM resourceKind = iota
	// resourcePixels: frames and bulk data, whose single-part image and
	// video types (image/jpeg for one JPEG frame) are bulk data, not
	// renderings.
	resourcePixels
	// resourceRendered: /rendered and /thumbnail.
	resourceRendered
)

// renderedMediaTypes are the Rendered Media Types of PS3.18 Table 8.7.4-1.
var renderedMediaTypes = []string{
	mediaJPEG, "image/gif", mediaPNG, "image/jp2", "image/jpx",
	"video/mpeg", "video/mp4", "video/h265",
	"text/html", "text/plain", "text/xml", "text/rtf", "application/pdf",
}

// isDICOMMediaRange reports whether r names a DICOM media type (PS3.18
// 8.7.3): a DICOM object, its metadata, bulk data as octet-stream, or any
// multipart/related payload. Wildcards are neither DICOM nor rendered.
func isDICOMMediaRange(r mediaRange) bool {
	switch r.mediaType {
	case mediaDICOM, mediaDICOMJSON, "application/dicom+xml", mediaOctetStream, mediaMultipart:
		return true
	}
	return false
}

// isRenderedMediaRange reports whether r, sent to a resource of kind k,
// names a rendered media type.
func isRenderedMediaRange(r mediaRange, k resourceKind) bool {
	if !slices.Contains(renderedMediaTypes, r.mediaType) {
		return false
	}
	if k == resourcePixels && (strings.HasPrefix(r.mediaType, "image/") || strings.HasPrefix(r.mediaType, "video/")) {
		return false // a single frame or bulk data value in its own media type
	}
	return true
}

// checkAccept applies PS3.18 8.7.5 to a retrieve before anything is read:
//   - Accept media types that mix DICOM and rendered media types are 400;
//   - a DICOM resource asked for without an Accept header is 406 (8.7.7:
//     "shall return a 406"). curl sends "Accept: */*", which is fine and
//     gets the default representation; so do browsers and every DICOMweb
//     client we know of (OHIF, dicomweb-client, dcm4che, Orthanc).
//
// A rendered resource without an Accept header keeps getting image/jpeg,
// the default of the Single Frame Image category: rendered URLs are made to
// be used as links, by tools that may send no Accept at all, and answering
// them with a picture instead of 406 hides nothing a client needs to know.
func checkAccept(accept []mediaRange, k resourceKind) error {
	if accept == nil {
		if k == resourceRendered {
			return nil
		}
		return fmt.Errorf("a retrieve needs an Accept header (PS3.18 8.7.5, 8.7.7), e.g. "+
			`Accept: multipart/related; type="application/dicom"; transfer-syntax=*, or */* (what curl sends): %w`, gateway.ErrNotAcceptable)
	}
	var dicom, rendered string
	for _, r := range accept {
		if dicom == "" && isDICOMMediaRange(r) {
			dicom = r.mediaType
		}
		if rendered == "" && isRenderedMediaRange(r, k) {
			rendered = r.mediaType
		}
	}
	if dicom != "" && rendered != "" {
		return fmt.Errorf("the Accept header mixes a DICOM media type (%s) with a rendered one (%s); ask for one kind (PS3.18 8.7.5): %w",
			dicom, rendered, gateway.ErrInvalid)
	}
	return nil
}
