package gateway

import (
	"cmp"
	"slices"
	"strconv"
	"strings"

	"github.com/dicom-gateway/gateway/dicomcodec"
)

// Tags of attributes computed by the index rather than read from instances.
const (
	TagInstanceAvailability           = "00080056"
	TagSOPClassesInStudy              = "00080062"
	TagRetrieveURL                    = "00081190"
	TagNumberOfStudyRelatedSeries     = "00201206"
	TagNumberOfStudyRelatedInstances  = "00201208"
	TagNumberOfSeriesRelatedInstances = "00201209"
	TagTimezoneOffsetFromUTC          = "00080201"
)

// studyLevelTags are the Patient and Study module attributes the index keeps
// per study (PS3.18 Table 10.6.3-3 plus what PACS commonly search on).
var studyLevelTags = setOf(
	dicomcodec.TagSpecificCharacterSet, TagTimezoneOffsetFromUTC,
	dicomcodec.TagPatientName, dicomcodec.TagPatientID, "00100021", dicomcodec.TagPatientBirthDate, "00100032", dicomcodec.TagPatientSex,
	"00101000", "00101001", "00101002", "00101010", "00101020", "00101030", "00102160", "00104000",
	dicomcodec.TagStudyDate, dicomcodec.TagStudyTime, dicomcodec.TagAccessionNumber, "00080051", "00080090", "00081030", "00081032",
	"00081048", "00081060", "00081080", "00081110", "00081120", dicomcodec.TagStudyInstanceUID, dicomcodec.TagStudyID,
	"00321032", "00321060",
	TagGatewayPrivateCreator, TagIdentityConflict, TagIdentityConflictNames, // identity_conflict.go
)

// seriesLevelTags are the General Series and Equipment attributes the index
// keeps per series (PS3.18 Table 10.6.3-4 plus common search keys).
var seriesLevelTags = setOf(
	dicomcodec.TagSpecificCharacterSet, TagTimezoneOffsetFromUTC,
	dicomcodec.TagModality, dicomcodec.TagSeriesInstanceUID, dicomcodec.TagSeriesNumber, "0008103E", "00080021", "00080031",
	"00400244", "00400245", "00400275", "00180015", "00200060", "00080080", "00081010",
	"00080070", "00081070", "00081050", "00181030", "00081040",
)

// computedStudyTags and computedSeriesTags are matched against the values
// the index computes.
var (
	computedStudyTags = setOf(dicomcodec.TagModalitiesInStudy, TagSOPClassesInStudy, TagNumberOfStudyRelatedSeries,
		TagNumberOfStudyRelatedInstances, TagInstanceAvailability)
	computedSeriesTags = setOf(TagNumberOfSeriesRelatedInstances, TagInstanceAvailability)
)

// Attributes each level returns by default (PS3.18 Tables 10.6.3-3, -4, -5);
// RetrieveURL is added by the HTTP layer, which knows the base URL.
var (
	studyReturnTags = []string{dicomcodec.TagSpecificCharacterSet, dicomcodec.TagStudyDate, dicomcodec.TagStudyTime, dicomcodec.TagAccessionNumber,
		TagInstanceAvailability, dicomcodec.TagModalitiesInStudy, "00080090", TagTimezoneOffsetFromUTC, dicomcodec.TagPatientName,
		dicomcodec.TagPatientID, dicomcodec.TagPatientBirthDate, dicomcodec.TagPatientSex, dicomcodec.TagStudyInstanceUID, dicomcodec.TagStudyID,
		TagNumberOfStudyRelatedSeries, TagNumberOfStudyRelatedInstances,
		TagGatewayPrivateCreator, TagIdentityConflict} // returned when a study is flagged (identity_conflict.go)
	seriesReturnTags = []string{dicomcodec.TagSpecificCharacterSet, dicomcodec.TagModality, TagTimezoneOffsetFromUTC, "0008103E",
		dicomcodec.TagSeriesInstanceUID, dicomcodec.TagSeriesNumber, TagNumberOfSeriesRelatedInstances, "00400244", "00400245",
		"00400275", TagInstanceAvailability}
	instanceReturnTags = []string{dicomcodec.TagSpecificCharacterSet, dicomcodec.TagSOPClassUID, dicomcodec.TagSOPInstanceUID,
		TagInstanceAvailability, TagTimezoneOffsetFromUTC, dicomcodec.TagInstanceNumber, dicomcodec.TagRows, dicomcodec.TagColumns,
		"00280100", dicomcodec.TagNumberOfFrames, dicomcodec.TagStudyInstanceUID, dicomcodec.TagSeriesInstanceUID}
)

func setOf(tags ...string) map[string]bool {
	m := make(map[string]bool, len(tags))
	for _, t := range tags {
		m[t] = true
	}
	return m
}

