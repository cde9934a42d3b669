package fhir

import (
	"strconv"
	"strings"

	fm "github.com/samply/golang-fhir-models/fhir-models/fhir"

	"github.com/dicom-gateway/gateway/dicomcodec"
	"github.com/dicom-gateway/gateway/gateway"
)

// EndpointID is the id of the one Endpoint resource: this gateway's
// WADO-RS root, which every ImagingStudy references.
const EndpointID = "dicom-wado-rs"

// endpoint is the Endpoint of this gateway's WADO-RS root.
func (h *Handler) endpoint(wadoRoot string) fm.Endpoint {
	name := h.Name + " DICOMweb (WADO-RS)"
	return fm.Endpoint{
		Id:     ptr(EndpointID),
		Status: fm.EndpointStatusActive,
		ConnectionType: fm.Coding{
			System: ptr(systemConnection),
			Code:   ptr("dicom-wado-rs"),
		},
		Name: &name,
		PayloadType: []fm.CodeableConcept{{
			Coding: []fm.Coding{{System: ptr("http://hl7.org/fhir/endpoint-payload-type"), Code: ptr("DICOM")}},
			Text:   ptr("DICOM"),
		}},
		PayloadMimeType: []string{"application/dicom", "application/dicom+json"},
		Address:         wadoRoot,
	}
}

// imagingStudy builds the ImagingStudy of one study from its study-level
// attributes (a study search result) and its instances (ListInstances
// order: series, then instance).
func imagingStudy(study dicomcodec.Dataset, recs []*gateway.InstanceRecord) fm.ImagingStudy {
	uid := study.String(dicomcodec.TagStudyInstanceUID)
	is := fm.ImagingStudy{
		Id:       ptr(uid),
		Status:   fm.ImagingStudyStatusAvailable,
		Subject:  subject(study),
		Endpoint: []fm.Reference{{Reference: ptr("Endpoint/" + EndpointID), Type: ptr("Endpoint")}},
		Identifier: []fm.Identifier{{
			Use: ptr(fm.IdentifierUseOfficial), System: ptr(systemDICOMUID), Value: ptr("urn:oid:" + uid),
		}},
	}
	if acc := strings.TrimSpace(study.String(dicomcodec.TagAccessionNumber)); acc != "" {
		is.Identifier = append(is.Identifier, fm.Identifier{
			Type:  &fm.CodeableConcept{Coding: []fm.Coding{{System: ptr(systemIdentifierTyp), Code: ptr("ACSN")}}},
			Value: ptr(acc),
		})
	}
	if started := dateTime(study.String(dicomcodec.TagStudyDate), study.String(dicomcodec.TagStudyTime), study.String(gateway.TagTimezoneOffsetFromUTC)); started != "" {
		is.Started = &started
	}
	if d := strings.TrimSpace(study.String("00081030")); d != "" {
		is.Description = &d
	}
	if _, flagged := gateway.IdentityConflicts(study); flagged {
		// The gateway never merges two patients silently, here either.
		is.Note = append(is.Note, fm.Annotation{
			AuthorString: ptr("dicom-gateway"),
			Text:         "IDENTITY CONFLICT: instances of more than one patient identity were stored under this study; check every instance's patient before use.",
		})
	}
	seen := map[string]bool{}
	for _, m := range strValues(study[dicomcodec.TagModalitiesInStudy]) {
		if !seen[m] {
			seen[m] = true
			is.Modality = append(is.Modality, modalityCoding(m))
		}
	}
	var cur *fm.ImagingStudySeries
	for _, r := range recs {
		if cur == nil || cur.Uid != r.SeriesInstanceUID {
			is.Series = append(is.Series, series(r))
			cur = &is.Series[len(is.Series)-1]
		}
		in := fm.ImagingStudySeriesInstance{
			Uid:      r.SOPInstanceUID,
			SopClass: fm.Coding{System: ptr(systemRFC3986), Code: ptr("urn:oid:" + r.SOPClassUID)},
		}
		if n, ok := unsignedInt(r.Metadata, dicomcodec.TagInstanceNumber); ok {
			in.Number = &n
		}
		cur.Instance = append(cur.Instance, in)
		cur.NumberOfInstances = ptr(len(cur.Instance))
		if m := r.Modality(); m != "" && !seen[m] {
			seen[m] = true
			is.Modality = append(is.Modality, modalityCoding(m))
		}
	}
	is.NumberOfSeries = ptr(len(is.Series))
	is.NumberOfInstances = ptr(len(recs))
	return is
}

