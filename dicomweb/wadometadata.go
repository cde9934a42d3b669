package dicomweb

import (
	"bufio"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"maps"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/gin-gonic/gin"

	"github.com/dicom-gateway/gateway/gateway"
)

func (s *Server) handleStudyMetadata(c *gin.Context) {
	recs, err := s.retriever().Study(c.Request.Context(), c.Param("study"))
	if err != nil {
		s.writeError(c, err)
		return
	}
	s.serveMetadata(c, recs)
}

func (s *Server) handleSeriesMetadata(c *gin.Context) {
	recs, err := s.retriever().Series(c.Request.Context(), c.Param("study"), c.Param("series"))
	if err != nil {
		s.writeError(c, err)
		return
	}
	s.serveMetadata(c, recs)
}

func (s *Server) handleInstanceMetadata(c *gin.Context) {
	rec, ok := s.instance(c)
	if !ok {
		return
	}
	s.serveMetadata(c, []*gateway.InstanceRecord{rec})
}

// serveMetadata answers the DICOM JSON of recs (an array, one object per
// instance) from the Metadata the index keeps, so no blob is opened: a
// 1,000-instance series is one index read and an encode. Relative
// BulkDataURIs become absolute under the instance's public URL. The ETag
// covers the instances' identity and content hashes, the public base URL and
// the media type; If-None-Match answers 304 without a body (and without an
// audit event, since no patient data is sent). The body is gzipped when the
// client accepts it.
func (s *Server) serveMetadata(c *gin.Context, recs []*gateway.InstanceRecord) {
	accept := parseAccept(c.Request.Header.Values("Accept"))
	ch, ok := negotiate(accept, metadataOffers)
	if !ok {
		s.writeError(c, notAcceptable(accept, "metadata", metadataOffers))
		return
	}
	base := s.baseURL(c)
	etag := metadataETag(base, ch.mediaType, recs)
	h := c.Writer.Header()
	h.Set("ETag", etag)
	h.Set("Vary", "Accept, Accept-Encoding")
	h.Set("Cache-Control", "private, no-cache")
	if etagMatches(c.GetHeader("If-None-Match"), etag) {
		c.Status(http.StatusNotModified)
		return
	}
	if err := s.auditRetrieve(c, recs, map[string]any{"metadata": true, "bytes": 0}); err != nil {
		s.writeError(c, err)
		return
	}
	h.Set("Content-Type", ch.mediaType)
	var w io.Writer = c.Writer
	var gz *gzip.Writer
	if acceptsGzip(c.Request.Header.Values("Accept-Encoding")) {
		h.Set("Content-Encoding", "gzip")
		gz, _ = gzip.NewWriterLevel(c.Writer, gzip.BestSpeed)
		w = gz
	}
	c.Status(http.StatusOK)
	bw := bufio.NewWriterSize(w, 64<<10)
	buf := make([]byte, 0, 16<<10)
	bw.WriteByte('[')
	for i, rec := range recs {
		if i > 0 {
			bw.WriteByte(',')
		}
		buf = appendDatasetJSON(buf[:0], rec.Metadata, s.baseURLJoin(base, rec)+"/")
		if _, err := bw.Write(buf); err != nil {
			s.abortStream(c, i, err)
		}
	}
	bw.WriteByte(']')
	err := bw.Flush()
	if gz != nil && err == nil {
		err = gz.Close()
	}
	if err != nil {
		s.abortStream(c, len(recs), err)
	}
}

// baseURLJoin is the public URL of rec under the DICOMweb base URL.
func (s *Server) baseURLJoin(base string, rec *gateway.InstanceRecord) string {
	return base + "/studies/" + rec.StudyInstanceUID + "/series/" + rec.SeriesInstanceUID +
		"/instances/" + rec.SOPInstanceUID
}

// metadataETag is a weak validator (the body may be gzipped or not) over
// what the metadata depends on.
func metadataETag(base, mediaType string, recs []*gateway.InstanceRecord) string {
	h := sha256.New()
	io.WriteString(h, base+"\x00"+mediaType+"\x00")
	for _, r := range recs {
		io.WriteString(h, r.SOPInstanceUID+"\x00"+r.SHA256+"\x00"+strconv.FormatInt(r.Size, 10)+"\x00"+
			strconv.FormatInt(r.StoredAt.UnixNano(), 10)+"\x00")
	}
	return `W/"` + hex.EncodeToString(h.Sum(nil)[:16]) + `"`
}

// etagMatches implements If-None-Match's weak comparison (RFC 9110 13.1.2).
func etagMatches(header, etag string) bool {
	if header == "" {
		return false
	}
	want := strings.TrimPrefix(etag, "W/")
	for _, t := range strings.Split(header, ",") {
		t = strings.TrimSpace(t)
		if t == "*" || strings.TrimPrefix(t, "W/") == want {
			return true
		}
	}
	return false
}

// acceptsGzip reports whether Accept-Encoding allows gzip (q > 0).
func acceptsGzip(values []string) bool {
	for _, v := range values {
		for _, e := range strings.Split(v, ",") {
			name, params, _ := strings.Cut(strings.TrimSpace(e), ";")
			name = strings.ToLower(strings.TrimSpace(name))
			if name != "gzip" && name != "x-gzip" && name != "*" {
				continue
			}
			if q, ok := strings.CutPrefix(strings.ReplaceAll(params, " ", ""), "q="); ok {
				if f, err := strconv.ParseFloat(q, 64); err == nil && f == 0 {
					continue
				}
			}
			return true
		}
	}
	return false
}

