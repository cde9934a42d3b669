package gateway

import (
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"math"
	"strings"

	"github.com/dicom-gateway/gateway/dicomcodec"
)

// Prepared metadata is each instance's DICOM JSON object (PS3.18 F.2),
// rendered once from its header into its series' metadata object in the
// blob store (MetadataStore), so that WADO-RS series and study metadata copy
// bytes instead of decoding and encoding every attribute of every instance
// on each request. It is not kept in the index: it is the whole header, ten
// times what QIDO needs, and index memory is what limits how many instances
// one deployment holds. In it every BulkDataURI that is relative to the
// instance's URL starts with MetadataURLMarker (a NUL byte, which the
// encoder escapes everywhere else as \u0000) for the server to replace with
// the public URL it answers under, which only a request knows.
//
// An index keeps, per instance, a small order entry
// (MetadataEntry.EncodeOrder, built by MetadataOrder): SeriesNumber and
// InstanceNumber, so entries sort as CompareInstances sorts records, a
// digest that changes whenever the instance's bytes change, from which ETags
// and the validity of a series' cached metadata are derived without reading
// any JSON, and the Patient ID, for the audit event.

// metadataOrderVersion starts an encoded order entry.
const metadataOrderVersion = 0x01

// MetadataEntry names one instance's prepared metadata and where it sorts.
type MetadataEntry struct {
	StudyInstanceUID  string
	SeriesInstanceUID string
	SOPInstanceUID    string
	// PatientID is the instance's Patient ID, and NationalID its NHS number
	// when it carries one under another ID, for the audit event of a
	// metadata read.
	PatientID, NationalID string
	// Digest identifies the instance's content (NewMetadataEntry): equal
	// digests, equal prepared JSON.
	Digest [16]byte

	seriesNumber, instanceNumber       float64
	hasSeriesNumber, hasInstanceNumber bool
}

// PrepareMetadata renders rec's metadata as prepared DICOM JSON and returns
// it with its encoded order entry (MetadataOrder). rec must carry the whole
// header: the record as ingest and DescribeBlob build it, not the lean copy
// an index keeps (IndexRecord).
func PrepareMetadata(rec *InstanceRecord) (order, prepared []byte) {
	return MetadataOrder(rec), dicomcodec.AppendDatasetJSON(nil, rec.Metadata, dicomcodec.PreparedPrefix)
}

// MetadataOrder is the order entry an index stores beside rec
// (MetadataEntry.EncodeOrder of NewMetadataEntry(rec)).
func MetadataOrder(rec *InstanceRecord) []byte { return NewMetadataEntry(rec).EncodeOrder() }

// preparedFormat names the form PrepareMetadata renders. It is part of
// every digest, so that changing the form changes every ETag and
// invalidates every cached series object.
const preparedFormat = "prepared-metadata/1"

// NewMetadataEntry returns the entry of rec. Its digest covers the SHA-256
// of the instance's stored bytes, from which the prepared JSON is rendered,
// so it is the same for the lean record the index keeps as for the whole
// one.
func NewMetadataEntry(rec *InstanceRecord) MetadataEntry {
	e := orderOf(rec)
	e.NationalID = nationalIDOf(rec.Metadata)
	h := sha256.New()
	h.Write([]byte(preparedFormat))
	h.Write([]byte{0})
	h.Write([]byte(rec.SOPInstanceUID))
	h.Write([]byte{0})
	h.Write([]byte(rec.SHA256))
	copy(e.Digest[:], h.Sum(nil))
	return e
}

// orderOf is rec's entry without a digest: what CompareInstances compares.
func orderOf(rec *InstanceRecord) MetadataEntry {
	e := MetadataEntry{
		StudyInstanceUID:  rec.StudyInstanceUID,
		SeriesInstanceUID: rec.SeriesInstanceUID,
		SOPInstanceUID:    rec.SOPInstanceUID,
		PatientID:         rec.Metadata.String(dicomcodec.TagPatientID),
	}
	e.seriesNumber, e.hasSeriesNumber = numberOf(rec.Metadata, dicomcodec.TagSeriesNumber)
	e.instanceNumber, e.hasInstanceNumber = numberOf(rec.Metadata, dicomcodec.TagInstanceNumber)
	return e
}

