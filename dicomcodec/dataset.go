package dicomcodec

import (
	"strconv"
	"strings"
)

// Attribute is one DICOM attribute in the DICOM JSON model (PS3.18 Annex F.2).
// Value holds, according to VR:
//   - AE AS CS DA DT LO LT SH ST TM UC UI UR UT: string
//   - PN: PersonName
//   - DS FD FL: float64; IS SL SS UL US SV UV: int64 (AT: string "GGGGEEEE")
//   - SQ: Dataset (one per item)
//
// Binary values (OB OD OF OL OV OW UN) are carried as InlineBinary (base64) when
// small, or as BulkDataURI when large. A stored BulkDataURI is relative to the
// instance's WADO-RS URL (e.g. "bulkdata/7FE00010"); dicomweb makes it absolute
// for the request's public base URL when serving it.
type Attribute struct {
	VR           string `json:"vr"`
	Value        []any  `json:"Value,omitempty"`
	BulkDataURI  string `json:"BulkDataURI,omitempty"`
	InlineBinary string `json:"InlineBinary,omitempty"`
}

// PersonName is a PN value split into its component groups (PS3.18 F.2.2).
type PersonName struct {
	Alphabetic  string `json:"Alphabetic,omitempty"`
	Ideographic string `json:"Ideographic,omitempty"`
	Phonetic    string `json:"Phonetic,omitempty"`
}

// Dataset maps an 8-digit upper-case hexadecimal tag ("0020000D") to its
// attribute: the DICOM JSON object of one instance, study, series or sequence
// item. Its text values are already decoded to UTF-8.
type Dataset map[string]Attribute

// String returns the first value of tag as a string ("" when absent or not a
// string). PN values return their Alphabetic group.
func (d Dataset) String(tag string) string {
	a, ok := d[tag]
	if !ok || len(a.Value) == 0 {
		return ""
	}
	switch v := a.Value[0].(type) {
	case string:
		return v
	case PersonName:
		return v.Alphabetic
	}
	return ""
}

// Frequently used tags, as Dataset keys.
const (
	TagSpecificCharacterSet = "00080005"
	TagSOPClassUID          = "00080016"
	TagSOPInstanceUID       = "00080018"
	TagStudyDate            = "00080020"
	TagStudyTime            = "00080030"
	TagAccessionNumber      = "00080050"
	TagModality             = "00080060"
	TagModalitiesInStudy    = "00080061"
	TagPatientName          = "00100010"
	TagPatientID            = "00100020"
	TagPatientBirthDate     = "00100030"
	TagPatientSex           = "00100040"
	TagStudyInstanceUID     = "0020000D"
	TagSeriesInstanceUID    = "0020000E"
	TagStudyID              = "00200010"
	TagSeriesNumber         = "00200011"
	TagInstanceNumber       = "00200013"
	TagNumberOfFrames       = "00280008"
	TagRows                 = "00280010"
	TagColumns              = "00280011"
	TagPixelData            = "7FE00010"
)

// String returns the PN value as DICOM encodes it: the component groups
// joined by "=", trailing empty groups dropped.
func (p PersonName) String() string {
	return strings.TrimRight(p.Alphabetic+"="+p.Ideographic+"="+p.Phonetic, "=")
}

// Number returns the i-th value of a numeric attribute (IS, DS, US, FD …) as a
// float64. It accepts the Go types an Attribute holds after ingest (int64,
// float64) and after a JSON round trip through the Index (float64,
// json.Number, numeric strings).
func (d Dataset) Number(tag string, i int) (float64, bool) {
	a, ok := d[tag]
	if !ok || i < 0 || i >= len(a.Value) {
		return 0, false
	}
	switch v := a.Value[i].(type) {
	case float64:
		return v, true
	case int64:
		return float64(v), true
	case int:
		return float64(v), true
	case uint64:
		return float64(v), true
	case uint16:
		return float64(v), true
	case float32:
		return float64(v), true
	case interface{ Float64() (float64, error) }: // json.Number
		f, err := v.Float64()
		return f, err == nil
	case string:
		f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
		return f, err == nil
	}
	return 0, false
}
