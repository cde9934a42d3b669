package dicomweb

import (
	"bufio"
	"encoding/json"
	"encoding/xml"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/gin-gonic/gin"

	"github.com/dicom-gateway/gateway/gateway"
)

const mediaDICOMXML = "application/dicom+xml"

// writeDICOMJSON answers with v (a gateway.Dataset or []gateway.Dataset) as
// application/dicom+json (PS3.18 F.2), streamed through a buffer rather than
// marshalled whole.
func writeDICOMJSON(c *gin.Context, status int, v any) error {
	c.Header("Content-Type", mediaDICOMJSON)
	c.Status(status)
	bw := bufio.NewWriterSize(c.Writer, 32<<10)
	enc := json.NewEncoder(bw)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return err
	}
	return bw.Flush()
}

// writeDICOMXML answers with ds as application/dicom+xml: one
// NativeDicomModel document (PS3.19 A.1).
func writeDICOMXML(c *gin.Context, status int, ds gateway.Dataset) error {
	c.Header("Content-Type", mediaDICOMXML+"; charset=utf-8")
	c.Status(status)
	bw := bufio.NewWriterSize(c.Writer, 32<<10)
	if err := encodeNativeDICOM(bw, ds); err != nil {
		return err
	}
	return bw.Flush()
}

// encodeNativeDICOM writes ds in the PS3.19 Native DICOM Model.
func encodeNativeDICOM(w io.Writer, ds gateway.Dataset) error {
	b := bufio.NewWriter(w)
	b.WriteString(xml.Header)
	b.WriteString(`<NativeDicomModel xmlns="http://dicom.nema.org/PS3.19/models/NativeDICOM">` + "\n")
	writeXMLDataset(b, ds)
	b.WriteString("</NativeDicomModel>\n")
	return b.Flush()
}

func writeXMLDataset(b *bufio.Writer, ds gateway.Dataset) {
	keys := make([]string, 0, len(ds))
	for k := range ds {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		a := ds[k]
		b.WriteString(`<DicomAttribute tag="` + k + `" vr="` + xmlEscape(a.VR) + `"`)
		if kw := gateway.TagKeyword(k); kw != "" {
			b.WriteString(` keyword="` + xmlEscape(kw) + `"`)
		}
		b.WriteString(">")
		switch {
		case a.BulkDataURI != "":
			b.WriteString(`<BulkData uri="` + xmlEscape(a.BulkDataURI) + `"/>`)
		case a.InlineBinary != "":
			b.WriteString("<InlineBinary>" + xmlEscape(a.InlineBinary) + "</InlineBinary>")
		}
		for i, v := range a.Value {
			n := strconv.Itoa(i + 1)
			switch v := v.(type) {
			case gateway.Dataset:
				b.WriteString(`<Item number="` + n + `">`)
				writeXMLDataset(b, v)
				b.WriteString("</Item>")
			case gateway.PersonName:
				b.WriteString(`<PersonName number="` + n + `">`)
				writePNGroup(b, "Alphabetic", v.Alphabetic)
				writePNGroup(b, "Ideographic", v.Ideographic)
				writePNGroup(b, "Phonetic", v.Phonetic)
				b.WriteString("</PersonName>")
			case nil:
				b.WriteString(`<Value number="` + n + `"/>`)
			default:
				b.WriteString(`<Value number="` + n + `">` + xmlEscape(formatValue(v)) + "</Value>")
			}
		}
		b.WriteString("</DicomAttribute>\n")
	}
}

// pnComponents are the XML element names of the five PN components.
var pnComponents = []string{"FamilyName", "GivenName", "MiddleName", "NamePrefix", "NameSuffix"}

func writePNGroup(b *bufio.Writer, group, value string) {
	if value == "" {
		return
	}
	b.WriteString("<" + group + ">")
	for i, c := range strings.SplitN(value, "^", 5) {
		if c != "" {
			b.WriteString("<" + pnComponents[i] + ">" + xmlEscape(c) + "</" + pnComponents[i] + ">")
		}
	}
	b.WriteString("</" + group + ">")
}

func formatValue(v any) string {
	switch v := v.(type) {
	case string:
		return v
	case float64:
		return strconv.FormatFloat(v, 'g', -1, 64)
	case int64:
		return strconv.FormatInt(v, 10)
	case uint64:
		return strconv.FormatUint(v, 10)
	case int:
		return strconv.Itoa(v)
	}
	b, _ := json.Marshal(v)
	return string(b)
}

func xmlEscape(s string) string {
	var sb strings.Builder
	_ = xml.EscapeText(&sb, []byte(s))
	return sb.String()
}

// wantsXML reports whether the client asked for application/dicom+xml in
// preference to JSON (the STOW-RS default is application/dicom+json).
func wantsXML(r *http.Request) bool {
	for _, m := range parseAccept(r.Header.Values("Accept")) {
		switch m.mediaType {
		case mediaDICOMXML, "application/xml", "text/xml":
			return true
		case mediaDICOMJSON, mediaJSON, "*/*", "application/*":
			return false
		}
	}
	return false
}
