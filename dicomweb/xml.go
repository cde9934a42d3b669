package dicomweb

import (
	"bufio"
	"compress/gzip"
	"encoding/json"
	"encoding/xml"
	"fmt"
	"io"
	"maps"
	"math"
	"mime/multipart"
	"net/http"
	"net/textproto"
	"slices"
	"strconv"
	"strings"

	"github.com/gin-gonic/gin"

	"github.com/dicom-gateway/gateway/dicomcodec"
	"github.com/dicom-gateway/gateway/gateway"
)

// DICOM XML: the PS3.19 A.1 Native DICOM Model, which PS3.18 offers
// wherever it offers DICOM JSON: the STOW-RS response, QIDO-RS results and
// WADO-RS metadata (multipart/related; type="application/dicom+xml", one
// NativeDicomModel document per part: per match, per instance).
// dicomweb/testdata/NativeDICOM.rnc is the schema the tests validate
// against.

const (
	mediaDICOMXML = "application/dicom+xml"
	// nativeDICOMNamespace is the default namespace of every element of
	// the model (PS3.19 A.1.6).
	nativeDICOMNamespace = "http://dicom.nema.org/PS3.19/models/NativeDICOM"
)

// xmlMultipartOffer is the XML representation of QIDO-RS results and
// WADO-RS metadata: one NativeDicomModel per part.
var xmlMultipartOffer = offer{multipart: true, mediaType: mediaDICOMXML}

// searchOffers are the QIDO-RS representations: DICOM JSON (also under
// application/json) first, then DICOM XML.
var searchOffers = []offer{{mediaType: mediaDICOMJSON}, {mediaType: mediaJSON}, xmlMultipartOffer}

// stowAnswerXML reports whether a STOW-RS client asked for its response in
// DICOM XML rather than the default DICOM JSON, and whether as a
// multipart/related body of one part (Accept: multipart/related;
// type="application/dicom+xml") or a bare application/dicom+xml document.
// The client's most preferred type that names either form decides.
func stowAnswerXML(r *http.Request) (wantXML, multi bool) {
	for _, m := range parseAccept(r.Header.Values("Accept")) {
		switch m.mediaType {
		case mediaDICOMXML, "application/xml", "text/xml":
			return true, false
		case mediaMultipart, "multipart/*":
			if t, ok := m.params["type"]; !ok || mediaTypeMatches(strings.ToLower(t), mediaDICOMXML) {
				return true, true
			}
		case mediaDICOMJSON, mediaJSON, "*/*", "application/*":
			return false, false
		}
	}
	return false, false
}

// writeDICOMXML answers with ds as DICOM XML: one NativeDicomModel
// document, bare (application/dicom+xml) or, when multi, as the single part
// of a multipart/related; type="application/dicom+xml" body.
func writeDICOMXML(c *gin.Context, status int, ds dicomcodec.Dataset, multi bool) error {
	bw := bufio.NewWriterSize(c.Writer, 32<<10)
	if !multi {
		c.Header("Content-Type", mediaDICOMXML+"; charset=utf-8")
		c.Status(status)
		writeNativeDICOM(bw, ds, "")
		return bw.Flush()
	}
	parts := newNativeDICOMParts(bw)
	c.Header("Content-Type", parts.contentType())
	c.Status(status)
	if err := parts.write(ds, "", ""); err != nil {
		return err
	}
	if err := parts.close(); err != nil {
		return err
	}
	return bw.Flush()
}

// writeSearchXML answers a QIDO-RS search with its matches as
// multipart/related; type="application/dicom+xml", one part per match (no
// part when nothing matched), each with its RetrieveURL as the JSON answer
// has it.
func (s *Server) writeSearchXML(c *gin.Context, level gateway.QueryLevel, items []dicomcodec.Dataset) {
	base := s.baseURL(c)
	bw := bufio.NewWriterSize(c.Writer, 64<<10)
	parts := newNativeDICOMParts(bw)
	c.Header("Content-Type", parts.contentType())
	c.Status(http.StatusOK)
	var err error
	for _, d := range items {
		d, prefix := withRetrieveURL(d, level, base)
		if err = parts.write(d, prefix, ""); err != nil {
			break
		}
	}
	if err == nil {
		err = parts.close()
	}
	if err == nil {
		err = bw.Flush()
	}
	if err != nil {
		s.Logger.WarnContext(c.Request.Context(), "qido response not sent", gateway.LogKeyError, err.Error())
	}
}