// IsStudyLevel reports whether the index keeps tag at study level (stored or
// computed), so that study and series searches can match on it.
func IsStudyLevel(tag string) bool { return studyLevelTags[tag] || computedStudyTags[tag] }

// IsSeriesLevel reports whether the index keeps tag at series level.
func IsSeriesLevel(tag string) bool { return seriesLevelTags[tag] || computedSeriesTags[tag] }

// StudyAttrs returns the study-level attributes of an instance's metadata.
func StudyAttrs(md dicomcodec.Dataset) dicomcodec.Dataset { return subset(md, studyLevelTags) }

// SeriesAttrs returns the series-level attributes of an instance's metadata.
func SeriesAttrs(md dicomcodec.Dataset) dicomcodec.Dataset { return subset(md, seriesLevelTags) }

func subset(md dicomcodec.Dataset, tags map[string]bool) dicomcodec.Dataset {
	out := dicomcodec.Dataset{}
	for t, a := range md {
		if tags[t] {
			out[t] = a
		}
	}
	return out
}

// Modality returns the instance's Modality (the first value), "" if absent.
func (r *InstanceRecord) Modality() string { return r.Metadata.String(dicomcodec.TagModality) }

// StudySummary is what an index keeps per study: the study-level attributes
// of the most recently stored instance and the counts from which the
// computed attributes are built. Modalities and SOPClasses count instances
// per value, so that deleting an instance can remove a value exactly when its
// last instance goes.
type StudySummary struct {
	StudyInstanceUID string             `json:"study_uid"`
	Attrs            dicomcodec.Dataset `json:"attrs"`
	Series           int                `json:"series"`
	Instances        int                `json:"instances"`
	Modalities       map[string]int     `json:"modalities,omitempty"`
	SOPClasses       map[string]int     `json:"sop_classes,omitempty"`
}

// SeriesSummary is what an index keeps per series.
type SeriesSummary struct {
	StudyInstanceUID  string             `json:"study_uid"`
	SeriesInstanceUID string             `json:"series_uid"`
	Attrs             dicomcodec.Dataset `json:"attrs"`
	Instances         int                `json:"instances"`
}

// AddInstance counts rec into s; newSeries says rec is its series' first.
func (s *StudySummary) AddInstance(rec *InstanceRecord, newSeries bool) {
	s.StudyInstanceUID = rec.StudyInstanceUID
	s.Attrs = StudyAttrs(rec.Metadata)
	s.Instances++
	if newSeries {
		s.Series++
	}
	if s.Modalities == nil {
		s.Modalities = map[string]int{}
	}
	if s.SOPClasses == nil {
		s.SOPClasses = map[string]int{}
	}
	if m := rec.Modality(); m != "" {
		s.Modalities[m]++
	}
	if rec.SOPClassUID != "" {
		s.SOPClasses[rec.SOPClassUID]++
	}
}

// RemoveInstance is the inverse of AddInstance; seriesGone says rec was the
// last instance of its series.
func (s *StudySummary) RemoveInstance(rec *InstanceRecord, seriesGone bool) {
	s.Instances--
	if seriesGone {
		s.Series--
	}
	if m := rec.Modality(); m != "" {
		if s.Modalities[m]--; s.Modalities[m] <= 0 {
			delete(s.Modalities, m)
		}
	}
	if rec.SOPClassUID != "" {
		if s.SOPClasses[rec.SOPClassUID]--; s.SOPClasses[rec.SOPClassUID] <= 0 {
			delete(s.SOPClasses, rec.SOPClassUID)
		}
	}
}

// Dataset returns the study's attributes with the computed ones:
// ModalitiesInStudy, SOPClassesInStudy (sorted), NumberOfStudyRelatedSeries,
// NumberOfStudyRelatedInstances and InstanceAvailability (ONLINE).
func (s *StudySummary) Dataset() dicomcodec.Dataset {
	d := make(dicomcodec.Dataset, len(s.Attrs)+5)
	for t, a := range s.Attrs {
		d[t] = a
	}
	d[dicomcodec.TagStudyInstanceUID] = dicomcodec.Attribute{VR: "UI", Value: []any{s.StudyInstanceUID}}
	if mods := sortedKeys(s.Modalities); len(mods) > 0 {
		d[dicomcodec.TagModalitiesInStudy] = dicomcodec.Attribute{VR: "CS", Value: mods}
	}
	if cls := sortedKeys(s.SOPClasses); len(cls) > 0 {
		d[TagSOPClassesInStudy] = dicomcodec.Attribute{VR: "UI", Value: cls}
	}
	d[TagNumberOfStudyRelatedSeries] = dicomcodec.Attribute{VR: "IS", Value: []any{int64(s.Series)}}
	d[TagNumberOfStudyRelatedInstances] = dicomcodec.Attribute{VR: "IS", Value: []any{int64(s.Instances)}}
	d[TagInstanceAvailability] = dicomcodec.Attribute{VR: "CS", Value: []any{"ONLINE"}}
	return d
}

