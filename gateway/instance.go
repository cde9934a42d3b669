package gateway

import (
	"context"
	"time"

	"github.com/dicom-gateway/gateway/dicomcodec"
)

// InstanceRecord is what the index keeps about one stored instance: its
// identity, where and how its bytes are stored, and its header as DICOM JSON
// (pixel data and other large binary values as BulkDataURIs), from which QIDO
// results and WADO metadata are built without opening the blob.
type InstanceRecord struct {
	StudyInstanceUID  string                      `json:"study_uid"`
	SeriesInstanceUID string                      `json:"series_uid"`
	SOPInstanceUID    string                      `json:"sop_instance_uid"`
	SOPClassUID       string                      `json:"sop_class_uid"`
	TransferSyntaxUID string                      `json:"transfer_syntax_uid"`
	Size              int64                       `json:"size"`
	SHA256            string                      `json:"sha256"` // hex of the stored bytes
	NumberOfFrames    int                         `json:"number_of_frames"`
	PixelData         *dicomcodec.PixelDataLayout `json:"pixel_data,omitempty"`
	StoredAt          time.Time                   `json:"stored_at"`
	Metadata          dicomcodec.Dataset          `json:"metadata"`
}

// Key is the blob storage key of the record's bytes.
func (r *InstanceRecord) Key() string {
	return InstanceKey(r.StudyInstanceUID, r.SeriesInstanceUID, r.SOPInstanceUID)
}

// Index keeps an InstanceRecord for every stored instance and answers QIDO-RS
// searches over them, with study- and series-level attributes (counts,
// ModalitiesInStudy, SOPClassesInStudy) computed from the instances present.
// Implementations: storage/bolt (embedded default) and storage/redis.
//
// PutInstance stores rec if no instance with its SOP Instance UID exists and
// returns (nil, true). If one exists it changes nothing and returns the
// existing record and false, so two concurrent uploads of one instance end
// with one record. ReplaceInstance overwrites an existing record (the
// "replace" duplicate policy) and makes rec its study's latest instance:
// the study's attributes become rec's, even when the record was already
// stored as it is (a flagged study restated after a delete,
// identity_restate.go). GetInstance and DeleteInstance return
// ErrNotFound for an unknown UID. ListInstances returns the instances of a
// study (seriesUID "") or of one series, ordered by series then instance
// number then SOP Instance UID; ErrNotFound when there are none. Unreachable
// backends return ErrUnavailable. All methods are safe for concurrent use.
//
// A study is found by an exact PatientID search for each of its
// StudyPatientIDs (the latest instance's and, when it is flagged for an
// identity conflict, every other identity the flag names).
//
// Whenever an index stores a record it also stores the record's prepared
// metadata (PrepareMetadata), which MetadataReader lists and reads, and it
// removes both with the record.
//
// Lock takes a lease on one SOP Instance UID, held by at most one caller
// across every replica sharing the backend until unlock is called; it waits
// (polling, bounded by ctx) while another holds it. The lease is renewed in
// the background while held, so ttl bounds only how long the lease of a
// holder that died (a killed replica) blocks others; unlock stops the
// renewal. Ingest holds it from the duplicate check until the index entry is
// written, so two concurrent uploads of one instance never overwrite each
// other's blob.
type Index interface {
	Lock(ctx context.Context, sopInstanceUID string, ttl time.Duration) (unlock func(), err error)
	PutInstance(ctx context.Context, rec *InstanceRecord) (existing *InstanceRecord, created bool, err error)
	ReplaceInstance(ctx context.Context, rec *InstanceRecord) error
	GetInstance(ctx context.Context, sopInstanceUID string) (*InstanceRecord, error)
	DeleteInstance(ctx context.Context, sopInstanceUID string) error
	ListInstances(ctx context.Context, studyUID, seriesUID string) ([]*InstanceRecord, error)
	Search(ctx context.Context, q *Query) (*SearchResult, error)
	MetadataReader
}
