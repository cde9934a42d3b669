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
// rendered once when the index stores the instance, so that WADO-RS series
// and study metadata copy bytes instead of decoding and encoding every
// attribute of every instance on each request. An index keeps, per
// instance, two values next to its record:
//
//   - the prepared JSON, in which every BulkDataURI that is relative to the
//     instance's URL starts with MetadataURLMarker (a NUL byte, which the
//     encoder escapes everywhere else as \u0000) for the server to replace
//     with the public URL it answers under, which only a request knows;
//   - a small order entry (MetadataEntry.EncodeOrder): SeriesNumber and
//     InstanceNumber, so entries sort as CompareInstances sorts records, a
//     digest of the prepared JSON, from which an ETag is made without
//     reading the JSON itself, and the Patient ID, for the audit event.

// metadataOrderVersion starts an encoded order entry.
const metadataOrderVersion = 0x01

// MetadataEntry names one instance's prepared metadata and where it sorts.
type MetadataEntry struct {
	StudyInstanceUID  string
	SeriesInstanceUID string
	SOPInstanceUID    string
	// PatientID is the instance's Patient ID, for the audit event of a
	// metadata read.
	PatientID string
	// Digest is the first 16 bytes of the SHA-256 of the prepared JSON.
	Digest [16]byte

	seriesNumber, instanceNumber       float64
	hasSeriesNumber, hasInstanceNumber bool
}

// PrepareMetadata renders rec's metadata as prepared DICOM JSON and returns
// it with its encoded order entry (MetadataEntry.EncodeOrder). An index
// stores both whenever it stores rec.
func PrepareMetadata(rec *InstanceRecord) (order, prepared []byte) {
	prepared = dicomcodec.AppendDatasetJSON(nil, rec.Metadata, dicomcodec.PreparedPrefix)
	e := NewMetadataEntry(rec, prepared)
	return e.EncodeOrder(), prepared
}

// NewMetadataEntry returns the entry of rec, whose prepared JSON is
// prepared.
func NewMetadataEntry(rec *InstanceRecord, prepared []byte) MetadataEntry {
	e := orderOf(rec)
	sum := sha256.Sum256(prepared)
	copy(e.Digest[:], sum[:])
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
// InstanceNumber as float64 bits, the digest, then the Patient ID.
func (e MetadataEntry) EncodeOrder() []byte {
	b := make([]byte, 0, orderFixedLen+len(e.PatientID))
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
	return append(b, e.PatientID...)
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
	e.PatientID = string(order[orderFixedLen:])
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

// MetadataReader is what an Index offers for WADO-RS metadata: prepared
// JSON listed and read without decoding records.
type MetadataReader interface {
	// MetadataEntries returns the entries of a study's instances (or of one
	// series when seriesUID is not empty), sorted by
	// CompareMetadataEntries; ErrNotFound when there are none. Entries are
	// small (UIDs, two numbers, a digest), so a study of any size lists
	// without holding its metadata.
	MetadataEntries(ctx context.Context, studyUID, seriesUID string) ([]MetadataEntry, error)
	// ReadMetadata calls fn with the prepared JSON of each entry, in the
	// order given, fetching a bounded batch at a time. The bytes are valid
	// only during the call. An instance deleted since it was listed is
	// skipped; an error from fn stops the read and is returned.
	ReadMetadata(ctx context.Context, entries []MetadataEntry, fn func(MetadataEntry, []byte) error) error
}

// MetadataBatch is how many instances' prepared metadata an index reads at
// a time in ReadMetadata: a few hundred KiB of JSON for typical images
// (2–3 KiB each), so memory stays flat whatever the size of the study.
const MetadataBatch = 256