// writeMetadataXML answers WADO-RS metadata as multipart/related;
// type="application/dicom+xml", one part per instance, in the order read
// yields the prepared metadata. Each instance's prepared JSON is decoded
// and encoded on its own, so memory holds one instance's attributes at a
// time whatever the size of the study. BulkDataURIs become BulkData
// elements with the same absolute uri. The body is gzipped when the client
// accepts it; errors before the first byte reaches the client are answered
// as errors, later ones abort the stream (as the JSON answer does).
func (s *Server) writeMetadataXML(c *gin.Context, base string, read func(func(gateway.MetadataEntry, []byte) error) error) {
	h := c.Writer.Header()
	var w io.Writer = c.Writer
	var gz *gzip.Writer
	if acceptsGzip(c.Request.Header.Values("Accept-Encoding")) {
		h.Set("Content-Encoding", "gzip")
		gz, _ = gzip.NewWriterLevel(c.Writer, gzip.BestSpeed)
		w = gz
	}
	bw := bufio.NewWriterSize(w, 64<<10)
	parts := newNativeDICOMParts(bw)
	h.Set("Content-Type", parts.contentType())
	c.Status(http.StatusOK)
	buf := make([]byte, 0, 16<<10)
	n := 0
	err := read(func(e gateway.MetadataEntry, prepared []byte) error {
		inst := instanceURL(base, e.StudyInstanceUID, e.SeriesInstanceUID, e.SOPInstanceUID)
		buf = gateway.AppendPreparedMetadata(buf[:0], prepared, inst)
		var ds dicomcodec.Dataset
		if err := json.Unmarshal(buf, &ds); err != nil {
			return fmt.Errorf("prepared metadata of instance %s: %v: %w", e.SOPInstanceUID, err, gateway.ErrUnavailable)
		}
		n++
		return parts.write(ds, "", inst+"/metadata")
	})
	if err != nil && !c.Writer.Written() {
		h.Del("Content-Encoding")
		s.writeError(c, err)
		return
	}
	if err != nil {
		s.abortStream(c, n, err)
	}
	err = parts.close()
	if err == nil {
		err = bw.Flush()
	}
	if gz != nil && err == nil {
		err = gz.Close()
	}
	if err != nil {
		s.abortStream(c, n, err)
	}
}

// nativeDICOMParts writes NativeDicomModel documents as the parts of a
// multipart/related; type="application/dicom+xml" body.
type nativeDICOMParts struct {
	mw *multipart.Writer
	bw *bufio.Writer // reused for every part
}

func newNativeDICOMParts(w io.Writer) *nativeDICOMParts {
	return &nativeDICOMParts{mw: multipart.NewWriter(w), bw: bufio.NewWriterSize(nil, 8<<10)}
}

// contentType is the body's Content-Type: the type parameter is the bare
// media type of the parts (PS3.18 8.7.3.2).
func (p *nativeDICOMParts) contentType() string {
	return fmt.Sprintf("%s; type=%q; boundary=%s", mediaMultipart, mediaDICOMXML, p.mw.Boundary())
}

// write adds ds as one part; relative BulkDataURIs are made absolute with
// bulkPrefix. location, when set, is the part's Content-Location: the URL
// of the resource the part represents (an instance's metadata).
func (p *nativeDICOMParts) write(ds dicomcodec.Dataset, bulkPrefix, location string) error {
	h := textproto.MIMEHeader{"Content-Type": {mediaDICOMXML}}
	if location != "" {
		h.Set("Content-Location", location)
	}
	pw, err := p.mw.CreatePart(h)
	if err != nil {
		return err
	}
	p.bw.Reset(pw)
	writeNativeDICOM(p.bw, ds, bulkPrefix)
	return p.bw.Flush()
}

// close writes the closing boundary.
func (p *nativeDICOMParts) close() error { return p.mw.Close() }

// writeNativeDICOM writes ds as one NativeDicomModel document (PS3.19
// A.1). xml:space="preserve" is on the root because Table A.1.5-1 requires
// it (values keep their spaces; dcm4che writes it too), although the A.1.6
// schema does not declare it; testdata/NativeDICOM-document.rnc says so.
// Write errors stay in b: the caller's Flush reports them.
func writeNativeDICOM(b *bufio.Writer, ds dicomcodec.Dataset, bulkPrefix string) {
	b.WriteString(xml.Header)
	b.WriteString(`<NativeDicomModel xmlns="` + nativeDICOMNamespace + `" xml:space="preserve">` + "\n")
	writeXMLDataset(b, ds, bulkPrefix)
	b.WriteString("</NativeDicomModel>\n")
}