// appendDatasetJSON appends ds as a DICOM JSON object (PS3.18 F.2): tags in
// ascending order, relative BulkDataURIs (also inside sequence items) made
// absolute with prefix, non-finite numbers as null. It is what
// gateway.Attribute.MarshalJSON writes, without reflection or a copy of the
// dataset: a 1,000-instance series encodes in milliseconds.
func appendDatasetJSON(b []byte, ds gateway.Dataset, prefix string) []byte {
	keys := make([]string, 0, len(ds))
	for k := range ds {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	b = append(b, '{')
	for i, k := range keys {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendJSONString(b, k)
		b = append(b, ':')
		b = appendAttributeJSON(b, ds[k], prefix)
	}
	return append(b, '}')
}

func appendAttributeJSON(b []byte, a gateway.Attribute, prefix string) []byte {
	b = append(b, `{"vr":`...)
	b = appendJSONString(b, a.VR)
	if len(a.Value) > 0 {
		b = append(b, `,"Value":[`...)
		for i, v := range a.Value {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendValueJSON(b, v, prefix)
		}
		b = append(b, ']')
	}
	if a.BulkDataURI != "" {
		b = append(b, `,"BulkDataURI":`...)
		if relativeURI(a.BulkDataURI) {
			b = appendJSONString(b, prefix+a.BulkDataURI)
		} else {
			b = appendJSONString(b, a.BulkDataURI)
		}
	}
	if a.InlineBinary != "" {
		b = append(b, `,"InlineBinary":`...)
		b = appendJSONString(b, a.InlineBinary)
	}
	return append(b, '}')
}

func appendValueJSON(b []byte, v any, prefix string) []byte {
	switch x := v.(type) {
	case nil:
		return append(b, "null"...)
	case string:
		return appendJSONString(b, x)
	case float64:
		return appendJSONFloat(b, x)
	case int64:
		return strconv.AppendInt(b, x, 10)
	case uint64:
		return strconv.AppendUint(b, x, 10)
	case int:
		return strconv.AppendInt(b, int64(x), 10)
	case gateway.PersonName:
		b = append(b, '{')
		n := 0
		for _, g := range [...]struct{ k, v string }{{"Alphabetic", x.Alphabetic}, {"Ideographic", x.Ideographic}, {"Phonetic", x.Phonetic}} {
			if g.v == "" {
				continue
			}
			if n > 0 {
				b = append(b, ',')
			}
			n++
			b = appendJSONString(b, g.k)
			b = append(b, ':')
			b = appendJSONString(b, g.v)
		}
		return append(b, '}')
	case gateway.Dataset:
		return appendDatasetJSON(b, x, prefix)
	}
	raw, err := json.Marshal(v)
	if err != nil {
		return append(b, "null"...)
	}
	return append(b, raw...)
}

// appendJSONFloat writes f as encoding/json does; NaN and ±Inf as null.
func appendJSONFloat(b []byte, f float64) []byte {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return append(b, "null"...)
	}
	abs := math.Abs(f)
	if abs != 0 && (abs < 1e-6 || abs >= 1e21) {
		b = strconv.AppendFloat(b, f, 'e', -1, 64)
		if n := len(b); n >= 4 && b[n-4] == 'e' && b[n-3] == '-' && b[n-2] == '0' {
			b[n-2] = b[n-1] // e-07 → e-7, as encoding/json writes it
			b = b[:n-1]
		}
		return b
	}
	return strconv.AppendFloat(b, f, 'f', -1, 64)
}

// appendJSONString writes s as a JSON string; invalid UTF-8 becomes U+FFFD.
func appendJSONString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hex[r&0xF])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

func relativeURI(u string) bool {
	return u != "" && !strings.HasPrefix(u, "/") && !strings.Contains(u, "://")
}

// absolutize returns ds with every relative BulkDataURI (also inside
// sequence items) prefixed with prefix, for encoders that marshal the
// Dataset itself (QIDO-RS). Datasets without one are returned as they are;
// changed ones are copied, so index records are never modified.
func absolutize(ds gateway.Dataset, prefix string) gateway.Dataset {
	out, _ := absolutizeDataset(ds, prefix)
	return out
}

// absolutizeDataset is absolutize that also reports whether it copied.
func absolutizeDataset(ds gateway.Dataset, prefix string) (gateway.Dataset, bool) {
	var out gateway.Dataset
	for tag, a := range ds {
		if na, changed := absolutizeAttr(a, prefix); changed {
			if out == nil {
				out = maps.Clone(ds)
			}
			out[tag] = na
		}
	}
	if out == nil {
		return ds, false
	}
	return out, true
}

func absolutizeAttr(a gateway.Attribute, prefix string) (gateway.Attribute, bool) {
	changed := false
	if relativeURI(a.BulkDataURI) {
		a.BulkDataURI = prefix + a.BulkDataURI
		changed = true
	}
	var items []any
	for i, v := range a.Value {
		item, ok := v.(gateway.Dataset)
		if !ok {
			continue
		}
		nv, ch := absolutizeDataset(item, prefix)
		if !ch {
			continue
		}
		if items == nil {
			items = append([]any(nil), a.Value...)
		}
		items[i] = nv
	}
	if items != nil {
		a.Value = items
		changed = true
	}
	return a, changed
}