func series(r *gateway.InstanceRecord) fm.ImagingStudySeries {
	md := r.Metadata
	se := fm.ImagingStudySeries{Uid: r.SeriesInstanceUID, Modality: modalityCoding(r.Modality())}
	if n, ok := unsignedInt(md, dicomcodec.TagSeriesNumber); ok {
		se.Number = &n
	}
	if d := strings.TrimSpace(md.String("0008103E")); d != "" {
		se.Description = &d
	}
	if started := dateTime(md.String("00080021"), md.String("00080031"), md.String(gateway.TagTimezoneOffsetFromUTC)); started != "" {
		se.Started = &started
	}
	return se
}

// modalityCoding is a DICOM modality code (DCM); an instance without
// Modality (1..1 in the resource) is "OT", other.
func modalityCoding(m string) fm.Coding {
	m = strings.TrimSpace(m)
	if m == "" {
		m = "OT"
	}
	return fm.Coding{System: ptr(systemDCM), Code: ptr(m)}
}

// subject is the patient the study belongs to, as a logical reference by
// identifier (this gateway serves no Patient resources): the NHS number
// when the study carries it, else the local Patient ID with its issuer as
// the assigner's name.
func subject(study dicomcodec.Dataset) fm.Reference {
	ref := fm.Reference{Type: ptr("Patient")}
	if nhs, ok := gateway.NationalID(study); ok {
		ref.Identifier = &fm.Identifier{System: ptr(gateway.NHSNumberSystem), Value: ptr(nhs)}
	} else if id := strings.TrimSpace(study.String(dicomcodec.TagPatientID)); id != "" {
		ref.Identifier = &fm.Identifier{Value: ptr(id)}
		if issuer := strings.TrimSpace(study.String(gateway.TagIssuerOfPatientID)); issuer != "" {
			ref.Identifier.Assigner = &fm.Reference{Display: ptr(issuer)}
		}
	}
	if name := strings.TrimSpace(study.String(dicomcodec.TagPatientName)); name != "" {
		ref.Display = ptr(strings.TrimRight(strings.ReplaceAll(name, "^", " "), " "))
	}
	if ref.Identifier == nil && ref.Display == nil {
		ref.Display = ptr("unknown patient")
	}
	return ref
}

// dateTime converts a DICOM date, time and UTC offset to a FHIR dateTime:
// the date alone when the time or its offset is unknown (FHIR requires an
// offset with a time), "" without a valid date.
func dateTime(da, tm, tz string) string {
	da = strings.TrimSpace(da)
	if len(da) != 8 || !digits(da) {
		return ""
	}
	date := da[0:4] + "-" + da[4:6] + "-" + da[6:8]
	tm, tz = strings.TrimSpace(strings.ReplaceAll(tm, ":", "")), strings.TrimSpace(tz)
	whole, _, _ := strings.Cut(tm, ".")
	if len(whole) < 4 || !digits(whole) || len(tz) != 5 || (tz[0] != '+' && tz[0] != '-') || !digits(tz[1:]) {
		return date
	}
	sec := "00"
	if len(whole) >= 6 {
		sec = whole[4:6]
	}
	return date + "T" + whole[0:2] + ":" + whole[2:4] + ":" + sec + tz[0:3] + ":" + tz[3:5]
}

func digits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}

// unsignedInt reads an IS value as a FHIR unsignedInt (number ≥ 0).
func unsignedInt(md dicomcodec.Dataset, tag string) (int, bool) {
	a, ok := md[tag]
	if !ok || len(a.Value) == 0 {
		return 0, false
	}
	var n int64
	switch v := a.Value[0].(type) {
	case int64:
		n = v
	case float64:
		n = int64(v)
	case string:
		x, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		if err != nil {
			return 0, false
		}
		n = x
	default:
		return 0, false
	}
	if n < 0 || n > 1<<31-1 {
		return 0, false
	}
	return int(n), true
}

func strValues(a dicomcodec.Attribute) []string {
	var out []string
	for _, v := range a.Value {
		if s, ok := v.(string); ok && strings.TrimSpace(s) != "" {
			out = append(out, strings.TrimSpace(s))
		}
	}
	return out
}