// writeXMLDataset writes the attributes of ds in tag order. The model maps
// one to one onto DICOM JSON (PS3.18 F.2): Value, PersonName (its
// component groups split into the five components), Item, BulkData uri
// (from BulkDataURI) and InlineBinary; at most one kind per attribute, as
// the schema's choice requires. An empty or non-finite value keeps its
// place as an empty <Value>, as JSON's null does.
func writeXMLDataset(b *bufio.Writer, ds dicomcodec.Dataset, bulkPrefix string) {
	for _, k := range slices.Sorted(maps.Keys(ds)) {
		a := ds[k]
		b.WriteString(`<DicomAttribute tag="`)
		writeEscaped(b, k)
		b.WriteString(`" vr="`)
		writeEscaped(b, a.VR)
		b.WriteByte('"')
		if kw := dicomcodec.TagKeyword(k); kw != "" {
			b.WriteString(` keyword="` + kw + `"`)
		}
		if pc := privateCreator(ds, k); pc != "" {
			b.WriteString(` privateCreator="`)
			writeEscaped(b, pc)
			b.WriteByte('"')
		}
		b.WriteByte('>')
		switch {
		case a.BulkDataURI != "":
			u := a.BulkDataURI
			if bulkPrefix != "" && relativeURI(u) {
				u = bulkPrefix + u
			}
			b.WriteString(`<BulkData uri="`)
			writeEscaped(b, u)
			b.WriteString(`"/>`)
		case a.InlineBinary != "":
			b.WriteString("<InlineBinary>")
			writeEscaped(b, a.InlineBinary)
			b.WriteString("</InlineBinary>")
		default:
			writeXMLValues(b, a.VR, a.Value, bulkPrefix)
		}
		b.WriteString("</DicomAttribute>\n")
	}
}

func writeXMLValues(b *bufio.Writer, vr string, values []any, bulkPrefix string) {
	for i, v := range values {
		n := strconv.Itoa(i + 1)
		if v == nil && vr == "PN" {
			// An empty name among names: the schema allows PersonName
			// elements or Value elements in one attribute, not both.
			b.WriteString(`<PersonName number="` + n + `"/>`)
			continue
		}
		switch v := v.(type) {
		case dicomcodec.Dataset:
			b.WriteString(`<Item number="` + n + `">`)
			writeXMLDataset(b, v, bulkPrefix)
			b.WriteString("</Item>")
		case dicomcodec.PersonName:
			b.WriteString(`<PersonName number="` + n + `">`)
			writePNGroup(b, "Alphabetic", v.Alphabetic)
			writePNGroup(b, "Ideographic", v.Ideographic)
			writePNGroup(b, "Phonetic", v.Phonetic)
			b.WriteString("</PersonName>")
		default:
			s, ok := xmlValueText(v)
			if !ok {
				b.WriteString(`<Value number="` + n + `"/>`)
				continue
			}
			b.WriteString(`<Value number="` + n + `">`)
			writeEscaped(b, s)
			b.WriteString("</Value>")
		}
	}
}

// pnComponents are the XML element names of the five PN components, in
// the order of the value and of the schema.
var pnComponents = []string{"FamilyName", "GivenName", "MiddleName", "NamePrefix", "NameSuffix"}

// writePNGroup writes one component group of a person name; empty
// components are left out, so "^Jane" has only a GivenName.
func writePNGroup(b *bufio.Writer, group, value string) {
	if value == "" {
		return
	}
	b.WriteString("<" + group + ">")
	for i, c := range strings.SplitN(value, "^", len(pnComponents)) {
		if c != "" {
			b.WriteString("<" + pnComponents[i] + ">")
			writeEscaped(b, c)
			b.WriteString("</" + pnComponents[i] + ">")
		}
	}
	b.WriteString("</" + group + ">")
}

// xmlValueText is the text of one value; ok is false for a value JSON
// writes as null (absent, NaN, ±Inf).
func xmlValueText(v any) (string, bool) {
	switch v := v.(type) {
	case nil:
		return "", false
	case string:
		return v, v != ""
	case float64:
		if math.IsNaN(v) || math.IsInf(v, 0) {
			return "", false
		}
		return strconv.FormatFloat(v, 'g', -1, 64), true
	case int64:
		return strconv.FormatInt(v, 10), true
	case uint64:
		return strconv.FormatUint(v, 10), true
	case int:
		return strconv.Itoa(v), true
	}
	b, err := json.Marshal(v)
	return string(b), err == nil
}

// privateCreator is the Private Creator of a private data element
// (gggg,xxyy with gggg odd and xx ≥ 0x10): the value of (gggg,00xx) in the
// same dataset (PS3.5 7.8.1), or "".
func privateCreator(ds dicomcodec.Dataset, tag string) string {
	if len(tag) != 8 {
		return ""
	}
	group, err1 := strconv.ParseUint(tag[:4], 16, 16)
	block, err2 := strconv.ParseUint(tag[4:6], 16, 8)
	if err1 != nil || err2 != nil || group%2 == 0 || block < 0x10 {
		return ""
	}
	return strings.TrimSpace(ds.String(tag[:4] + "00" + tag[4:6]))
}

// relativeURI reports whether a BulkDataURI is relative to its instance's
// URL (as gateway.AppendDatasetJSON decides).
func relativeURI(u string) bool {
	return u != "" && !strings.HasPrefix(u, "/") && !strings.Contains(u, "://")
}

// writeEscaped writes s as XML character data; characters XML cannot
// carry become U+FFFD (encoding/xml.EscapeText).
func writeEscaped(b *bufio.Writer, s string) {
	_ = xml.EscapeText(b, []byte(s))
}