// EncodeOrder is the stored form of e without its UIDs (the index keys
// hold those): a version byte, a flags byte, SeriesNumber and
// InstanceNumber as float64 bits, the digest, then the Patient ID and,
// after a NUL (which a Patient ID cannot hold), the NHS number when there
// is one. Entries written before the NHS number was kept end with the
// Patient ID and read as before.
func (e MetadataEntry) EncodeOrder() []byte {
	b := make([]byte, 0, orderFixedLen+len(e.PatientID)+1+len(e.NationalID))
	var flags byte
	if e.hasSeriesNumber {
		flags |= 1
	}
	if e.hasInstanceNumber {
		flags |= 2
	}
	b = append(b, metadataOrderVersion, flags)
	b = binary.LittleEndian.AppendUint64(b, math.Float64bits(e.seriesNumber))
	b = binary.LittleEndian.AppendUint64(b, math.Float64bits(e.instanceNumber))
	b = append(b, e.Digest[:]...)
	b = append(b, e.PatientID...)
	if e.NationalID != "" && e.NationalID != e.PatientID {
		b = append(append(b, 0), e.NationalID...)
	}
	return b
}

// orderFixedLen is the length of an encoded order entry before the Patient
// ID.
const orderFixedLen = 34

// DecodeMetadataEntry reads an order entry written by EncodeOrder for the
// instance the UIDs name.
func DecodeMetadataEntry(study, series, sop string, order []byte) (MetadataEntry, error) {
	if len(order) < orderFixedLen || order[0] != metadataOrderVersion {
		return MetadataEntry{}, fmt.Errorf("metadata order entry of instance %s is malformed (%d bytes): %w", sop, len(order), ErrUnavailable)
	}
	e := MetadataEntry{StudyInstanceUID: study, SeriesInstanceUID: series, SOPInstanceUID: sop}
	e.hasSeriesNumber, e.hasInstanceNumber = order[1]&1 != 0, order[1]&2 != 0
	e.seriesNumber = math.Float64frombits(binary.LittleEndian.Uint64(order[2:]))
	e.instanceNumber = math.Float64frombits(binary.LittleEndian.Uint64(order[10:]))
	copy(e.Digest[:], order[18:orderFixedLen])
	pid, nhs, _ := strings.Cut(string(order[orderFixedLen:]), "\x00")
	e.PatientID, e.NationalID = pid, nhs
	return e, nil
}

// CompareMetadataEntries orders entries as CompareInstances orders their
// records.
func CompareMetadataEntries(a, b MetadataEntry) int {
	if a.SeriesInstanceUID != b.SeriesInstanceUID {
		if c := compareOptional(a.seriesNumber, a.hasSeriesNumber, b.seriesNumber, b.hasSeriesNumber); c != 0 {
			return c
		}
		return strings.Compare(a.SeriesInstanceUID, b.SeriesInstanceUID)
	}
	if c := compareOptional(a.instanceNumber, a.hasInstanceNumber, b.instanceNumber, b.hasInstanceNumber); c != 0 {
		return c
	}
	return strings.Compare(a.SOPInstanceUID, b.SOPInstanceUID)
}

// compareOptional orders present numbers before absent ones.
func compareOptional(x float64, okx bool, y float64, oky bool) int {
	switch {
	case okx && oky:
		return cmp.Compare(x, y)
	case okx:
		return -1
	case oky:
		return 1
	}
	return 0
}

// AppendPreparedMetadata appends prepared metadata with every
// MetadataURLMarker replaced by instanceURL + "/" (JSON-escaped: the URL may
// carry a client's X-Forwarded-Prefix).
func AppendPreparedMetadata(b, prepared []byte, instanceURL string) []byte {
	if bytes.IndexByte(prepared, dicomcodec.MetadataURLMarker) < 0 {
		return append(b, prepared...)
	}
	escaped := string(dicomcodec.AppendEscaped(nil, instanceURL+"/"))
	for {
		i := bytes.IndexByte(prepared, dicomcodec.MetadataURLMarker)
		if i < 0 {
			return append(b, prepared...)
		}
		b = append(b, prepared[:i]...)
		b = append(b, escaped...)
		prepared = prepared[i+1:]
	}
}

// MetadataReader is what an Index offers for WADO-RS metadata: the
// instances of a study or series listed, in order, without decoding records.
// The prepared JSON itself is read from a MetadataStore.
type MetadataReader interface {
	// MetadataEntries returns the entries of a study's instances (or of one
	// series when seriesUID is not empty), sorted by
	// CompareMetadataEntries; ErrNotFound when there are none. Entries are
	// small (UIDs, two numbers, a digest), so a study of any size lists
	// without holding its metadata.
	MetadataEntries(ctx context.Context, studyUID, seriesUID string) ([]MetadataEntry, error)
}