// Dataset returns the series' attributes with NumberOfSeriesRelatedInstances
// and InstanceAvailability.
func (s *SeriesSummary) Dataset() dicomcodec.Dataset {
	d := make(dicomcodec.Dataset, len(s.Attrs)+3)
	for t, a := range s.Attrs {
		d[t] = a
	}
	d[dicomcodec.TagSeriesInstanceUID] = dicomcodec.Attribute{VR: "UI", Value: []any{s.SeriesInstanceUID}}
	d[TagNumberOfSeriesRelatedInstances] = dicomcodec.Attribute{VR: "IS", Value: []any{int64(s.Instances)}}
	d[TagInstanceAvailability] = dicomcodec.Attribute{VR: "CS", Value: []any{"ONLINE"}}
	return d
}

// InstanceDataset returns an instance's attributes for QIDO-RS: its metadata
// with InstanceAvailability, and NumberOfFrames from the record when the
// header lacks it.
func InstanceDataset(r *InstanceRecord) dicomcodec.Dataset {
	d := make(dicomcodec.Dataset, len(r.Metadata)+2)
	for t, a := range r.Metadata {
		d[t] = a
	}
	d[TagInstanceAvailability] = dicomcodec.Attribute{VR: "CS", Value: []any{"ONLINE"}}
	if _, ok := d[dicomcodec.TagSOPInstanceUID]; !ok {
		d[dicomcodec.TagSOPInstanceUID] = dicomcodec.Attribute{VR: "UI", Value: []any{r.SOPInstanceUID}}
	}
	if _, ok := d[dicomcodec.TagSOPClassUID]; !ok && r.SOPClassUID != "" {
		d[dicomcodec.TagSOPClassUID] = dicomcodec.Attribute{VR: "UI", Value: []any{r.SOPClassUID}}
	}
	return d
}

func sortedKeys(m map[string]int) []any {
	keys := make([]string, 0, len(m))
	for k, n := range m {
		if n > 0 {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	out := make([]any, len(keys))
	for i, k := range keys {
		out[i] = k
	}
	return out
}

// StudyDateKey is the sort key of a study's date: YYYYMMDD as a number, 0
// when absent or malformed. Studies are listed newest first.
func StudyDateKey(attrs dicomcodec.Dataset) int64 {
	s := attrs.String(dicomcodec.TagStudyDate)
	if len(s) != 8 {
		return 0
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 {
		return 0
	}
	return n
}

// CompareStudies is the one order of study results: StudyDate descending,
// then Study Instance UID descending (byte order), which a Redis sorted set
// scored by date yields natively with ZREVRANGEBYSCORE.
func CompareStudies(a, b *StudySummary) int {
	if c := cmp.Compare(StudyDateKey(b.Attrs), StudyDateKey(a.Attrs)); c != 0 {
		return c
	}
	return strings.Compare(b.StudyInstanceUID, a.StudyInstanceUID)
}

// CompareSeries orders a study's series: SeriesNumber (absent last), then
// Series Instance UID.
func CompareSeries(a, b *SeriesSummary) int {
	if c := compareNumber(a.Attrs, b.Attrs, dicomcodec.TagSeriesNumber); c != 0 {
		return c
	}
	return strings.Compare(a.SeriesInstanceUID, b.SeriesInstanceUID)
}

// CompareInstances is the order of ListInstances: series (SeriesNumber, then
// Series Instance UID), then InstanceNumber (absent last), then SOP Instance
// UID.
func CompareInstances(a, b *InstanceRecord) int {
	return CompareMetadataEntries(orderOf(a), orderOf(b))
}

func compareNumber(a, b dicomcodec.Dataset, tag string) int {
	x, okx := numberOf(a, tag)
	y, oky := numberOf(b, tag)
	return compareOptional(x, okx, y, oky)
}

// numberOf returns the first value of tag as a number, accepting int64,
// float64 (JSON) and numeric strings.
func numberOf(d dicomcodec.Dataset, tag string) (float64, bool) {
	a, ok := d[tag]
	if !ok || len(a.Value) == 0 {
		return 0, false
	}
	return toFloat(a.Value[0])
}

func toFloat(v any) (float64, bool) {
	switch n := v.(type) {
	case int64:
		return float64(n), true
	case int:
		return float64(n), true
	case float64:
		return n, true
	case string:
		f, err := strconv.ParseFloat(strings.TrimSpace(n), 64)
		return f, err == nil
	}
	return 0, false
}
